"""QEMU guest agent client over the VM's virtio-serial chardev socket.

Every exchange starts with ``guest-sync-delimited`` (a random id; the agent
answers ``0xFF`` + ``{"return": id}``), which also flushes stale replies of
commands that timed out earlier.  Like PVE, availability is checked with
``guest-ping`` and a 3 s timeout.
"""
from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any


class QgaTimeout(Exception):
    pass


class QgaError(Exception):
    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        self.desc = desc
        self.cls = cls
        super().__init__(desc)


NO_REPLY = {"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"}


class QgaClient:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _recv_until(self, sock: socket.socket, buf: bytearray, deadline: float, pred) -> Any:
        while True:
            res = pred(buf)
            if res is not None:
                return res
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QgaTimeout("guest agent timeout")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise QgaTimeout("guest agent timeout") from None
            if not chunk:
                raise QgaTimeout("guest agent connection closed")
            buf.extend(chunk)

    def _sync(self, sock: socket.socket, buf: bytearray, deadline: float) -> None:
        sync_id = random.randint(1, 2**31 - 1)
        sock.sendall(json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")

        def find(b: bytearray) -> bool | None:
            while True:
                idx = b.find(b"\xff")
                if idx < 0:
                    # keep only a tail that may still hold a partial answer
                    del b[:]
                    return None
                nl = b.find(b"\n", idx)
                if nl < 0:
                    del b[:idx]
                    return None
                line = bytes(b[idx + 1 : nl]).strip()
                del b[: nl + 1]
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if reply.get("return") == sync_id:
                    return True

        self._recv_until(sock, buf, deadline, find)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise QgaTimeout(f"cannot connect to guest agent socket: {exc}") from None
            buf = bytearray()
            self._sync(sock, buf, deadline)
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            sock.sendall(json.dumps(msg).encode() + b"\n")
            if command in NO_REPLY:
                return None

            def line(b: bytearray) -> Any:
                while b"\n" in b:
                    raw, _, rest = bytes(b).partition(b"\n")
                    b[:] = rest
                    raw = raw.strip().lstrip(b"\xff")
                    if not raw:
                        continue
                    try:
                        return json.loads(raw)
                    except ValueError:
                        continue
                return None

            reply = self._recv_until(sock, buf, deadline, line)
            if "error" in reply:
                raise QgaError(reply["error"].get("desc", "unknown error"), reply["error"].get("class", ""))
            return reply.get("return")

    def ping(self, timeout: float = 3.0) -> bool:
        try:
            self.execute("guest-ping", timeout=timeout)
            return True
        except (QgaTimeout, QgaError, OSError):
            return False
