"""``run_checks``: the check suite in a child Python process, one CheckResult per check and target.

    results = run_checks(ctx, extra_dirs, scope="clone", cancelled=token)  # one clone's own checks
    results = run_checks(ctx, extra_dirs, scope="cross")                   # machine-id, host keys

    child = start_checks(planned, extra_dirs, scope="clone")   # while the clone boots: collects
    child.go(ctx)                                              # its final context: runs the checks
    results = child.wait(cancelled=token)

Each run is its own process (``python -m nixgold.verify.checks.runner``): pytest's state, its
plugins (autoload off: no testinfra ``host`` fixture, xdist, randomly... from the environment) and
its output stay there, so several clones are checked at once and the library never touches
``os.environ`` or ``sys.stdout``. The context travels as a 0600 JSON file (the private key only as
a path); the guest agent's answers for the agent checks are fetched by the caller beforehand
(:class:`AgentAnswers`), so the child needs no Proxmox credentials. A child started early
(:class:`CheckChild`) imports pytest and the check modules and collects the suite while its clones
boot, so none of that is left when they answer SSH; its final context comes in a second 0600 file.

Scopes: ``clone`` = the checks of each clone in ``ctx.clones`` (parametrized by clone), ``cross`` =
those comparing clones (the ``clones`` fixture), ``all`` = both. Results come back in suite order;
:data:`CheckRun.order` is every check id in that order (for merging runs).
"""

from __future__ import annotations

import dataclasses
import functools
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


class CheckChild:
    """A check-suite child started before its clones are ready: while they boot it imports pytest
    and the check modules and collects the suite, then waits for :meth:`go` (the clones' final
    context: addresses, agent answers, facts). :func:`run_checks` is start + go + wait.

    ``planned`` names the clones (their order and names are what the suite is parametrized by; the
    context given to :meth:`go` must name the same clones: addresses, vmids and sizes may change).
    The child runs in its own session (a Ctrl-C at the terminal reaches only us) and leaves on its
    own when this process is gone before :meth:`go`. Its files live in a 0700 temporary directory of
    ours, removed by :meth:`stop` (also when used as a context manager)."""

    def __init__(self, planned: CheckContext, extra_dirs: Sequence[Path] = (), *, scope: str = "all"):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.names = [c.name for c in planned.clones]
        self._tmp = tempfile.TemporaryDirectory(prefix="nixgold-checks-", ignore_cleanup_errors=True)
        tmp = Path(self._tmp.name)
        self._go_file = tmp / "go.json"
        self._results_file = tmp / "results.json"
        self._output_file = tmp / "output.txt"
        self._deadline: float | None = None
        try:
            context = _context_json(planned, scope, {})
            context["go_file"] = str(self._go_file)
            context["parent_pid"] = os.getpid()  # the child leaves when it is gone (also before it started)
            _write_private(tmp / "context.json", context)
            (tmp / "tmp").mkdir()
            env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the child's environment, not ours
            env["TMPDIR"] = str(tmp / "tmp")
            argv = [sys.executable, "-m", "nixgold.verify.checks.runner", str(tmp / "context.json"),
                    str(self._results_file), *map(str, extra_dirs)]
            with open(self._output_file, "w") as output:
                self._child = subprocess.Popen(argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=output,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self) -> CheckChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go(self, ctx: CheckContext, facts: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """Hand the child the clones' final context; it runs the checks from now on."""
        names = [c.name for c in ctx.clones]
        if names != self.names:
            raise ValueError(f"the check child was started for clones {self.names}, not {names}")
        staged = self._go_file.with_suffix(".tmp")
        try:
            _write_private(staged, _context_json(ctx, self.scope, facts or {}))
            os.replace(staged, self._go_file)  # the child sees the whole file or none
        except OSError as exc:  # its temporary directory is gone or full
            raise CheckSuiteError(f"could not hand the check run its clones: {exc}") from None
        self._deadline = time.monotonic()

    def wait(self, *, timeout: float = 1800.0, cancelled: Callable[[], bool] = lambda: False) -> CheckRun:
        """The run's results, ``timeout`` seconds at most from :meth:`go`.

        ``cancelled`` is polled every 0.2 s (the child's exit is seen at once): when it says so the
        child is interrupted (SIGINT: pytest stops, the child cleans up; killed 10 s later if it has
        not) and :class:`Cancelled` raised. A child that dies or outlives ``timeout`` is a :class:`CheckSuiteError`."""
        if self._deadline is None:
            raise RuntimeError("wait() before go()")
        child, deadline = self._child, self._deadline + timeout
        while child.poll() is None and not cancelled() and time.monotonic() < deadline:
            try:
                child.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        timed_out = child.poll() is None and not cancelled()
        self._interrupt()
        if cancelled():
            self.stop()
            raise Cancelled("check suite cancelled")
        try:
            if timed_out:
                raise CheckSuiteError(f"the check suite did not finish within {timeout:.0f}s")
            if child.returncode != 0 or not self._results_file.exists():
                tail = "\n".join(self._output_file.read_text(errors="replace").strip().splitlines()[-15:])
                raise CheckSuiteError(f"the check suite could not run (exit {child.returncode}):\n{tail}")
            data = json.loads(self._results_file.read_text())
        finally:
            self.stop()
        return CheckRun([CheckResult(**r) for r in data["results"]], list(data["order"]), data["facts"],
                        data["gather_seconds"], data["one_by_one"], data["warnings"])

    def _interrupt(self) -> None:
        child = self._child
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop(self) -> None:
        """End the child (interrupted if it still runs) and remove its files; idempotent, and
        never raises for files it cannot remove (it is called on every way out)."""
        self._interrupt()
        self._tmp.cleanup()  # ignore_cleanup_errors


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, default=str)


def start_checks(planned: CheckContext, extra_dirs: Sequence[Path] = (), *, scope: str = "all") -> CheckChild:
    """A :class:`CheckChild` for ``planned``'s clones, collecting the suite while they boot."""
    return CheckChild(planned, extra_dirs, scope=scope)


def run_checks(ctx: CheckContext, extra_dirs: Sequence[Path] = (), *, scope: str = "all",
               timeout: float = 1800.0, cancelled: Callable[[], bool] = lambda: False,
               facts: dict[str, list[dict[str, Any]]] | None = None) -> CheckRun:
    """Run the suite for ``ctx.clones`` in a child process; :class:`CheckRun` with its results.

    ``facts``: what earlier runs gathered (:attr:`CheckRun.facts`); the cross-clone checks answer
    from them without a new SSH connection. ``timeout`` and ``cancelled``: :meth:`CheckChild.wait`.
    """
    with CheckChild(ctx, extra_dirs, scope=scope) as child:
        child.go(ctx, facts)
        return child.wait(timeout=timeout, cancelled=cancelled)


# --- the child side ------------------------------------------------------------------------------
#: The check child's CPU priority (nice increment). It imports pytest and collects the suite while its
#: clone boots, then mostly waits for SSH answers; where the guests run on the same CPUs (a test bed, a
#: one-node homelab where verify runs on the node) the boots go first.
CHILD_NICE = 10


def _load_context(path: Path) -> tuple[CheckContext, str, dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(context, scope, facts, how it was started: ``go_file`` and ``parent_pid`` when started early)."""
    data = json.loads(path.read_text())
    early = {k: data.pop(k) for k in ("go_file", "parent_pid") if k in data}
    answers = AgentAnswers({int(k): v for k, v in data.pop("agent_answers").items()})
    scope = data.pop("scope")
    facts = data.pop("facts")
    clones = tuple(CloneTarget(**{**c, "ssh_key_file": Path(c["ssh_key_file"])}) for c in data.pop("clones"))
    data["allowed_keys"] = tuple(data["allowed_keys"])
    return CheckContext(**data, clones=clones, agent=answers), scope, facts, early


def _await_go(go_file: Path, parent: int) -> tuple[CheckContext, dict[str, list[dict[str, Any]]]]:
    """The final context once the parent writes it (:meth:`CheckChild.go`); a KeyboardInterrupt
    (pytest stops, we clean up) when the parent is gone first."""
    while not go_file.exists():
        if os.getppid() != parent:
            raise KeyboardInterrupt("the verify process that started this check run is gone")
        time.sleep(0.05)
    ctx, _, facts, _ = _load_context(go_file)
    return ctx, facts


def main(argv: Sequence[str] | None = None) -> int:
    os.nice(CHILD_NICE)  # before pytest's import: that is most of this process's CPU time
    import pytest

    from nixgold.verify.checks.plugin import NixgoldMode

    # CheckChild.stop() and wait()'s cancel end this run with SIGINT, whatever the process that
    # started it did with the signal: ignored or blocked there, it would be ignored or blocked here
    # too (both survive exec), and the child was killed 10 s later instead (seen in CI).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped from outside: clean up like Ctrl-C
    args = list(sys.argv[1:] if argv is None else argv)
    context_file, results_file, extra = Path(args[0]), Path(args[1]), [Path(a) for a in args[2:]]
    ctx, scope, facts, early = _load_context(context_file)
    ready = functools.partial(_await_go, Path(early["go_file"]), int(early["parent_pid"])) if early else None
    plugin = NixgoldMode(ctx, scope=scope, facts=facts, ready=ready)
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
