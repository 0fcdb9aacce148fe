"""Worker tasks: a thread per task, PVE-style UPID, status and log.

``status`` is ``running`` until the worker returns, then ``stopped`` with
``exitstatus`` ``OK``, ``WARNINGS: <n>`` or the error text; the log ends with
``TASK OK`` / ``TASK WARNINGS: <n>`` / ``TASK ERROR: <msg>`` like
``/var/log/pve/tasks/<X>/<UPID>``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ApiError, TaskError
from .upid import Upid

log = logging.getLogger(__name__)


def _thread_start_ticks(tid: int) -> int:
    """Start time (clock ticks since boot) of a thread, like PVE's pstart."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return int(time.monotonic() * 100)


class TaskCancelled(Exception):
    pass


@dataclass
class Task:
    upid: Upid
    lines: list[str] = field(default_factory=list)
    status: str = "running"
    exitstatus: str | None = None
    endtime: int | None = None
    warnings: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    logfile: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def text(self) -> str:
        return str(self.upid)

    def log(self, line: str) -> None:
        for part in str(line).rstrip("\n").split("\n"):
            with self._lock:
                self.lines.append(part)
                if self.logfile is not None:
                    with self.logfile.open("a", encoding="utf-8") as fh:
                        fh.write(part + "\n")

    def warn(self, line: str) -> None:
        self.warnings += 1
        self.log(f"WARN: {line}")

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise TaskCancelled()

    def sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise TaskCancelled()

    def status_dict(self) -> dict:
        u = self.upid
        user, _, tokenid = u.user.partition("!")
        out: dict = {
            "upid": self.text,
            "node": u.node,
            "pid": u.pid,
            "pstart": u.pstart,
            "starttime": u.starttime,
            "type": u.type,
            "id": u.id,
            "user": user,
            "status": self.status,
        }
        if tokenid:
            out["tokenid"] = tokenid
        if self.status == "stopped":
            out["exitstatus"] = self.exitstatus
        return out


Worker = Callable[[Task], None]
# Faults fired by the API request being handled (set by the server around the handler):
# ``task_error`` ends the task it spawns with the fault's message, ``slow_task`` delays it.
REQUEST_FAULTS: ContextVar[object | None] = ContextVar("request_faults", default=None)


class TaskManager:
    def __init__(self, node: str, log_dir: Path | None = None) -> None:
        self.node = node
        self.log_dir = log_dir
        self._tasks: dict[str, Task] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()

    def spawn(self, wtype: str, wid: str, user: str, worker: Worker, *, fail_with: str | None = None,
              delay: float = 0.0, on_done: Callable[[Task], None] | None = None,
              on_injected_failure: Callable[[], None] | None = None, sleeps_itself: bool = False) -> Task:
        """Start ``worker(task)`` in a thread and return the task once its UPID exists.

        A ``slow_task`` fault delays the worker's start, unless ``sleeps_itself``: the worker sleeps
        where the real task is slow (clone: under ``lock: clone``; start: holding the config lock).
        A ``slow_start`` fault always delays the worker's start (before its locks)."""
        fired = REQUEST_FAULTS.get()
        if fired is not None:
            err = fired.get("task_error")  # type: ignore[attr-defined]
            if err is not None and fail_with is None:
                fail_with = err.message or "simulated task failure"
            slow = fired.get("slow_task")  # type: ignore[attr-defined]
            if slow is not None and not sleeps_itself:
                delay = max(delay, float(slow.seconds))
            early = fired.get("slow_start")  # type: ignore[attr-defined]
            if early is not None:
                delay = max(delay, float(early.seconds))
        ready = threading.Event()
        go = threading.Event()
        holder: dict = {}

        def run() -> None:
            holder["tid"] = threading.get_native_id()
            ready.set()
            go.wait()
            task: Task = holder["task"]
            try:
                if delay:
                    task.sleep(delay)
                if fail_with is not None:
                    if on_injected_failure is not None:
                        on_injected_failure()
                    raise TaskError(fail_with)
                worker(task)
            except TaskCancelled:
                self._finish(task, "interrupted by signal")
            except (TaskError, ApiError) as exc:
                msg = exc.message if isinstance(exc, ApiError) else str(exc)
                self._finish(task, msg.strip() or "unknown error")
            except Exception as exc:  # a bug in the simulator: still end the task like PVE would
                log.exception("task %s crashed", task.text)
                self._finish(task, str(exc).strip() or exc.__class__.__name__)
            else:
                self._finish(task, None)
            finally:
                if on_done is not None:
                    try:
                        on_done(task)
                    except Exception:  # pragma: no cover
                        log.exception("task %s on_done hook failed", task.text)

        thread = threading.Thread(target=run, name=f"task-{wtype}-{wid}", daemon=True)
        thread.start()
        ready.wait()
        tid = holder["tid"]
        upid = Upid(self.node, tid, _thread_start_ticks(tid), int(time.time()), wtype, str(wid), user)
        task = Task(upid)
        if self.log_dir is not None:
            sub = self.log_dir / f"{upid.starttime:X}"[-1]
            sub.mkdir(parents=True, exist_ok=True)
            task.logfile = sub / task.text
            task.logfile.touch()
        holder["task"] = task
        with self._lock:
            self._tasks[task.text] = task
            self._order.append(task.text)
        log.info("task started %s", task.text)
        go.set()
        return task

    def _finish(self, task: Task, error: str | None) -> None:
        if error is not None:
            task.log(f"TASK ERROR: {error}")
            task.exitstatus = error
        elif task.warnings:
            task.log(f"TASK WARNINGS: {task.warnings}")
            task.exitstatus = f"WARNINGS: {task.warnings}"
        else:
            task.log("TASK OK")
            task.exitstatus = "OK"
        task.endtime = int(time.time())
        task.status = "stopped"
        task.done.set()
        log.info("task finished %s: %s", task.text, task.exitstatus)

    def get(self, upid: str) -> Task | None:
        with self._lock:
            return self._tasks.get(upid)

    def all(self) -> list[Task]:
        with self._lock:
            return [self._tasks[u] for u in self._order]

    def running(self) -> list[Task]:
        return [t for t in self.all() if t.status == "running"]

    def cancel_all(self, timeout: float = 10.0) -> None:
        tasks = self.running()
        for t in tasks:
            t.cancel.set()
        deadline = time.monotonic() + timeout
        for t in tasks:
            t.done.wait(max(0.0, deadline - time.monotonic()))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
