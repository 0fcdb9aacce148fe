"""A stand-in for the check child the verifier starts (nixgold.verify.checks.CheckChild) in tests that
replace the check suite with a function of the ``run_checks`` shape: it runs that function on ``wait``."""
from __future__ import annotations

from typing import Any, Callable


class DeferredRun:
    """``start_checks(planned, extra_dirs, scope=...)`` -> this; ``go(ctx, facts)``; ``wait()`` runs the
    function with the final context, as the child would run the suite."""

    def __init__(self, run_checks: Callable[..., Any], planned: Any, extra_dirs: Any, scope: str):
        self.run_checks, self.planned, self.extra_dirs, self.scope = run_checks, planned, extra_dirs, scope
        self.ctx: Any = None
        self.facts: Any = None
        self.stopped = False

    def go(self, ctx: Any, facts: Any = None) -> None:
        assert [c.name for c in ctx.clones] == [c.name for c in self.planned.clones]
        self.ctx, self.facts = ctx, facts

    def wait(self, *, timeout: float = 1800.0, cancelled: Callable[[], bool] = lambda: False) -> Any:
        assert self.ctx is not None, "wait() before go()"
        return self.run_checks(self.ctx, self.extra_dirs, scope=self.scope, facts=self.facts)

    def stop(self) -> None:
        self.stopped = True


def start_checks_with(run_checks: Callable[..., Any]) -> Callable[..., DeferredRun]:
    """A ``start_checks`` whose children run ``run_checks``."""
    def start_checks(planned: Any, extra_dirs: Any = (), *, scope: str = "all") -> DeferredRun:
        return DeferredRun(run_checks, planned, extra_dirs, scope)
    return start_checks
