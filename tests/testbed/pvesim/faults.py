"""Fault injection for tests: make the N-th matching call misbehave.

A fault matches ``method`` (``*`` = any) and ``path`` (a glob over the path
below ``/api2/json``, e.g. ``/nodes/*/qemu/*/clone``; a leading ``^`` makes it
a regex).  It fires on matching call number ``nth`` (1-based) and the
``times - 1`` calls after it (``times=0``: forever).  Actions:

``fail``                answer ``status`` + ``message`` (and ``errors`` for 400) at once
``delay``               sleep ``seconds`` before handling the call normally
``delay_answer``        handle the call normally, then sleep ``seconds`` before answering: the
                        call took effect, the client may time out first (a lost answer)
``task_error``          the call returns its UPID but the task ends ``TASK ERROR: message``
``slow_task``           the task sleeps ``seconds`` in the middle (clone: while ``lock: clone``;
                        start: holding the config lock, before QEMU runs)
``slow_start``          the task sleeps ``seconds`` before it does anything (clone: before its locks
                        and its temporary config; qemu-server clone_vm forks the task first, then
                        locks with a 1 s timeout and repeats its checks: slow storage keeps the new
                        VM unwritten meanwhile)
``clone_lock_timeout``  the clone task ends ``clone failed: can't lock file
                        '/var/lock/qemu-server/lock-<newid>.conf' - got timeout``
``stuck_lock``          the clone task ends OK but the new VM keeps ``lock: clone``
``take_vmid``           another client creates the VM ``newid`` (clone) / ``vmid`` (create)
                        just before the call runs: the nextid race

Guest-agent start-up delay is separate (:meth:`FaultInjector.set_agent_delay`):
agent calls answer ``QEMU guest agent is not running`` for the first
``seconds`` after the VM started (for one vmid, the VMs whose name matches a
glob, or all; 0 lifts it at once).
"""
from __future__ import annotations

import fnmatch
import itertools
import logging
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ACTIONS = {"fail", "delay", "delay_answer", "task_error", "slow_task", "slow_start", "clone_lock_timeout", "stuck_lock", "take_vmid"}


@dataclass
class Fault:
    id: int
    action: str
    path: str
    method: str = "*"
    nth: int = 1
    times: int = 1
    status: int = 500
    message: str | None = None
    errors: dict[str, str] | None = None
    seconds: float = 0.0
    calls: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.path.startswith("^"):
            return re.search(self.path, path) is not None
        return fnmatch.fnmatchcase(path, self.path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FiredFaults:
    faults: list[Fault] = field(default_factory=list)

    def get(self, action: str) -> Fault | None:
        return next((f for f in self.faults if f.action == action), None)


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.faults: list[Fault] = []
        self.agent_delay: dict[str, float] = {}  # vmid or "*" -> seconds

    def add(self, spec: dict[str, Any]) -> Fault:
        action = spec.get("action")
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r} (one of {sorted(ACTIONS)})")
        if not spec.get("path"):
            raise ValueError("fault needs a 'path' pattern")
        known = {"action", "path", "method", "nth", "times", "status", "message", "errors", "seconds"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        with self._lock:
            fault = Fault(id=next(self._ids), **{k: v for k, v in spec.items() if k in known})
            fault.method = fault.method.upper() if fault.method != "*" else "*"
            self.faults.append(fault)
        log.info("fault added: %s", fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self.faults)
            self.faults = [f for f in self.faults if f.id != fault_id]
            return len(self.faults) != before

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.agent_delay.clear()

    def on_call(self, method: str, path: str) -> FiredFaults:
        fired = FiredFaults()
        with self._lock:
            for fault in self.faults:
                if not fault.matches(method, path):
                    continue
                fault.calls += 1
                last = fault.nth + fault.times - 1
                if fault.calls >= fault.nth and (fault.times == 0 or fault.calls <= last):
                    fault.fired += 1
                    fired.faults.append(fault)
                    log.info("fault %s fires on %s %s (call %s)", fault.id, method, path, fault.calls)
        return fired

    def set_agent_delay(self, vmid: int | None, seconds: float, name: str | None = None) -> None:
        key = f"name:{name}" if name else "*" if vmid is None else str(vmid)
        with self._lock:
            self.agent_delay[key] = float(seconds)

    def agent_delay_for(self, vmid: int, name: str = "") -> float:
        with self._lock:
            if str(vmid) in self.agent_delay:
                return self.agent_delay[str(vmid)]
            for key, seconds in self.agent_delay.items():
                if key.startswith("name:") and name and fnmatch.fnmatchcase(name, key[5:]):
                    return seconds
            return self.agent_delay.get("*", 0.0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": [f.to_dict() for f in self.faults], "agent_delay": dict(self.agent_delay)}
