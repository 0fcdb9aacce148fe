"""nixgold.verify.checks.run_checks and the pytest plugin without guests: the suite runs (in its child
process) against this machine (testinfra's local backend in place of SSH: ``connection="local"``),
plus check modules written here to pin down ids, targets, outcomes and one-line reasons. Standalone
use (`pytest --hosts=... nixgold/verify/checks/`) is run as a subprocess too."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


from nixgold.verify.checks import (
    AGENT_COMMANDS,
    CHECKS_DIR,
    AgentAnswers,
    CheckContext,
    CheckResult,
    CloneTarget,
    run_checks,
)
from nixgold.verify.checks.plugin import describe, public_key_of
from tests.helpers.procs import pid_gone

REPO = Path(__file__).resolve().parents[1]

OUR_CHECKS = {
    "cloud-init.done", "hostname.clone-name", "user.exists", "user.injected-key", "user.sudo", "sshd.service",
    "sshd.password-auth-off", "sshd.root-login", "agent.service", "agent.virtio-port", "agent.ping",
    "agent.host-name", "disk.size", "disk.root-grown", "console.serial", "hygiene.machine-id", "hygiene.host-keys",
    "hygiene.build-key", "hygiene.root-password", "nixos.marker", "nixos.release", "nixos.configuration", "nixos.nix",
}
CROSS_CLONE = {"hygiene.machine-id", "hygiene.host-keys"}

EXTRA = '''
import pytest

@pytest.mark.check("custom.ok", "always fine")
def test_ok(host):
    assert host.run("true").rc == 0

def test_multi_line_message(host, clone):
    """custom summary from the docstring"""
    assert 1 == 2, "one is not two\\nsecond line of detail"

def test_bare_assert(host):
    values = [1]
    assert values == [2]

def test_exception_is_an_error(host):
    raise ValueError("broken\\ncheck")

def test_skipped(host):
    pytest.skip("not today")

@pytest.fixture
def broken_fixture():
    raise RuntimeError("fixture exploded")

def test_setup_error(host, broken_fixture):
    pass

@pytest.mark.check("custom.cross", "sees all clones once")
def test_cross(clones, ctx):
    assert [c.name for c in clones] == [c.name for c in ctx.clones]
    print("noise on stdout")
'''


def answers_for(clones, answer) -> AgentAnswers:
    """The agent's answers (or errors) for every clone, as verify fetches them before a run."""
    answers = AgentAnswers()
    for c in clones:
        for command in AGENT_COMMANDS:
            answers.record(c.vmid, command, lambda: answer(c.vmid, command))
    return answers


def ctx_for(*names: str, agent=lambda vmid, cmd: {"id": "debian"}, connection="local", **changes) -> CheckContext:
    """Every clone is this machine (``connection="local"``: testinfra's local backend)."""
    clones = changes.pop("clones", None) or tuple(
        CloneTarget(vmid=100 + i, name=n, node="pve", address="127.0.0.1", ssh_user="root",
                    ssh_key_file=Path("/nonexistent"), disk_bytes=0) for i, n in enumerate(names))
    base = dict(profile="generic", nixos_release="26.05", permit_root_login="prohibit-password", ciuser="root",
                injected_public_key="", allowed_keys=(), clones=clones, agent=answers_for(clones, agent),
                connection=connection)
    base.update(changes)
    return CheckContext(**base)


def by_key(results: list[CheckResult]) -> dict[tuple[str, str], CheckResult]:
    return {(r.id, r.target): r for r in results}


def test_ids_targets_outcomes_and_one_line_reasons(tmp_path, capfd):
    (tmp_path / "test_custom.py").write_text(EXTRA)
    run = run_checks(ctx_for("clone-a", "clone-b"), [tmp_path])
    results = run.results
    assert run.order[0] == "agent.service" and set(run.order) >= OUR_CHECKS
    table = by_key(results)
    assert len(table) == len(results)
    assert capfd.readouterr() == ("", "")  # nothing printed, not even the extension's print()
    ids = {r.id for r in results}
    assert OUR_CHECKS <= ids
    for cid in OUR_CHECKS - CROSS_CLONE:
        assert {(cid, "clone-a"), (cid, "clone-b")} <= set(table), cid
    for cid in CROSS_CLONE | {"custom.cross"}:
        assert (cid, "clones") in table and (cid, "clone-a") not in table
    for r in results:
        assert r.outcome in ("passed", "failed", "error", "skipped") and r.summary, r
        assert "\n" not in r.reason and (r.reason == "") == (r.outcome == "passed"), r
    assert table["custom.ok", "clone-a"].outcome == "passed"
    assert table["custom.cross", "clones"].outcome == "passed"
    multi = table["custom.multi-line-message", "clone-b"]
    assert (multi.outcome, multi.reason, multi.summary) == ("failed", "one is not two",
                                                             "custom summary from the docstring")
    assert table["custom.bare-assert", "clone-a"].reason == "assert [1] == [2]"
    err = table["custom.exception-is-an-error", "clone-a"]
    assert (err.outcome, err.reason) == ("error", "ValueError: broken")
    assert table["custom.skipped", "clone-a"].outcome == "skipped"
    assert table["custom.skipped", "clone-a"].reason == "not today"
    setup = table["custom.setup-error", "clone-a"]
    assert (setup.outcome, setup.reason) == ("error", "RuntimeError: fixture exploded")
    # the generic profile skips exactly the NixOS checks, with the reason
    nixos = [r for r in results if r.id.startswith("nixos.")]
    assert len(nixos) == 8 and all(r.outcome == "skipped" and r.reason == "profile generic" for r in nixos)
    assert "PYTEST_DISABLE_PLUGIN_AUTOLOAD" not in os.environ


def test_a_broken_extension_module_is_one_error_and_the_rest_still_runs(tmp_path):
    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    (tmp_path / "test_fine.py").write_text("def test_fine(host):\n    assert True\n")
    table = by_key(run_checks(ctx_for("c1"), [tmp_path, CHECKS_DIR]).results)  # ours listed twice: run once
    broken = table["checks.collect", "test_broken.py"]
    assert broken.outcome == "error" and broken.reason == "ModuleNotFoundError: No module named 'no_such_module_here'"
    assert table["fine.fine", "c1"].outcome == "passed"
    assert sum(1 for (cid, _) in table if cid == "console.serial") == 1


def test_checks_that_need_proxmox_fail_when_the_agent_does_not_answer():
    from nixgold.errors import ProxmoxError

    def agent(vmid, command):
        raise ProxmoxError(f"500 QEMU guest agent is not running (vm {vmid})", 500)

    table = by_key(run_checks(ctx_for("c1", agent=agent), []).results)
    assert table["agent.ping", "c1"].outcome == "failed"
    assert table["agent.ping", "c1"].reason == "agent ping failed: 500 QEMU guest agent is not running (vm 100)"


def test_an_unreachable_clone_fails_fast_with_one_reason(tmp_path):
    """Real paramiko, nothing listening: every check on that clone is an error at once, not a timeout each."""
    from nixgold.verify import keys as sshkeys

    key = sshkeys.generate("t", tmp_path)
    clone = CloneTarget(vmid=100, name="gone", node="pve", address="127.0.0.1", ssh_user="nixgold",
                        ssh_key_file=key.private_key_file, disk_bytes=1)
    t0 = time.monotonic()
    results = run_checks(ctx_for(agent=lambda vmid, cmd: {"id": "x"}, clones=(clone,), connection="paramiko"),
                         []).results
    assert time.monotonic() - t0 < 60
    errors = [r for r in results if r.outcome == "error"]
    assert len(errors) >= 15 and {r.target for r in errors} <= {"gone", "clones"}
    assert all(r.reason.startswith("ConnectionError: no SSH connection to nixgold@127.0.0.1: ") for r in errors)


def test_describe_keeps_reasons_to_one_line():
    assert describe(AssertionError("first\nassert x == y\n +  where")) == "first"
    assert describe(RuntimeError("a\nb")) == "RuntimeError: a"
    assert describe(KeyError()) == "KeyError"
    assert len(describe(AssertionError("x" * 1000))) == 300


def test_public_key_of_an_identity_file(tmp_path):
    from nixgold.verify import keys as sshkeys

    key = sshkeys.generate("c", tmp_path)
    assert public_key_of(str(key.private_key_file)) == " ".join(key.public_key.split()[:2])
    (key.directory / "id_ed25519.pub").unlink()
    assert public_key_of(str(key.private_key_file)) == " ".join(key.public_key.split()[:2])
    assert public_key_of(None) == "" and public_key_of(str(tmp_path / "nope")) == ""


def test_standalone_pytest_run_skips_what_needs_proxmox(tmp_path):
    """`pytest --hosts=... nixgold/verify/checks/` without nixgold: context from the command line."""
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--hosts=local://", str(CHECKS_DIR), "-p", "no:cacheprovider",
                           "--nixgold-profile", "generic", "-rs", "--junitxml", str(junit)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode in (0, 1), out + proc.stderr  # this machine is no golden image: some fail
    skips = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", out, re.M)
    assert skips.count("profile generic") == 4
    assert "needs the Proxmox API (runs under `invoke verify`)" in skips
    assert "needs the disk size from Proxmox (runs under `invoke verify`)" in skips
    assert "needs the clone's name from Proxmox (runs under `invoke verify`)" in skips
    assert "no injected key known (pass --ssh-identity-file)" in skips
    xml = junit.read_text()
    assert 'name="check" value="sshd.password-auth-off"' in xml and 'value="sshd refuses password logins"' in xml


def test_readme_lists_every_check():
    readme = (CHECKS_DIR / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+\.[a-z0-9-]+)` \|", readme, re.M))
    assert listed >= OUR_CHECKS


def test_runs_per_clone_and_across_merge_into_one_runs_order(tmp_path):
    """What verify does (each clone's checks as it comes up, then the cross-clone ones) gives the
    same results, in the same order, as one run over every clone."""
    from nixgold.verify.verifier import merged_results

    (tmp_path / "test_custom.py").write_text(EXTRA + """

def test_context_only(ctx):
    assert ctx.profile == "generic"
""")
    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    whole = run_checks(ctx_for("clone-a", "clone-b"), [tmp_path]).results
    assert sum(r.id == "custom.context-only" for r in whole) == 1 and whole[0].id == "checks.collect"
    ctx = ctx_for("clone-a", "clone-b")
    one, two = (run_checks(ctx_for("clone-a", "clone-b", clones=(c,), agent=lambda vmid, cmd: {"id": "debian"}),
                           [tmp_path], scope="clone") for c in ctx.clones)
    cross = run_checks(ctx, [tmp_path], scope="cross")
    assert {r.target for r in one.results} == {"clone-a", "test_broken.py"}  # the module fails in each run
    assert {r.target for r in cross.results} == {"clones", "test_broken.py"}
    merged = merged_results([two, cross, one], ["clone-a", "clone-b"])
    key = lambda r: (r.id, r.target, r.outcome, r.reason)  # noqa: E731 - durations differ
    assert [key(r) for r in merged] == [key(r) for r in whole]


SLEEPER = '''
import time

def test_sleeps(host):
    time.sleep(120)
'''


def test_a_cancelled_run_stops_its_child_and_leaves_no_file(tmp_path, monkeypatch):
    """verify's Ctrl-C while a check runs: the child is interrupted (its own session: the terminal's
    Ctrl-C reaches only verify), cleans up, and run_checks raises Cancelled within seconds."""
    from nixgold.signals import Cancelled

    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_sleeper.py").write_text(SLEEPER)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where run_checks makes its own temporary directory
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        run_checks(ctx_for("a"), [tmp_path / "checks"], scope="clone", cancelled=lambda: time.monotonic() - t0 > 3)
    assert time.monotonic() - t0 < 20
    assert list(scratch.iterdir()) == []  # nothing of the run left: not its context, not the child's files


def test_a_run_that_outlives_its_time_is_a_check_suite_error(tmp_path):
    from nixgold.errors import ExitCode
    from nixgold.verify.checks import CheckSuiteError

    (tmp_path / "test_sleeper.py").write_text(SLEEPER)
    with pytest.raises(CheckSuiteError, match=r"the check suite did not finish within 4s") as info:
        run_checks(ctx_for("a"), [tmp_path], scope="clone", timeout=4)
    assert info.value.exit_code == ExitCode.INTERNAL


EARLY = '''
from pathlib import Path

LOG = Path(%r)  # the child sees none of our environment but PATH, HOME, ...
with LOG.open("a") as fh:
    fh.write("collected\\n")


def probes(ctx):
    with LOG.open("a") as fh:
        fh.write("probes for " + ",".join(c.address for c in ctx.clones) + "\\n")
    return []


def test_final_context(clone, ctx):
    with LOG.open("a") as fh:
        fh.write(f"ran on {clone.name} at {clone.address}, {ctx.agent(clone.vmid, 'ping')}\\n")
    assert clone.address == "10.0.0.9"
'''


def test_a_child_started_early_collects_while_its_clones_boot_and_runs_on_their_final_context(tmp_path):
    """start_checks(planned): the child imports the check modules and collects while it waits; go(ctx)
    hands it the final context (address, agent answers): the checks, and the probes, see that one."""
    from nixgold.verify.checks import start_checks

    log = tmp_path / "log"
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_early.py").write_text(EARLY % str(log))
    planned = ctx_for("a", clones=(CloneTarget(100, "a", "pve", "", "root", Path("/nonexistent"), 0),),
                      agent=lambda vmid, cmd: {"planned": True})
    final = ctx_for("a", clones=(CloneTarget(100, "a", "pve", "10.0.0.9", "root", Path("/nonexistent"), 0),),
                    agent=lambda vmid, cmd: {"final": cmd})
    with start_checks(planned, [tmp_path / "checks"], scope="clone") as child:
        deadline = time.monotonic() + 60
        while "collected" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # it would have run by now if it did not wait for go()
        assert log.read_text() == "collected\n"  # collected, nothing asked or run before go()
        child.go(final)
        run = child.wait(timeout=120)
    assert log.read_text().splitlines()[1:] == ["probes for 10.0.0.9", "ran on a at 10.0.0.9, {'final': 'ping'}"]
    assert by_key(run.results)[("early.final-context", "a")].outcome == "passed"
    assert "early.final-context" in run.order


def test_a_child_is_handed_only_the_clones_it_was_started_for(tmp_path):
    from nixgold.verify.checks import start_checks

    (tmp_path / "test_fine.py").write_text("def test_fine(host):\n    assert True\n")
    with start_checks(ctx_for("a", "b"), [tmp_path], scope="clone") as child:
        with pytest.raises(ValueError, match=r"started for clones \['a', 'b'\], not \['b', 'a'\]"):
            child.go(ctx_for("b", "a"))


@contextlib.contextmanager
def _sigint(state: str):
    """SIGINT ignored or blocked in this process meanwhile: what a child started now inherits."""
    if state == "ignored":
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
    elif state == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    else:
        yield


@pytest.mark.parametrize("inherited", ["default", "ignored", "blocked"])
def test_a_child_never_handed_its_clones_ends_on_stop_and_leaves_no_file(tmp_path, monkeypatch, inherited):
    """A clone that never came up: verify stops the waiting child (collected, waiting for go());
    it ends at once (SIGINT, not the kill 10 s later), its files are gone. Also when the process
    that started it ignored or blocked SIGINT: a child inherits both across exec."""
    from nixgold.verify.checks import start_checks

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where start_checks makes its temporary directory
    log = tmp_path / "log"
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_early.py").write_text(EARLY % str(log))
    with _sigint(inherited):
        child = start_checks(ctx_for("a"), [tmp_path / "checks"], scope="clone")
    pid = child._child.pid
    assert [p.name for p in scratch.iterdir()] == [Path(child._tmp.name).name]
    deadline = time.monotonic() + 60
    while "collected" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert child._child.poll() is None  # waiting for go()
    t0 = time.monotonic()
    child._interrupt()  # what stop() does before removing the files: here to read the child's output first
    took, rc = time.monotonic() - t0, child._child.returncode
    output = child._output_file.read_text(errors="replace")
    child.stop()
    # it left on SIGINT: not killed 10 s later
    assert rc is not None and rc != -signal.SIGKILL and took < 10, f"exit {rc} after {took:.1f}s:\n{output}"
    with pytest.raises(ProcessLookupError):  # stop() waited for it: reaped, not a zombie
        os.kill(pid, 0)
    assert list(scratch.iterdir()) == []
    assert log.read_text() == "collected\n"  # nothing ran
    with pytest.raises(RuntimeError, match=r"wait\(\) before go\(\)"):
        child.wait()


ORPHAN = '''
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from nixgold.verify.checks import CheckContext, CloneTarget, start_checks
ctx = CheckContext(profile="generic", nixos_release="", permit_root_login="prohibit-password", ciuser="root",
                   injected_public_key="", allowed_keys=(), agent=None, connection="local",
                   clones=(CloneTarget(100, "a", "pve", "127.0.0.1", "root", Path("/nonexistent"), 0),))
child = start_checks(ctx, [], scope="clone")
print(child._child.pid, flush=True)
os._exit(0)  # as SIGKILL would: no stop(), no go()
'''


def test_a_child_whose_verify_is_gone_leaves_on_its_own(tmp_path):
    """verify killed before its clones came up: the waiting child (its own session, so no signal
    reaches it) notices that its parent is gone and exits instead of waiting forever."""
    out = subprocess.run([sys.executable, "-c", ORPHAN, str(REPO)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert pid_gone(pid, 30.0), f"check child {pid} still runs without its verify"
    (output,) = tmp_path.glob("nixgold-checks-*/output.txt")  # no stop(): its files stay (as after SIGKILL)
    assert "the verify process that started this check run is gone" in output.read_text()
