"""install.sh's live reports: the small HTTP endpoint `build-template` serves while Packer waits.

Packer cannot see the live installer (no guest agent, no SSH), so without help a failing
install.sh is noticed only when ``ssh_timeout`` runs out. install.sh therefore POSTs one report
per step (and one on failure, with the last 20 lines of its log) to
``http://<Packer's HTTP address>:<build.status_port>/install/<token>``, where the token is the
start of the sha256 of the build's SSH public key, which install.sh fetched first (lib.sh.j2,
install.sh.j2). A report is plain text::

    nixgold-install-report 1
    state: running | failed | finished
    step: 4
    total: 12
    name: nixos-install (this takes a while)
    code: 0

    <log lines, for a failure>

    server = InstallStatusServer("0.0.0.0", 8799, report_token(key.public_key))
    server.start()                      # PreflightError naming build.status_port if it is taken
    for report in server.take():        # new reports, oldest first (thread-safe)
        ...
    server.stop()

Reports are untrusted input from the network: size-limited, parsed strictly, accepted only under
this build's token, and (like everything shown) redacted by the caller.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import logging
import threading
import time
from dataclasses import dataclass

from nixgold.errors import PreflightError

log = logging.getLogger("nixgold.install_status")

MAGIC = "nixgold-install-report 1"
MAX_BODY = 64 * 1024
STATES = ("running", "failed", "finished")
PATH_PREFIX = "/install/"


@dataclass(frozen=True)
class InstallReport:
    state: str
    step: int
    total: int
    name: str
    code: int
    log_tail: tuple[str, ...]
    received: float  # monotonic clock

    @property
    def position(self) -> str:
        return f"{self.step}/{self.total}"


def report_token(public_key: str) -> str:
    """The URL token install.sh derives from the build key it fetched: the first 16 hex digits of
    the sha256 of the key line without its newline (``printf '%s' "$(<file)" | sha256sum``)."""
    return hashlib.sha256(public_key.strip().encode()).hexdigest()[:16]


def parse_report(body: str, received: float = 0.0) -> InstallReport:
    """A report's text -> InstallReport; ValueError saying what is wrong."""
    head, _, tail = body.partition("\n\n")
    lines = head.rstrip("\n").split("\n")
    if lines[0] != MAGIC:
        raise ValueError(f"not a nixgold install report (first line {lines[0][:40]!r})")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(": ")
        if not sep or key not in ("state", "step", "total", "name", "code") or key in fields:
            raise ValueError(f"bad report header line {line[:60]!r}")
        fields[key] = value
    missing = {"state", "step", "total", "name", "code"} - set(fields)
    if missing:
        raise ValueError(f"report lacks {', '.join(sorted(missing))}")
    if fields["state"] not in STATES:
        raise ValueError(f"unknown state {fields['state'][:20]!r}")
    try:
        step, total, code = int(fields["step"]), int(fields["total"]), int(fields["code"])
    except ValueError:
        raise ValueError("step, total and code must be whole numbers") from None
    if not (0 <= step <= total <= 1000 and 0 <= code <= 255):
        raise ValueError(f"impossible step {step}/{total} or code {code}")
    tail_lines = tuple(line for line in tail.rstrip("\n").split("\n") if line)[-20:] if tail else ()
    return InstallReport(fields["state"], step, total, fields["name"][:200], code, tail_lines, received)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("install status endpoint: " + format, *args)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner
        if self.path != PATH_PREFIX + owner.token:
            self.send_error(404)
            return
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self.send_error(413 if length > MAX_BODY else 411)
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        try:
            report = parse_report(body, owner.clock())
        except ValueError as exc:
            log.warning("ignored an install report from %s: %s", self.client_address[0], exc)
            self.send_error(400)
            return
        owner.add(report)
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_error(405)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "InstallStatusServer"


class InstallStatusServer:
    def __init__(self, bind: str, port: int, token: str, *, clock=time.monotonic):
        self.bind = bind
        self.port = port
        self.token = token
        self.clock = clock
        self._lock = threading.Lock()
        self._new: list[InstallReport] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            server = _Server((self.bind, self.port), _Handler)
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise PreflightError(
                f"build.status_port: cannot listen on {self.bind}:{self.port} for install.sh's reports ({why}); "
                f"set build.status_port to a free port, or 0 to turn live install reports off") from None
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="install-status", daemon=True)
        self._thread.start()

    def add(self, report: InstallReport) -> None:
        with self._lock:
            self._new.append(report)

    def take(self) -> list[InstallReport]:
        """Reports received since the last call, oldest first."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "InstallStatusServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
