"""The one signal mechanism: SIGINT/SIGTERM only set a cancellation token; loops and waits poll it.

    cancel = Cancel()
    with handle_signals(cancel):          # main thread: SIGINT/SIGTERM -> cancel.signal(name)
        try:
            while work_left():
                if cancel.is_set:          # or cancel.check(), or cancel.sleep(1.0)
                    break
                ...
        finally:
            cleanup()                      # always runs; a signal during it counts (and may
                                           # end a long wait in it: verify's clone-task waits)

A handler does nothing but record the signal: no printing, no exceptions, no locks (a handler
runs between two bytecodes of whatever the main thread was doing). What a signal means - forward
it to Packer, warn on the second, kill on the third; tear the clones down - is decided by the
code that polls :attr:`Cancel.count` and :attr:`Cancel.is_set`. A worker thread can cancel the
others too (:meth:`Cancel.abort`): then :attr:`Cancel.interrupted_by` stays None.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Cancelled(Exception):
    """Raised by :meth:`Cancel.check` / :meth:`Cancel.sleep` once the token is set."""


class Cancel:
    """A thread-safe cancellation token that signals (and failing workers) set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._signals: list[str] = []  # appended by the handler: list.append is atomic
        self._reason: str | None = None

    # -- setting ---------------------------------------------------------------------------------
    def signal(self, name: str) -> None:
        """A signal arrived (called by the handler: record only)."""
        self._signals.append(name)
        self._event.set()

    def abort(self, reason: str) -> None:
        """Stop the work for another reason than a signal (e.g. a worker failed)."""
        if self._reason is None:
            self._reason = reason
        self._event.set()

    # -- polling ---------------------------------------------------------------------------------
    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def count(self) -> int:
        """How many signals arrived (escalation: 1st stop politely, 2nd warn, 3rd kill)."""
        return len(self._signals)

    @property
    def interrupted_by(self) -> str | None:
        """The first signal's name (``SIGINT``/``SIGTERM``), None when no signal came."""
        return self._signals[0] if self._signals else None

    @property
    def reason(self) -> str | None:
        return self.interrupted_by or self._reason

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless cancelled first (then Cancelled)."""
        if self._event.wait(max(0.0, seconds)):
            raise Cancelled(self.reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when cancelled."""
        return self._event.wait(max(0.0, seconds))


@contextlib.contextmanager
def handle_signals(cancel: Cancel, signals: tuple[signal.Signals, ...] = HANDLED) -> Iterator[Cancel]:
    """While inside, the signals only set ``cancel``; the previous handlers come back after.

    Outside the main thread Python cannot install handlers: then the caller's own token (set by
    whoever runs it) is all there is, and this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum: int, frame: object) -> None:
        cancel.signal(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield cancel
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
