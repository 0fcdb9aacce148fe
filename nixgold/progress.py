"""User-facing progress: one line per stage, with elapsed time.

    [   0.0s] rendering files ...
    [   0.3s] rendering files: done (0.3s)

Output goes to a stream (stderr by default) and every line also to the ``nixgold``
logger, so `--verbose` runs and log files see the same story. Messages pass through an
optional redactor so a secret can never reach the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

log = logging.getLogger("nixgold")


@dataclass
class StageTiming:
    name: str
    seconds: float
    ok: bool


@dataclass
class Progress:
    stream: TextIO | None = None
    redact: Callable[[str], str] = lambda text: text
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    timings: list[StageTiming] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.started:
            self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self, message: str) -> None:
        text = self.redact(f"[{self.elapsed:7.1f}s] {message}")
        log.info(text)
        out = self.stream if self.stream is not None else sys.stderr
        print(text, file=out, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Print ``name ...`` now and ``name: done (Ns)`` or ``name: FAILED (Ns)`` after."""
        start = self.clock()
        self.line(f"{name} ...")
        try:
            yield
        except BaseException:
            seconds = self.clock() - start
            self.timings.append(StageTiming(name, seconds, ok=False))
            self.line(f"{name}: FAILED ({seconds:.1f}s)")
            raise
        seconds = self.clock() - start
        self.timings.append(StageTiming(name, seconds, ok=True))
        self.line(f"{name}: done ({seconds:.1f}s)")
