"""nixgold.verify without booting guests: template selection on the simulator, pre-check gating,
infrastructure failures before any boot, and the pure helpers (names, boot disk, sizes).

The check suite itself belongs to ``nixgold.verify.checks``; where a test needs a particular verdict
from it, a stand-in module with the same interface is put in ``sys.modules`` by monkeypatch.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from nixgold.config.load import load_config
from nixgold.errors import ExitCode, ProxmoxError
from nixgold.progress import Progress
from nixgold.proxmox.client import ProxmoxClient, RetryPolicy
from nixgold.verify.verifier import ChecksFailed, Verifier, VerifyOptions, run_verify
from nixgold.verify.select import TemplateSelectionError, resolve_template
from nixgold.verify.clones import boot_disk, clone_name, net0_mac
from nixgold.units import parse_size
from nixgold.proxmox.vms import split_tags
from tests.helpers.check_stubs import start_checks_with
from tests.helpers.pve import bed_creds, wait_for_clone_lock

TEMPLATE = 9004
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)


# ------------------------------------------------------------------------------- pure helpers
def test_clone_names_are_dns_labels():
    assert clone_name("nixos-golden", 1) == "nixos-golden-verify-1"
    assert clone_name("Golden_Image.v2", 2) == "golden-image-v2-verify-2"
    long = clone_name("x" * 80, 8)
    assert len(long) <= 63 and long.endswith("-verify-8")


def test_boot_disk_follows_the_boot_order():
    config = {"boot": "order=ide2;virtio1;net0", "ide2": "local:iso/x.iso,media=cdrom",
              "virtio1": "local:120/vm-120-disk-1.qcow2,size=20G", "scsi0": "local:120/vm-120-disk-0.qcow2,size=4G"}
    assert boot_disk(config) == ("virtio1", 20 * 1024 ** 3)
    assert boot_disk({"bootdisk": "sata0", "sata0": "local-lvm:vm-1-disk-0,size=512M"}) == ("sata0", 512 * 1024 ** 2)
    assert boot_disk({"ide2": "local:120/vm-120-cloudinit.qcow2,media=cdrom",
                      "scsi1": "local:1/a.raw,size=1G", "scsi0": "local:1/b.raw"}) == ("scsi0", None)
    with pytest.raises(ProxmoxError, match="no boot disk"):
        boot_disk({"ide2": "local:120/vm-120-cloudinit.qcow2,media=cdrom"})


def test_sizes_macs_and_tags():
    assert parse_size("2G") == 2 * 1024 ** 3 and parse_size("1536") == 1536 and parse_size("1.5K") == 1536
    assert net0_mac({"net0": "virtio=BC:24:11:CC:0C:48,bridge=vmbr0"}) == "BC:24:11:CC:0C:48"
    assert split_tags("nixgold;Golden,testbed") == ["nixgold", "golden", "testbed"]


# --------------------------------------------------------------------- template selection
@pytest.fixture
def client(testbed) -> Iterator[ProxmoxClient]:
    with testbed.enter():
        yield ProxmoxClient(bed_creds(testbed), retry=FAST)


def manifest(vmid: int, build_time: str | None) -> str:
    return json.dumps({"nixgold_manifest": 1, "nixgold_version": "0.1.0", "config_sha256": "0" * 64,
                       "nixos_release": "26.05", "template_vmid": vmid, "template_name": f"t{vmid}",
                       "dialect": "plugin", "firmware": "uefi", "build_time": build_time})


@pytest.fixture
def extra_vms(client) -> Iterator[Callable[..., int]]:
    made: list[int] = []

    def make(vmid: int, name: str, *, tags: str | None = None, description: str | None = None,
             template: bool = True) -> int:
        client.wait_task(client.post("nodes/pve/qemu", vmid=vmid, name=name, memory=64, tags=tags,
                                     description=description), 60)
        made.append(vmid)
        if template:
            client.wait_task(client.post(f"nodes/pve/qemu/{vmid}/template"), 60)
        return vmid

    yield make
    for vmid in made:
        client.wait_task(client.destroy("pve", vmid), 60)


def test_default_and_explicit_vmid(client):
    t = resolve_template(client, vmid=None, name=None, tag=None, default_vmid=TEMPLATE)
    assert (t.vmid, t.node, t.selected_by) == (TEMPLATE, "pve", "template.vmid = 9004")
    assert t.manifest is not None and t.config["template"] == 1
    t = resolve_template(client, vmid=TEMPLATE, name=None, tag=None, default_vmid=1)
    assert t.selected_by == "--vmid 9004" and t.name == "nixgold-testbed-good"
    with pytest.raises(TemplateSelectionError, match=r"no VM 424242 in the cluster .*--vmid") as info:
        resolve_template(client, vmid=424242, name=None, tag=None, default_vmid=TEMPLATE)
    assert info.value.exit_code == ExitCode.CONFIG
    with pytest.raises(TemplateSelectionError, match="only one of"):
        resolve_template(client, vmid=TEMPLATE, name="x", tag=None, default_vmid=TEMPLATE)


def test_names_must_be_unique_among_templates(client, extra_vms):
    assert resolve_template(client, vmid=None, name="nixgold-testbed-good", tag=None, default_vmid=1).vmid == TEMPLATE
    extra_vms(9201, "dup-name")
    extra_vms(9202, "dup-name")
    extra_vms(9203, "nixgold-testbed-good", template=False)  # a VM, not a template: does not count
    assert resolve_template(client, vmid=None, name="nixgold-testbed-good", tag=None, default_vmid=1).vmid == TEMPLATE
    with pytest.raises(TemplateSelectionError, match=r"'dup-name' is ambiguous: vmids 9201, 9202; pick one with --vmid"):
        resolve_template(client, vmid=None, name="dup-name", tag=None, default_vmid=1)
    with pytest.raises(TemplateSelectionError, match=r"no template named 'nope' \(templates: .*nixgold-testbed-good \(9004\)"):
        resolve_template(client, vmid=None, name="nope", tag=None, default_vmid=1)


def test_tag_picks_the_newest_nixgold_template(client, extra_vms):
    extra_vms(9211, "old", tags="golden;nixos", description=manifest(9211, "2026-01-01T00:00:00Z"))
    extra_vms(9212, "new", tags="golden", description=manifest(9212, "2026-06-01T00:00:00Z"))
    extra_vms(9213, "newest-vmid-no-manifest", tags="golden", description="hand-made")
    extra_vms(9214, "not-a-template", tags="golden", description=manifest(9214, "2027-01-01T00:00:00Z"),
              template=False)
    said: list[str] = []
    t = resolve_template(client, vmid=None, name=None, tag="Golden", default_vmid=1, say=said.append)
    assert t.vmid == 9212 and t.selected_by == "--tag Golden"
    assert said == ["--tag Golden: chose template 9212 (new), newest by manifest build_time "
                    "(2026-06-01T00:00:00Z); also tagged: 9211"]
    extra_vms(9215, "undated-a", tags="undated", description=manifest(9215, None))
    extra_vms(9216, "undated-b", tags="undated", description=manifest(9216, None))
    assert resolve_template(client, vmid=None, name=None, tag="undated", default_vmid=1).vmid == 9216
    extra_vms(9217, "plain", tags="plain", description="no manifest")
    with pytest.raises(TemplateSelectionError, match=r"no nixgold template tagged 'plain' \(9217 carry the tag"):
        resolve_template(client, vmid=None, name=None, tag="plain", default_vmid=1)


# --------------------------------------------------------------- the run, stopped before booting
@dataclass(frozen=True)
class Result:
    id: str
    target: str
    outcome: str
    seconds: float
    reason: str = ""
    summary: str = ""


@dataclass
class StubChecks:
    """Same interface as nixgold.verify.checks; ``template`` is what template_checks answers."""

    template: list[Result] = field(default_factory=lambda: [Result("template.is-template", "template", "passed", 0)])
    contexts: list[Any] = field(default_factory=list)
    calls: list[tuple[float, str, tuple[str, ...]]] = field(default_factory=list)  # (when, scope, clones)
    children: list[tuple[float, Any]] = field(default_factory=list)  # (when started, the stand-in child)

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("nixgold.verify.checks")
        mod.CheckResult = Result
        mod.CloneTarget = lambda **kw: types.SimpleNamespace(**kw)
        mod.CheckContext = lambda **kw: types.SimpleNamespace(**kw)
        mod.BLOCKING_TEMPLATE_CHECKS = frozenset({"template.is-template", "template.agent", "template.cloud-init"})
        mod.template_checks = lambda config, description: list(self.template)

        from nixgold.verify.checks.runner import AGENT_COMMANDS, AgentAnswers, CheckRun

        mod.AGENT_COMMANDS, mod.AgentAnswers = AGENT_COMMANDS, AgentAnswers

        def run_checks(ctx: Any, extra_dirs: Any = (), *, scope: str = "all", **kw: Any) -> CheckRun:
            self.contexts.append(ctx)
            self.calls.append((time.monotonic(), scope, tuple(c.name for c in ctx.clones)))
            if scope == "cross":
                return CheckRun([Result("stub.cross", "clones", "passed", 0.1)], ["stub.ok", "stub.cross"])
            return CheckRun([Result("stub.ok", c.name, "passed", 0.1) for c in ctx.clones], ["stub.ok", "stub.cross"])

        mod.run_checks = run_checks
        start = start_checks_with(run_checks)

        def start_checks(planned: Any, extra_dirs: Any = (), *, scope: str = "all") -> Any:
            child = start(planned, extra_dirs, scope=scope)
            self.children.append((time.monotonic(), child))
            return child

        mod.start_checks = start_checks
        return mod


@pytest.fixture
def verify_env(testbed, monkeypatch, tmp_path) -> Iterator[Callable[..., Any]]:
    """Run nixgold.verify in-process against the bed with stand-in checks; returns (report|exc, stderr)."""
    stub = StubChecks()
    monkeypatch.setitem(sys.modules, "nixgold.verify.checks", stub.module())

    def run(*sets: str, **options: Any) -> tuple[Any, str]:
        overrides = dict(s.split("=", 1) for s in sets)
        overrides = {k: (int(v) if v.isdigit() else v) for k, v in overrides.items()}
        config = load_config(testbed.config_path, overrides=overrides, env={})
        creds = bed_creds(testbed)
        err, out = io.StringIO(), io.StringIO()
        options.setdefault("json_path", tmp_path / "verify.json")
        with testbed.enter():
            client = ProxmoxClient(creds, retry=FAST)
            try:
                outcome: Any = run_verify(config, creds, VerifyOptions(**options), progress=Progress(stream=err),
                                          out=out, client=client)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome = exc
        # every check child verify started is stopped, whatever ended the run
        assert [child.stopped for _, child in stub.children] == [True] * len(stub.children), stub.children
        return outcome, err.getvalue() + out.getvalue()

    run.stub = stub  # type: ignore[attr-defined]
    yield run
    with testbed.enter():
        testbed.sim_admin.clear_faults()


def clones_left(testbed) -> list[int]:
    with testbed.enter():
        return [vm["vmid"] for vm in testbed.proxmoxer().cluster.resources.get(type="vm")
                if "nixgold-verify" in (vm.get("tags") or "") or "-verify-" in (vm.get("name") or "")]


def test_a_blocking_precheck_skips_cloning(testbed, verify_env, tmp_path):
    verify_env.stub.template = [Result("template.is-template", "template", "failed", 0, "VM 9004 is not a template"),
                                Result("template.serial", "template", "passed", 0)]
    outcome, text = verify_env(vmid=TEMPLATE)
    assert isinstance(outcome, ChecksFailed) and outcome.exit_code == ExitCode.VERIFY
    assert "not cloning: template.is-template: VM 9004 is not a template" in text
    assert "cloning 9004" not in text and clones_left(testbed) == []
    data = json.loads((tmp_path / "verify.json").read_text())
    assert data["exit_code"] == 5 and data["clones"] == [] and len(data["results"]) == 2


def test_a_500_on_clone_is_an_infrastructure_error_and_leaves_nothing(testbed, verify_env, tmp_path):
    with testbed.enter():
        testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=500, message="injected: storage offline",
                               times=0)
    outcome, text = verify_env(vmid=TEMPLATE)
    assert isinstance(outcome, ProxmoxError) and outcome.exit_code == ExitCode.INFRA
    assert "injected: storage offline" in str(outcome) and "cloning 9004 to" in str(outcome)
    assert clones_left(testbed) == []
    data = json.loads((tmp_path / "verify.json").read_text())
    assert data["outcome"] == "error" and data["exit_code"] == 6 and "injected: storage offline" in data["error"]
    assert [r["id"] for r in data["results"]] == ["template.is-template"]  # what ran before the failure stays


def test_the_ephemeral_key_is_removed_and_never_reported(testbed, verify_env, tmp_path, monkeypatch):
    with testbed.enter():
        testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/start", status=500, message="injected: no start")
        testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/status/start", status=500, message="injected: no start")
    seen: list[Path] = []
    secret_lines: list[str] = []
    from nixgold.verify import keys as sshkeys

    real = sshkeys.generate

    def spy(comment: str, parent: Any = None) -> Any:
        key = real(comment, tmp_path)
        assert key.private_key_file.stat().st_mode & 0o777 == 0o600
        seen.append(key.private_key_file)
        secret_lines.extend(key.secret_lines)
        return key

    monkeypatch.setattr(sshkeys, "generate", spy)
    outcome, text = verify_env("verify.clones=1", vmid=TEMPLATE)
    assert isinstance(outcome, ProxmoxError) and "injected: no start" in str(outcome)
    (key_file,) = seen
    assert not key_file.exists() and not key_file.parent.exists()
    assert clones_left(testbed) == []
    assert "destroying 1 clone" in text
    report = (tmp_path / "verify.json").read_text()
    assert secret_lines and not any(line in report or line in text for line in secret_lines)


def test_a_clone_that_never_comes_up_fails_its_boot_check_and_delays_no_other(testbed, verify_env, tmp_path,
                                                                              monkeypatch):
    """The pipeline: the first clone's checks run while the second is still booting; the second
    fails boot.agent; the checks across clones are not run (one clone is not enough); exit 5.
    Booting is stood in for (the clones' agents and SSH are the e2e tests' job)."""
    from nixgold.verify.verifier import Verifier

    boot_failed_at: list[float] = []

    def boot(self: Any, c: Any) -> None:
        if c.index == 1:  # the first clone: up at once
            c.address = "192.0.2.10"
            c.boot_results += [self._result(i, c.name, "passed", 0.1) for i in ("boot.agent", "boot.address",
                                                                                 "boot.ssh")]
            return
        self.pause(3)  # the second: its agent never answers
        c.boot_results.append(self._result("boot.agent", c.name, "failed", 3.0, "the guest agent did not answer"))
        boot_failed_at.append(time.monotonic())

    monkeypatch.setattr(Verifier, "_boot", boot)
    outcome, text = verify_env(vmid=TEMPLATE)
    assert isinstance(outcome, ChecksFailed) and outcome.exit_code == ExitCode.VERIFY, text
    (call,) = verify_env.stub.calls  # one run: the first clone's own checks, none across clones
    assert call[1] == "clone" and call[2] == ("nixgold-testbed-good-verify-1",)
    assert call[0] < boot_failed_at[0]  # checked while the other clone still booted
    # the cross-clone child started when the first clone was done (one left), never ran, was stopped
    (started, cross), = [(t, ch) for t, ch in verify_env.stub.children if ch.scope == "cross"]
    assert call[0] <= started < boot_failed_at[0] and cross.ctx is None and cross.stopped
    assert "not running the checks across clones: 1 of 2 clones did not come up" in text
    data = json.loads((tmp_path / "verify.json").read_text())
    rows = [(r["id"], r["target"], r["outcome"]) for r in data["results"]]
    assert ("boot.agent", "nixgold-testbed-good-verify-2", "failed") in rows
    assert ("stub.ok", "nixgold-testbed-good-verify-1", "passed") in rows
    assert not any(r[0] == "stub.cross" for r in rows) and clones_left(testbed) == []


def test_two_clones_at_one_address_fail_the_later_ones_boot_check(testbed, verify_env, tmp_path, monkeypatch):
    """Clones that share a DHCP identity (a client id or DUID baked into the template) get one address
    and SSH cannot tell them apart: the clone that reports the address second fails boot.address,
    naming the first, and nothing is checked through that address for it; the first clone's own
    checks run; the checks across clones do not (one clone up); exit 5. The clones boot for real;
    the agent's answer for the second one is made the first one's address."""
    import nixgold.verify.verifier as verifier_module

    real = verifier_module.agent_addresses
    first: list[str] = []

    def one_address(interfaces: Any, mac: Any) -> list[str]:
        got = real(interfaces, mac)
        if got and not first:
            first.append(got[0])
        return [first[0]] if got else got

    monkeypatch.setattr(verifier_module, "agent_addresses", one_address)
    outcome, text = verify_env(vmid=TEMPLATE)
    assert isinstance(outcome, ChecksFailed) and outcome.exit_code == ExitCode.VERIFY, text
    results = json.loads((tmp_path / "verify.json").read_text())["results"]
    (bad,) = [r for r in results if r["outcome"] in ("failed", "error")]
    names = {"nixgold-testbed-good-verify-1", "nixgold-testbed-good-verify-2"}
    (winner,) = names - {bad["target"]}
    assert bad["id"] == "boot.address" and bad["target"] in names
    assert f"reports {first[0]}, which clone {winner} reported first: two clones answer at one address" in bad["reason"]
    passed = {(r["id"], r["target"]) for r in results if r["outcome"] == "passed"}
    assert ("stub.ok", winner) in passed and not any(t == bad["target"] for i, t in passed if i.startswith("stub."))
    assert ("boot.ssh", bad["target"]) not in passed and not any(r["id"] == "stub.cross" for r in results)
    assert clones_left(testbed) == []


def bed_verifier(testbed, client: ProxmoxClient) -> Verifier:
    """A Verifier of template ``TEMPLATE`` on the bed, to call its cleanup and verdict directly."""
    return Verifier(load_config(testbed.config_path, env={}), bed_creds(testbed), VerifyOptions(vmid=TEMPLATE),
                    progress=Progress(stream=io.StringIO()), out=io.StringIO(), client=client)


def marked_job(verifier: Verifier, client: ProxmoxClient, name: str, **fields: Any) -> Any:
    """A clone job of ``TEMPLATE`` to a fresh vmid whose description carries ``verifier``'s marker, as
    verify makes it (``fields``: how far its request got, e.g. ``requested=True``)."""
    from nixgold.proxmox.vms import CloneJob, verify_marker

    return CloneJob(node="pve", source=TEMPLATE, name=name, description=verify_marker(verifier.run_id),
                    vmid=client.next_vmid(), **fields)


def end_clone_test(testbed: Any, client: ProxmoxClient, upid: str | None, vmid: int, *, stop: bool = False) -> None:
    """A cleanup test's teardown: no faults left; its clone task (``stop``: stopped first) over, whatever
    it ended in; the clone it left removed."""
    testbed.sim_admin.clear_faults()
    if upid:
        if stop:
            client.delete(f"nodes/pve/tasks/{upid}")
        with contextlib.suppress(ProxmoxError):
            client.wait_task(upid, 60)
    remove_if_left(client, vmid)


def remove_if_left(client: ProxmoxClient, vmid: int) -> None:
    """What a cleanup test's clone left on the shared bed (none when the test passed)."""
    if client.find_vm(vmid) is not None:
        client.wait_unlocked("pve", vmid, 60)
        client.wait_task(client.destroy("pve", vmid), 60)


def test_cleanup_waits_out_a_running_clone_task_it_has_no_upid_of(testbed, client):
    """The clone request went out but its UPID never came back (a signal, a cut answer): while the task
    runs, the clone's config is PVE's temporary ``lock: clone`` one without our marker (qemu-server
    clone_vm; the simulator does the same). Cleanup waits for the task, then finds the marker and
    destroys the clone; it never destroys before it has seen the marker."""
    from nixgold.verify.clones import CloneRun

    verifier = bed_verifier(testbed, client)
    job = marked_job(verifier, client, "cut-clone")
    vmid = job.vmid
    with testbed.enter():
        testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=4)
        try:
            upid = client.clone("pve", TEMPLATE, vmid, name=job.name, description=job.description)
            wait_for_clone_lock(client, vmid)
            job.requested = True  # ... but job.upid never got the answer
            c = CloneRun(index=0, job=job)
            t0 = time.monotonic()
            verifier._destroy(c)
            assert c.destroyed and client.find_vm(vmid) is None
            assert time.monotonic() - t0 >= 2  # it waited for the task (4 s) before reading the marker
            assert client.task_status(upid)["exitstatus"] == "OK"
        finally:
            testbed.sim_admin.clear_faults()
            remove_if_left(client, vmid)


def test_cleanup_waits_for_a_clone_task_of_an_unanswered_request_that_has_not_written_the_vm_yet(testbed, client):
    """The clone request's answer was lost and cleanup looks at once, while the task it started is still
    before its locks: qemu-server clone_vm forks the task first and writes the new VM's temporary config
    only once it holds the locks (the simulator's ``slow_start``), so there is no VM yet. Cleanup must not
    conclude "never made": it waits for this user's running clone tasks of the source, then finds the
    VM with this run's marker and destroys it. (Before: it returned at once and the clone appeared
    after it, left on the cluster.)"""
    from nixgold.proxmox.vms import CLOCK_SKEW, unanswered_clone_tasks
    from nixgold.verify.clones import CloneRun

    verifier = bed_verifier(testbed, client)
    job = marked_job(verifier, client, "unanswered-clone", requested=True, requested_at=time.time())
    vmid = job.vmid
    with testbed.enter():
        testbed.sim_admin.slow_start("POST", "/nodes/*/qemu/*/clone", seconds=8)
        upid = None
        try:
            upid = client.clone("pve", TEMPLATE, vmid, name=job.name, description=job.description)
            # ... but the answer never reached the job (job.answered stays False)
            assert client.find_vm(vmid) is None  # the task runs, the VM is not written yet
            assert unanswered_clone_tasks(client, job) == [upid]
            # a clone task that started before the request (by more than the clock skew) is not its
            assert unanswered_clone_tasks(client, replace(job, requested_at=time.time() + 2 * CLOCK_SKEW)) == []
            c = CloneRun(index=0, job=job)
            verifier._destroy(c)
            client.wait_task(upid, 60)  # the lost request's task is over now, whatever cleanup did
            assert client.find_vm(vmid) is None, "the clone appeared after cleanup concluded it was never made"
            assert c.destroyed and client.task_status(upid)["exitstatus"] == "OK"  # it was made, then destroyed
        finally:
            end_clone_test(testbed, client, upid, vmid)


def test_cleanup_counts_a_clone_whose_task_failed_while_it_waited_as_destroyed(testbed, client):
    """The same cut clone request, but the clone task fails while cleanup waits for its lock: qemu-server
    removes the clone's config on its error path (Qemu.pm clone_vm: ``unlink $conffile; # avoid races
    -> last thing before die``), so the wait meets "does not exist". Nothing is left, so the clone is
    destroyed, not one to "remove by hand"."""
    from nixgold.verify.clones import CloneRun

    verifier = bed_verifier(testbed, client)
    job = marked_job(verifier, client, "failing-clone", requested=True)
    vmid = job.vmid
    with testbed.enter():
        testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=30)
        try:
            upid = client.clone("pve", TEMPLATE, vmid, name=job.name, description=job.description)
            wait_for_clone_lock(client, vmid)
            c = CloneRun(index=0, job=job)
            stopper = threading.Timer(2.0, lambda: client.delete(f"nodes/pve/tasks/{upid}"))  # the task fails
            stopper.start()
            verifier._destroy(c)
            stopper.join()
            assert c.destroyed and client.find_vm(vmid) is None
            assert client.task_status(upid)["exitstatus"] != "OK"  # it failed: nothing was there to destroy
        finally:
            testbed.sim_admin.clear_faults()
            remove_if_left(client, vmid)


def test_a_further_signal_during_cleanup_stops_the_wait_for_a_clone_task_and_names_the_clone(testbed, client):
    """Cleanup waits for a clone task that still runs (up to task_timeout: minutes for a full copy) before
    it can destroy the clone. A signal during cleanup (here a second one: the first interrupted the run)
    ends that wait at once instead of being only counted: the clone is left and the error says why and
    that the task may still create it; the verdict adds the `qm` commands (previous test)."""
    from nixgold.proxmox.vms import verify_marker
    from nixgold.signals import Cancel
    from nixgold.verify.clones import CloneRun

    cancel = Cancel()
    cancel.signal("SIGINT")  # the run was interrupted: cleanup runs
    verifier = Verifier(load_config(testbed.config_path, env={}), bed_creds(testbed), VerifyOptions(vmid=TEMPLATE),
                        progress=Progress(stream=io.StringIO()), out=io.StringIO(), client=client, cancel=cancel)
    said: list[str] = []
    verifier.say = said.append  # type: ignore[method-assign]
    job = marked_job(verifier, client, "slow-clone", requested=True)
    vmid = job.vmid
    with testbed.enter():
        testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=30)
        upid = None
        try:
            upid = client.clone("pve", TEMPLATE, vmid, name=job.name, description=job.description)
            wait_for_clone_lock(client, vmid)
            verifier.clones = [CloneRun(index=0, job=job)]  # its UPID never reached the job
            again = threading.Timer(2.0, lambda: cancel.signal("SIGINT"))
            again.start()
            t0 = time.monotonic()
            errors = verifier._cleanup()
            again.join()
            assert time.monotonic() - t0 < 15  # not the clone task's 30 s
            (error,) = errors
            assert error.startswith(f"could not destroy clone {vmid} (slow-clone): stopped waiting for the lock: "
                                    "clone on it (its clone task still runs) on a further signal: PVE may still "
                                    f"create VM {vmid}; once no task of it runs, remove it only if its description "
                                    f"carries '{verify_marker(verifier.run_id)}'") and f"qm destroy {vmid}" in error, error
            assert not verifier.clones[0].destroyed
            assert any("another signal (Ctrl-C) stops the wait and leaves the clone" in line for line in said), said
        finally:  # stop the 30 s clone task (it removes what it made) instead of waiting for it
            end_clone_test(testbed, client, upid, vmid, stop=True)


def test_an_unanswered_clone_request_whose_task_failed_counts_as_destroyed(testbed, client):
    """The lost request's task started late (slow_start) and then failed after it had taken its locks
    (its log: "creating a clone of VM <src> with ID <newid>", qemu-server clone_vm): PVE removed what it
    had made, so the clone counts as destroyed, not as left."""
    from nixgold.verify.clones import CloneRun

    verifier = bed_verifier(testbed, client)
    job = marked_job(verifier, client, "failed-unanswered", requested=True, requested_at=time.time())
    vmid = job.vmid
    with testbed.enter():
        testbed.sim_admin.slow_start("POST", "/nodes/*/qemu/*/clone", seconds=3)
        testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=30)
        upid = None
        try:
            upid = client.clone("pve", TEMPLATE, vmid, name=job.name, description=job.description)
            c = CloneRun(index=0, job=job)
            stopper = threading.Timer(6.0, lambda: client.delete(f"nodes/pve/tasks/{upid}"))  # the task fails
            stopper.start()
            verifier._destroy(c)
            stopper.join()
            assert client.task_status(upid)["exitstatus"] != "OK"
            assert c.destroyed and client.find_vm(vmid) is None
        finally:
            end_clone_test(testbed, client, upid, vmid)


def test_an_unanswered_clone_request_with_nothing_to_show_for_it_is_reported_not_counted_destroyed(testbed, client):
    """No answer to the clone request, and within the grace neither the VM nor a clone task of the source
    by this token shows up (PVE may fork the task only after its early checks): the outcome is unknown,
    so the clone is not counted destroyed; the error says so and what to check before removing it."""
    from nixgold.proxmox.vms import verify_marker
    from nixgold.verify.clones import CloneRun

    verifier = bed_verifier(testbed, client)
    verifier.unanswered_grace = 2.0
    job = marked_job(verifier, client, "never-seen", requested=True, requested_at=time.time())
    vmid = job.vmid
    verifier.clones = [CloneRun(index=0, job=job)]
    t0 = time.monotonic()
    (error,) = verifier._cleanup()
    assert 2.0 <= time.monotonic() - t0 < 30
    assert not verifier.clones[0].destroyed
    assert error.startswith(f"could not destroy clone {vmid} (never-seen): its clone request got no answer, and "
                            f"neither VM {vmid} nor a clone task of {TEMPLATE} by {client.authid} appeared within "), error
    assert f"remove it only if its description carries '{verify_marker(verifier.run_id)}'" in error, error


def test_an_interrupted_run_says_why_a_clone_was_not_destroyed_and_how_to_remove_it(testbed, client):
    """After a signal the verdict names the clones left and, under it, each cleanup error with its
    `qm` commands (they were dropped before: "clones NOT destroyed: 100" and nothing else)."""
    from nixgold.errors import Interrupted
    from nixgold.proxmox.vms import CloneJob
    from nixgold.verify.clones import CloneRun
    from nixgold.verify.report import VerifyReport

    verifier = bed_verifier(testbed, client)
    verifier.clones = [CloneRun(index=0, job=CloneJob(node="pve", source=TEMPLATE, name="left", vmid=100,
                                                      requested=True, done=True))]
    error = ("could not destroy clone 100 (left): task UPID:pve:1:2:3:qmdestroy:100:x: failed: VM 100 is running"
             " - destroy failed\n  remove it by hand: qm stop 100; qm destroy 100 --purge 1 --destroy-unreferenced-disks 1")
    report = VerifyReport(template={}, profile="generic", clone_mode="linked", started_at="now")
    out = verifier._verdict(report, Interrupted("SIGINT"), [error])  # no signal counted: named SIGINT
    assert isinstance(out, Interrupted) and report.exit_code == ExitCode.INTERRUPTED
    assert report.error.startswith("interrupted by SIGINT; clones NOT destroyed: 100\n")
    assert report.error.endswith(error) and str(out) == report.error
