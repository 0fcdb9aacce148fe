"""`invoke verify` as a user runs it: real `invoke` processes inside the test bed's namespace,
against the simulated PVE API and real QEMU/TCG guests (template 9004 = the `good` stand-in).

Boots are expensive on a 2-core box, so only three runs boot guests to SSH: the passing run (two
clones, the second one's agent held back until the first is checked, with a taken-vmid race
injected), the `--keep` run with a failing site check from `verify.checks_dir` (one clone) and a SIGINT while one clone is in its checks and the other
still boots. The rest stop early: SIGTERM while a clone task still runs, an agent that never
answers (the simulator's slow-agent fault with a short `verify.agent_timeout`), API faults on
clone. Every test ends by proving no clone is left (`cluster/resources`).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import paramiko
import pytest

from nixgold.errors import ExitCode
from tests.helpers.background import BackgroundRun

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = 9004
#: The product defaults (agent 5m, SSH 3m) assume a real PVE node; TCG guests on a shared 2-core CI
#: box can take longer when other suites boot guests at the same time.
SLOW_BOX = ("--set", "verify.agent_timeout=12m", "--set", "verify.ssh_timeout=5m")


def argv(testbed: Any, *args: str) -> list[str]:
    invoke = REPO / ".venv" / "bin" / "invoke"
    cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
    return ["ip", "netns", "exec", testbed.netns, *cmd, "-r", str(REPO), "verify", *args]


def env(testbed: Any) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA"))}
    base.update(testbed.env())
    base.pop("REQUESTS_CA_BUNDLE", None)  # the product must verify with PROXMOX_CA_BUNDLE alone
    return base


def verify(testbed: Any, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(testbed, *args), env=env(testbed), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def verify_vms(testbed: Any) -> list[dict[str, Any]]:
    """Every VM that looks like a verify clone (tag or name), from cluster/resources."""
    with testbed.enter():
        vms = testbed.proxmoxer().cluster.resources.get(type="vm")
    return [vm for vm in vms if "nixgold-verify" in (vm.get("tags") or "") or "-verify-" in (vm.get("name") or "")]


def remove_vm(testbed: Any, vmid: int) -> None:
    with testbed.enter():
        testbed.destroy_vm(vmid)


def _all_vms(testbed: Any) -> list[dict[str, Any]]:
    with testbed.enter():
        return testbed.all_vms()


@pytest.fixture(autouse=True)
def before(testbed) -> Any:
    """The vmids that existed before the test; anything new afterwards is a leftover."""
    ids = {int(vm["vmid"]) for vm in _all_vms(testbed)}
    yield ids
    with testbed.enter():
        testbed.sim_admin.clear_faults()
    for vm in _all_vms(testbed):  # never let one test's leftovers break the next
        if int(vm["vmid"]) not in ids:
            remove_vm(testbed, int(vm["vmid"]))


def assert_no_clone_left(testbed: Any, before: set[int]) -> None:
    left = [vm for vm in _all_vms(testbed) if int(vm["vmid"]) not in before]
    assert left == [], f"VMs survived: {[(vm['vmid'], vm.get('name'), vm.get('lock')) for vm in left]}"


# ---------------------------------------------------------------------------------- passing
def test_good_template_passes_with_two_parallel_clones(testbed, before, tmp_path):
    """Also the vmid race (another client takes the first clone's vmid; verify picks a new one), and
    each clone is checked as soon as it is up: the second clone's agent is held back (the
    simulator's agent delay, by name) until the first clone's checks are done, then let go."""
    second = "nixgold-testbed-good-verify-2"
    with testbed.enter():
        testbed.sim_admin.take_vmid_on_clone(nth=1)
        testbed.sim_admin.slow_agent(3600, name=second)
    junit, report = tmp_path / "verify.xml", tmp_path / "verify.json"
    t0 = time.monotonic()
    run = BackgroundRun(argv(testbed, "--vmid", str(TEMPLATE), "--profile", "generic", "--junit", str(junit),
                             "--json", str(report), *SLOW_BOX), env(testbed), REPO)
    try:
        run.wait_for(r"\d+ checked in \d+\.\ds: \d+ checks, 0 failed", timeout=900)
        agents_up = [line for line in run.lines if " agent up after " in line]
        assert len(agents_up) == 1, run.err  # the first clone was checked while the second still booted
        with testbed.enter():
            testbed.sim_admin.slow_agent(0, name=second)
        rc = run.finish(900)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(30)
        with testbed.enter():
            testbed.sim_admin.clear_faults()
    wall = time.monotonic() - t0
    out, err = run.out, run.err
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"

    # progress: one line per stage with elapsed time
    assert re.search(r"\[\s*\d+\.\ds\] cloning 9004 -> \d+, \d+ \(linked", err)
    assert "was taken by another client; cloning to" in err
    assert re.search(r"\d+ agent up after \d+\.\ds, address 10\.99\.0\.\d+", err)
    assert "booting and checking each as soon as it answers SSH" in err and "destroying 2 clones" in err
    assert "running the checks across the 2 clones (machine-id, host keys)" in err
    checked = [n for n, line in enumerate(run.lines) if " checked in " in line]
    second_agent = [n for n, line in enumerate(run.lines) if " agent up after " in line][1]
    assert len(checked) == 2 and checked[0] < second_agent < checked[1], err
    # the table
    header = out.splitlines()[0].split()
    assert header == ["CHECK", "TARGET", "RESULT", "TIME", "REASON"]
    assert "boot.ssh" in out and "FAILED" not in out and re.search(r"checks: \d+ passed, 0 failed.*PASSED \(exit 0\)", out)

    data = json.loads(report.read_text())
    assert data["outcome"] == "passed" and data["exit_code"] == 0 and data["profile"] == "generic"
    assert data["template"]["vmid"] == TEMPLATE and data["template"]["manifest"]["template_vmid"] == TEMPLATE
    clones = data["clones"]
    assert len(clones) == 2 and len({c["vmid"] for c in clones}) == 2 and all(c["mode"] == "linked" for c in clones)
    assert [c["name"] for c in clones] == ["nixgold-testbed-good-verify-1", "nixgold-testbed-good-verify-2"]
    for c in clones:
        assert ipaddress.ip_address(c["address"]) in ipaddress.ip_network(testbed.subnet)
        assert {"clone", "boot_to_agent", "agent_to_ssh", "checks", "destroy"} <= set(c["timings"])
        assert c["destroyed"] and not c["kept"]
    assert data["timings"]["wall"] <= wall
    # the report lists the results as one run over both clones would: by check, then by clone
    targets: dict[str, list[str]] = {}
    for r in data["results"]:
        targets.setdefault(r["id"], []).append(r["target"])
    assert all(t == [c["name"] for c in clones] for cid, t in targets.items() if len(t) > 1), targets
    assert list(targets).index("hygiene.machine-id") < list(targets).index("user.exists")
    ids = {(r["id"], r["target"]) for r in data["results"]}
    for c in clones:
        assert {("boot.agent", c["name"]), ("boot.address", c["name"]), ("boot.ssh", c["name"])} <= ids
    assert all(r["outcome"] in ("passed", "skipped") for r in data["results"])
    assert data["ssh_key_file"] is None and "PRIVATE KEY" not in report.read_text()

    root = ET.parse(junit).getroot()
    assert root.get("tests") == str(len(data["results"])) and root.get("failures") == "0"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert {c["name"] for c in clones} <= set(suites)
    assert sum(int(s.get("tests")) for s in suites.values()) == len(data["results"])

    assert testbed.token_secret not in out + err + report.read_text() + junit.read_text()
    # only this run's: other test modules sharing the session's test bed may have left their own
    taken = [vm for vm in _all_vms(testbed) if vm.get("name") == "other-client" and int(vm["vmid"]) not in before]
    assert len(taken) == 1 and taken[0]["vmid"] not in {c["vmid"] for c in clones}
    remove_vm(testbed, int(taken[0]["vmid"]))  # the other client's VM was left alone
    assert_no_clone_left(testbed, before)


SITE_CHECKS = '''
import pytest


@pytest.mark.check("site.kernel", "the clone runs Linux")
def test_kernel(host):
    assert host.system_info.type == "linux", f"not Linux: {host.system_info.type}"


@pytest.mark.check("site.motd", "the message of the day names the site")
def test_motd(host):
    assert host.file("/etc/motd").contains("ACME"), "/etc/motd does not name ACME"
'''


def test_keep_and_a_failing_site_check(testbed, before, tmp_path):
    """`verify.checks_dir`: a site's own check files run next to the suite on the booted clone, and a
    failing one fails the run (exit 5) with its id and reason in the table and the JSON report;
    `--keep` keeps the clone and prints the ssh command that reaches it (also after a failure)."""
    checks = tmp_path / "site-checks"
    checks.mkdir()
    (checks / "test_site.py").write_text(SITE_CHECKS)
    report = tmp_path / "verify.json"
    result = verify(testbed, "--vmid", str(TEMPLATE), "--profile", "generic", "--clones", "1", "--keep",
                    "--set", f"verify.checks_dir={checks}", "--json", str(report), *SLOW_BOX)
    out, err = result.stdout, result.stderr
    m = re.search(r"ssh -i (\S+) nixgold@(\S+)", out)
    try:
        assert result.returncode == ExitCode.VERIFY, f"stdout:\n{out}\nstderr:\n{err}"
        assert re.search(r"^site\.motd +\S+ +FAILED .*/etc/motd does not name ACME", out, re.M), out
        assert re.search(r"^site\.kernel +\S+ +passed ", out, re.M), out
        failed = [r["id"] for r in json.loads(report.read_text())["results"] if r["outcome"] == "failed"]
        assert failed == ["site.motd"]  # the suite itself passed on the good template
        assert m, out
        key_file, address = Path(m.group(1)), m.group(2)
        assert key_file.stat().st_mode & 0o777 == 0o600
        (vm,) = verify_vms(testbed)
        assert vm["status"] == "running" and vm["name"] == "nixgold-testbed-good-verify-1"
        assert "destroying" not in err
        with testbed.enter():  # the printed command works: same key, same user, same address
            ssh = paramiko.SSHClient()
            ssh.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())
            ssh.connect(address, username="nixgold", key_filename=str(key_file), look_for_keys=False,
                        allow_agent=False, timeout=30)
            _, stdout, _ = ssh.exec_command("hostname")
            assert stdout.read().decode().strip() == vm["name"]
            ssh.close()
    finally:
        for vm in verify_vms(testbed):
            remove_vm(testbed, int(vm["vmid"]))
        if m:
            shutil.rmtree(Path(m.group(1)).parent, ignore_errors=True)
    assert_no_clone_left(testbed, before)


# ------------------------------------------------------------------------------- failing
SLOW_CHECK = """
import time

def test_takes_its_time(host):
    time.sleep(300)
"""


@pytest.mark.parametrize("sig, when", [(signal.SIGINT, "checking one clone, booting the other"),
                                       (signal.SIGTERM, "clone task running")])
def test_a_signal_destroys_every_clone_and_exits_130(testbed, before, tmp_path, sig, when):
    """At every stage verify has: cloning (the second clone's task still holds its lock), booting
    and checking (the first clone in a slow check of `verify.checks_dir` while the second clone's
    agent is held back, so both stages are under way when the signal comes)."""
    args = ["--vmid", str(TEMPLATE), "--profile", "generic"]
    with testbed.enter():
        if when == "clone task running":  # the second clone's task sleeps while its config says 'lock: clone'
            testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=8, nth=2)
        else:
            testbed.sim_admin.slow_agent(3600, name="nixgold-testbed-good-verify-2")
            (tmp_path / "checks").mkdir()
            (tmp_path / "checks" / "test_slow.py").write_text(SLOW_CHECK)
            args += ["--set", f"verify.checks_dir={tmp_path / 'checks'}", *SLOW_BOX]
    run = BackgroundRun(argv(testbed, *args), env(testbed), REPO)
    try:
        if when == "clone task running":
            run.wait_for(r"cloning 9004 ->")
            deadline = time.monotonic() + 30
            while not any(vm.get("lock") == "clone" for vm in _all_vms(testbed)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert any(vm.get("lock") == "clone" for vm in _all_vms(testbed))
        else:
            run.wait_for(r"\d+ SSH up [\d.]+s after the agent", timeout=900)
            time.sleep(5)  # the first clone's checks run (the slow one sleeps), the second boots
            assert not any(" checked in " in line for line in run.lines), run.err
            assert sum(" agent up after " in line for line in run.lines) == 1, run.err
        t0 = time.monotonic()
        run.proc.send_signal(sig)
        rc = run.finish()
        after_signal = time.monotonic() - t0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        with testbed.enter():
            testbed.sim_admin.clear_faults()
    assert rc == ExitCode.INTERRUPTED, run.err
    assert after_signal < 120, run.err  # the slow check was stopped, not waited for
    assert f"interrupted by {sig.name}; every clone was destroyed" in run.err, run.err
    assert re.search(r"destroying 2 clones \(\d+, \d+\): done", run.err)
    assert_no_clone_left(testbed, before)


def test_an_agent_that_never_answers_is_a_failed_boot_check(testbed, before, tmp_path):
    with testbed.enter():
        testbed.sim_admin.slow_agent(3600)
    report = tmp_path / "verify.json"
    result = verify(testbed, "--vmid", str(TEMPLATE), "--profile", "generic", "--clones", "1", "--json", str(report),
                    "--set", "verify.agent_timeout=15s")
    assert result.returncode == ExitCode.VERIFY, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("boot.agent"))
    assert "FAILED" in row and "guest agent did not answer within 15s" in row
    assert re.search(r"nixgold: \d+ of \d+ checks failed: boot.agent on nixgold-testbed-good-verify-1", result.stderr)
    data = json.loads(report.read_text())
    assert data["exit_code"] == 5 and data["clones"][0]["address"] is None and data["clones"][0]["destroyed"]
    assert_no_clone_left(testbed, before)


def test_a_500_on_clone_is_exit_6_and_leaves_no_clone(testbed, before):
    with testbed.enter():
        testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=500, message="injected: storage offline",
                               nth=2)
    result = verify(testbed, "--vmid", str(TEMPLATE), "--profile", "generic")
    assert result.returncode == ExitCode.INFRA, result.stderr
    assert re.search(r"nixgold: cloning 9004 to \d+ failed: POST /nodes/pve/qemu/9004/clone failed: 500 "
                     r"injected: storage offline", result.stderr)
    assert "destroying 2 clones" in result.stderr  # the first clone was made: it is destroyed
    assert_no_clone_left(testbed, before)


def test_a_clone_lock_timeout_is_reported_clearly(testbed, before):
    with testbed.enter():
        testbed.sim_admin.clone_lock_timeout(times=0)
    result = verify(testbed, "--vmid", str(TEMPLATE), "--profile", "generic", "--clones", "1")
    assert result.returncode == ExitCode.INFRA, result.stderr
    assert "hit a lock timeout" in result.stderr
    assert re.search(r"cloning 9004 to \d+ failed 3 times on a lock timeout: clone failed: can't lock file "
                     r"'/var/lock/qemu-server/lock-\d+\.conf' - got timeout", result.stderr)
    assert "retry later or clone fewer at once" in result.stderr
    assert_no_clone_left(testbed, before)


def test_an_unknown_vmid_is_a_flag_error(testbed):
    result = verify(testbed, "--vmid", "424242")
    assert result.returncode == ExitCode.CONFIG and "no VM 424242 in the cluster" in result.stderr
