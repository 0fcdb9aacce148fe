"""``run_checks``: the check suite in a child Python process, one CheckResult per check and target.

    results = run_checks(ctx, extra_dirs, scope="clone", cancel=token)   # one clone's own checks
    results = run_checks(ctx, extra_dirs, scope="cross")                   # machine-id, host keys

Each run is its own process (``python -m nixgold.verify.checks.runner``): pytest's state, its
plugins (autoload off: no testinfra ``host`` fixture, xdist, randomly... from the environment) and
its output stay there, so several clones are checked at once and the library never touches
``os.environ`` or ``sys.stdout``. The context travels as a 0600 JSON file (the private key only as
a path); the guest agent's answers for the agent checks are fetched by the caller beforehand
(:class:`AgentAnswers`), so the child needs no Proxmox credentials.

Scopes: ``clone`` = the checks of each clone in ``ctx.clones`` (parametrized by clone), ``cross`` =
those comparing clones (the ``clones`` fixture), ``all`` = both. Results come back in suite order;
:data:`CheckRun.order` is every check id in that order (for merging runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from nixgold.errors import ExitCode, NixgoldError, ProxmoxError
from nixgold.signals import Cancelled
from nixgold.verify.checks.model import CheckContext, CheckResult, CloneTarget

CHECKS_DIR = Path(__file__).resolve().parent
SCOPES = ("clone", "cross", "all")
#: What a child may see of our environment: enough to run Python and SSH, nothing else.
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class CheckSuiteError(NixgoldError):
    """The check suite could not run to its end (pytest failed, the child died or ran out of
    time): not a verdict on the template, and the report still says what ran."""

    exit_code = ExitCode.INTERNAL


@dataclass
class AgentAnswers:
    """The guest agent's answers (or PVE's error message) per clone and command."""

    answers: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def record(self, vmid: int, command: str, call: Callable[[], Any]) -> None:
        try:
            entry: dict[str, Any] = {"result": call()}
        except ProxmoxError as exc:
            entry = {"error": str(exc)}
        self.answers.setdefault(int(vmid), {})[command] = entry

    def __call__(self, vmid: int, command: str) -> Any:
        entry = self.answers.get(int(vmid), {}).get(command)
        if entry is None:
            raise ProxmoxError(f"the agent's answer to {command} was not fetched for VM {vmid}")
        if "error" in entry:
            raise ProxmoxError(entry["error"])
        return entry["result"]


#: The agent commands the checks ask (nixgold/verify/checks/test_agent.py).
AGENT_COMMANDS = ("ping", "get-osinfo", "get-host-name")


@dataclass
class CheckRun:
    results: list[CheckResult]
    order: list[str]  # every check id the suite has, in suite order
    #: clone name -> the user-level facts gathered there (FactStore.export), for a later cross run
    facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gather_seconds: dict[str, float] = field(default_factory=dict)  # clone name -> gathering its facts
    one_by_one: dict[str, list[str]] = field(default_factory=dict)  # clone name -> commands run outside them
    warnings: list[str] = field(default_factory=list)  # for the user: probes left out, gathering that failed


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
        "-q", "--no-header", "--tb=no", "--continue-on-collection-errors", "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *map(str, paths),
    ]


# --- the parent side ----------------------------------------------------------------------------
def _context_json(ctx: CheckContext, scope: str, facts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    answers = ctx.agent.answers if isinstance(ctx.agent, AgentAnswers) else {}
    data = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name not in ("agent", "clones")}
    data["clones"] = [{**dataclasses.asdict(c), "ssh_key_file": str(c.ssh_key_file)} for c in ctx.clones]
    data["agent_answers"] = {str(k): v for k, v in answers.items()}
    data["scope"] = scope
    data["facts"] = facts
    return data


def run_checks(ctx: CheckContext, extra_dirs: Sequence[Path] = (), *, scope: str = "all",
               timeout: float = 1800.0, cancelled: Callable[[], bool] = lambda: False,
               facts: dict[str, list[dict[str, Any]]] | None = None) -> CheckRun:
    """Run the suite for ``ctx.clones`` in a child process; :class:`CheckRun` with its results.

    ``facts``: what earlier runs gathered (:attr:`CheckRun.facts`); the cross-clone checks answer
    from them without a new SSH connection.

    ``cancelled`` is polled every 0.2 s: when it says so the child is interrupted (SIGINT: pytest
    stops, the child cleans up; killed 10 s later if it has not) and :class:`Cancelled` raised.
    The child runs in its own session, so a Ctrl-C at the terminal reaches only us, and its
    temporary files live in our temporary directory. A child that dies or outlives ``timeout`` is
    a :class:`CheckSuiteError`.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    with tempfile.TemporaryDirectory(prefix="nixgold-checks-") as tmp:
        context_file = Path(tmp) / "context.json"
        fd = os.open(context_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(_context_json(ctx, scope, facts or {}), fh, default=str)
        results_file = Path(tmp) / "results.json"
        output_file = Path(tmp) / "output.txt"
        (Path(tmp) / "tmp").mkdir()
        env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the child's environment, not ours
        env["TMPDIR"] = str(Path(tmp) / "tmp")
        argv = [sys.executable, "-m", "nixgold.verify.checks.runner", str(context_file), str(results_file),
                *map(str, extra_dirs)]
        with open(output_file, "w") as output, \
                subprocess.Popen(argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True) as child:
            deadline = time.monotonic() + timeout
            while child.poll() is None and not cancelled() and time.monotonic() < deadline:
                time.sleep(0.2)
            timed_out = child.poll() is None and not cancelled()
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            if cancelled():
                raise Cancelled("check suite cancelled")
        if timed_out:
            raise CheckSuiteError(f"the check suite did not finish within {timeout:.0f}s")
        if child.returncode != 0 or not results_file.exists():
            tail = "\n".join(output_file.read_text(errors="replace").strip().splitlines()[-15:])
            raise CheckSuiteError(f"the check suite could not run (exit {child.returncode}):\n{tail}")
        data = json.loads(results_file.read_text())
    return CheckRun([CheckResult(**r) for r in data["results"]], list(data["order"]), data["facts"],
                    data["gather_seconds"], data["one_by_one"], data["warnings"])


# --- the child side ------------------------------------------------------------------------------
def _load_context(path: Path) -> tuple[CheckContext, str, dict[str, list[dict[str, Any]]]]:
    data = json.loads(path.read_text())
    answers = AgentAnswers({int(k): v for k, v in data.pop("agent_answers").items()})
    scope = data.pop("scope")
    facts = data.pop("facts")
    clones = tuple(CloneTarget(**{**c, "ssh_key_file": Path(c["ssh_key_file"])}) for c in data.pop("clones"))
    data["allowed_keys"] = tuple(data["allowed_keys"])
    return CheckContext(**data, clones=clones, agent=answers), scope, facts


def main(argv: Sequence[str] | None = None) -> int:
    import pytest

    from nixgold.verify.checks.plugin import NixgoldMode

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped from outside: clean up like Ctrl-C
    args = list(sys.argv[1:] if argv is None else argv)
    context_file, results_file, extra = Path(args[0]), Path(args[1]), [Path(a) for a in args[2:]]
    ctx, scope, facts = _load_context(context_file)
    plugin = NixgoldMode(ctx, scope=scope, facts=facts)
    try:
        code = pytest.main(pytest_args(extra), plugins=[plugin])
        gathered, one_by_one = plugin.facts_out(), plugin.one_by_one()
    finally:
        plugin.close()
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED):
        return int(code) or 1
    fd = os.open(results_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"results": [dataclasses.asdict(r) for r in plugin.results], "order": plugin.order,
                   "facts": gathered, "gather_seconds": plugin.gather_seconds, "one_by_one": one_by_one,
                   "warnings": plugin.warnings}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
