"""A small QMP client (one connection per call, like PVE's QMPClient).

QEMU's ``-chardev socket,server=on`` serves one client at a time, so callers
serialize per VM (see ``runtime.QemuInstance.qmp``).
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QmpError(Exception):
    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        self.desc = desc
        self.cls = cls
        super().__init__(desc)


class QmpClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _readline(self, sock: socket.socket, buf: bytearray, deadline: float) -> dict[str, Any]:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"QMP timeout on {self.path}")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            buf.extend(chunk)
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return json.loads(line)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout or self.timeout)
            sock.connect(str(self.path))
            buf = bytearray()
            greeting = self._readline(sock, buf, deadline)
            if "QMP" not in greeting:
                raise QmpError(f"unexpected QMP greeting {greeting!r}")
            sock.sendall(json.dumps({"execute": "qmp_capabilities"}).encode() + b"\n")
            self._wait_return(sock, buf, deadline)
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            sock.sendall(json.dumps(msg).encode() + b"\n")
            return self._wait_return(sock, buf, deadline)

    def _wait_return(self, sock: socket.socket, buf: bytearray, deadline: float) -> Any:
        while True:
            reply = self._readline(sock, buf, deadline)
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(reply["error"].get("desc", "unknown error"), reply["error"].get("class", ""))
            if "return" in reply:
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        return self.execute("human-monitor-command", {"command-line": command_line})
