"""Processes, read from /proc: whether a pid runs, and the processes below a pid and their command
lines (the tests that prove no secret reaches a process's argv look at every one of them: Packer and
its plugin processes)."""

from __future__ import annotations

import time
from pathlib import Path

from nixgold.refresh.lock import pid_alive  # the one "is this pid alive" (a zombie counts as gone)


def pid_gone(pid: int, within: float) -> bool:
    """Whether ``pid`` is gone within ``within`` seconds (polled every 0.1 s)."""
    deadline = time.monotonic() + within
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), read from /proc once."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def argvs(pids: list[int]) -> list[str]:
    """The command lines of ``pids`` (NULs as spaces); processes gone meanwhile are left out."""
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


class ArgvSampler:
    """The command lines of every process below ``pid`` while it runs, polled every ``interval``
    seconds from a thread (a short-lived child can slip between two polls: pair it with a record
    the child writes itself where that matters)."""

    def __init__(self, pid: int, interval: float = 0.05):
        import threading

        self.pid = pid
        self.interval = interval
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.update(argvs(descendants(self.pid)))
            self._stop.wait(self.interval)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen
