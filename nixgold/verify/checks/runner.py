"""``run_checks``: the check suite in-process with pytest, one CheckResult per check and target."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from nixgold.verify.checks.model import CheckContext, CheckResult
from nixgold.verify.checks.plugin import PLUGIN_NAME, NixgoldMode

CHECKS_DIR = Path(__file__).resolve().parent


class CheckSuiteError(RuntimeError):
    """pytest itself failed (usage or internal error): a bug, not a failed check."""


@contextlib.contextmanager
def _isolated_environment() -> Iterator[None]:
    """No plugins from the environment (testinfra's own ``host`` fixture, pytest-randomly, xdist...)."""
    old = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = old


def pytest_args(extra_dirs: Sequence[Path] = ()) -> list[str]:
    paths = [CHECKS_DIR]
    for d in extra_dirs:
        resolved = Path(d).resolve()
        if resolved not in paths:
            paths.append(resolved)
    return [
        "-c", os.devnull,  # no pytest configuration from the working directory
        "--rootdir", str(CHECKS_DIR),
        "--import-mode=importlib",
        "-p", "no:cacheprovider", "-p", "no:faulthandler", "-p", "no:stepwise", "-p", "no:pastebin",
        "-q", "--no-header", "--tb=no", "--continue-on-collection-errors", "-W", "ignore::pytest.PytestAssertRewriteWarning",
        *map(str, paths),
    ]


def run_checks(ctx: CheckContext, extra_dirs: Sequence[Path] = ()) -> list[CheckResult]:
    """Run every check (ours and ``test_*.py`` in ``extra_dirs``) against ``ctx.clones``.

    Per-clone checks yield one result per clone (target = the clone's name), cross-clone checks
    one result with target ``clones``. Nothing is printed; an interrupt is re-raised.
    """
    plugin = NixgoldMode(ctx)
    out = io.StringIO()
    try:
        with _isolated_environment(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(pytest_args(extra_dirs), plugins=[plugin])
    finally:
        plugin.close()
    if code == pytest.ExitCode.INTERRUPTED:
        raise KeyboardInterrupt("check suite interrupted")
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        tail = "\n".join(out.getvalue().strip().splitlines()[-15:])
        raise CheckSuiteError(f"the check suite could not run (pytest exit {int(code)}):\n{tail}")
    return list(plugin.results)


__all__ = ["CHECKS_DIR", "CheckSuiteError", "PLUGIN_NAME", "run_checks"]
