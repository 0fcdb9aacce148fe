"""Per-VM config locks like ``/var/lock/qemu-server/lock-<vmid>.conf`` (flock).

PVE takes the source config lock *shared* for clones of stopped VMs (so
parallel clones of one template work) and exclusive for everything else; a
timeout dies ``can't lock file '/var/lock/qemu-server/lock-<vmid>.conf' - got
timeout``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from typing import Iterator

from .errors import die


def lock_timeout_message(vmid: int | str) -> str:
    return f"can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout"


class RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0

    def acquire(self, shared: bool, timeout: float) -> bool:
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._writer == me:  # re-entrant for the owning thread
                self._depth += 1
                return True
            while True:
                if shared and self._writer is None:
                    self._readers += 1
                    return True
                if not shared and self._writer is None and self._readers == 0:
                    self._writer, self._depth = me, 1
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def release(self, shared: bool) -> None:
        with self._cond:
            if shared:
                self._readers -= 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
            self._cond.notify_all()


class ConfigLocks:
    def __init__(self) -> None:
        self._locks: dict[int, RWLock] = defaultdict(RWLock)
        self._guard = threading.Lock()

    def _get(self, vmid: int) -> RWLock:
        with self._guard:
            return self._locks[vmid]

    @contextlib.contextmanager
    def hold(self, vmid: int, timeout: float = 10.0, shared: bool = False) -> Iterator[None]:
        lock = self._get(vmid)
        if not lock.acquire(shared, timeout):
            raise die(lock_timeout_message(vmid))
        try:
            yield
        finally:
            lock.release(shared)
