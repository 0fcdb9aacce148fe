"""A CLI process run in the background by the end-to-end tests: stderr collected line by line
while it runs (to wait for a progress line, then signal it), stdout read at the end."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable


class BackgroundRun:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        """Until a stderr line matches ``pattern``; fails with the stderr so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen; stderr so far:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 300) -> int:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def end_after(self, pattern: str, *, timeout: float, then: Callable[[], None] | None = None,
                  finish_timeout: float = 300) -> tuple[int, float]:
        """Wait for a stderr line matching ``pattern``, do ``then`` (e.g. send a signal), wait for the
        process to end: (exit code, seconds from the match to the end). The process is killed if
        anything fails on the way."""
        try:
            self.wait_for(pattern, timeout=timeout)
            if then is not None:
                then()
            t0 = time.monotonic()
            rc = self.finish(timeout=finish_timeout)
            return rc, time.monotonic() - t0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    @property
    def err(self) -> str:
        return "".join(self.lines)
