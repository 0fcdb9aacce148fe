"""An HTTPS file server inside the test bed's namespace: the mirror PVE's ``download-url`` fetches from.

    with HttpsFiles(testbed, directory) as mirror:       # its own CA, a certificate for the bed's host
        testbed.sim_admin.trust_ca(mirror.ca_pem)          # the node trusts that CA (update-ca-certificates)
        url = mirror.url("installer.iso")                  # https://10.99.0.1:<port>/installer.iso

The listening socket is created inside the namespace (``testbed.enter()``), so guests and the
simulator reach it at the bed's host address; the serving thread may run anywhere. Every request
is recorded (``requests``: method, path, status) so a test can prove who fetched what.
"""
from __future__ import annotations

import functools
import http.server
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from .pvesim import tls


class HttpsFiles:
    """Serve ``directory`` over HTTPS at the bed's host address with a fresh CA of its own."""

    def __init__(self, testbed: Any, directory: Path) -> None:
        self.testbed = testbed
        self.directory = Path(directory)
        self.requests: list[tuple[str, str, int]] = []
        self._tls_dir = self.directory.parent / f".{self.directory.name}-tls"
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ca_pem(self) -> str:
        return (self._tls_dir / "ca.pem").read_text()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        return f"https://{self.testbed.host}:{self.port}/{name}"

    def start(self) -> "HttpsFiles":
        files = tls.generate(self._tls_dir, [self.testbed.host])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files.cert), str(files.key))
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                requests.append((self.command, self.path, int(code) if str(code).isdigit() else 0))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass

        handler = functools.partial(Handler, directory=str(self.directory))
        with self.testbed.enter():
            httpd = http.server.ThreadingHTTPServer((self.testbed.host, 0), handler)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="https-files", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HttpsFiles":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
