"""`invoke refresh` / `rollback` / `templates` as a nightly job runs them: real invoke processes in the
test bed's namespace, real verify (QEMU/TCG guests), archive, swap and retention against the PVE
simulator. The BUILD phase is the documented test seam (``tests/testbed/refresh_producer.py``: a
stand-in image imported as the candidate in seconds); the one real Packer refresh is
``tests/test_refresh_packer_e2e.py``.

The template is ``TEMPLATE`` (ids of its own: the session's test bed keeps 9004 for other tests).
It starts *seeded*: the ``good`` stand-in imported there with the promoted record a first refresh
writes (and an older archive), so the scenarios start from a promoted template without spending a
verify on it. Verifies are the cost here (two minutes each under TCG), so the fault scenarios are
one story whose steps leave the state the next one starts from, and every verified candidate is
used for as many crash points as it can be.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nixgold.errors import ExitCode
from tests.helpers.background import BackgroundRun
from tests.testbed.refresh_producer import seed_candidate, seed_promoted

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = 9400
NAME = "refresh-e2e"
LOCK = 9401
STAGING = range(9402, 9405)
ARCHIVES = range(9405, 9410)
CONSUMER = 9411  # a linked clone a consumer made of the template
OURS = {TEMPLATE, LOCK, *STAGING, *ARCHIVES}
SEED_BUILD = "seed-good-0001"
OLD_BUILD = "seed-good-0000"
TZ_1 = 'timezone = "Europe/Berlin"'  # the seeded template was "built" from this
TZ_2 = 'timezone = "Asia/Tokyo"'  # the failing candidate's inputs
TZ_3 = 'timezone = "America/Lima"'  # the fault story's inputs
TZ_4 = 'timezone = "Africa/Nairobi"'  # the seeded candidate's inputs (a promotion killed while archiving)


class Story:
    """The test bed, this module's config and how to run nixgold against it."""

    def __init__(self, bed: Any, root: Path):
        self.bed = bed
        self.root = root
        self.config = root / "nixgold.toml"
        self.write_config(TZ_1)
        with bed.enter():
            self.foreign = {int(v["vmid"]) for v in bed.all_vms()}  # the session's VMs: never touched

    def write_config(self, nixos: str = "", extra: str = "") -> None:
        bed = self.bed
        self.config.write_text(f"""
[proxmox]
node = "{bed.node}"
url = "{bed.url}"
[template]
vmid = {TEMPLATE}
name = "{NAME}"
tags = ["golden", "e2e"]
[vm]
firmware = "bios"
storage = "{bed.storage}"
disk_format = "qcow2"
disk_size = "8G"
bridge = "{bed.bridge}"
memory = 1024
cores = 1
[nixos]
{nixos}
[build]
dialect = "bundled"
output_dir = "{self.root / 'build'}"
[verify]
profile = "generic"
clones = 1
agent_timeout = "8m"
ssh_timeout = "4m"
[refresh]
lock_vmid = {LOCK}
staging_vmids = "{STAGING.start}-{STAGING.stop - 1}"
archive_vmids = "{ARCHIVES.start}-{ARCHIVES.stop - 1}"
keep = 1
{extra}
""")

    def digest(self, nixos: str) -> str:
        """The input digest `invoke refresh` computes for the config with these [nixos] lines."""
        from nixgold.config.load import load_config
        from nixgold.refresh.digest import input_digest

        saved = self.config.read_text()
        try:
            self.write_config(nixos)
            return input_digest(load_config(self.config, env={}), env={}).sha256
        finally:
            self.config.write_text(saved)

    def env(self, variant: str = "good", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA", "PKR_VAR_", "PACKER_"))}
        env.update(self.bed.env())
        env.pop("REQUESTS_CA_BUNDLE", None)
        env.update(NIXGOLD_CONFIG=str(self.config), NIXGOLD_REFRESH_PRODUCER="tests.testbed.refresh_producer:standin",
                   NIXGOLD_TESTBED_ROOT=str(self.bed.root), NIXGOLD_TESTBED_NETNS=self.bed.netns,
                   NIXGOLD_STANDIN_VARIANT=variant, **extra)
        return env

    def argv(self, *args: str) -> list[str]:
        invoke = REPO / ".venv" / "bin" / "invoke"
        cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
        return ["ip", "netns", "exec", self.bed.netns, *cmd, "-r", str(REPO), *args]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        result = subprocess.run(self.argv(*args), env=env or self.env(), cwd=self.root, capture_output=True,
                                text=True, timeout=timeout)
        result.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        print(f"--- invoke {' '.join(args)}: exit {result.returncode} in {result.seconds:.1f}s\n{result.stdout[-1500:]}")
        return result

    def start(self, *args: str, env: dict[str, str] | None = None) -> BackgroundRun:
        return BackgroundRun(self.argv(*args), env or self.env(), self.root)

    def kill_at(self, run: BackgroundRun, pattern: str, sig: signal.Signals = signal.SIGKILL, after: float = 0.0,
                timeout: float = 600) -> int:
        try:
            run.wait_for(pattern, timeout=timeout)
            time.sleep(after)
            run.proc.send_signal(sig)
            rc = run.finish(timeout=600)
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
        print(f"--- {sig.name} at {pattern!r}: exit {rc}\n{run.err[-2500:]}")
        return rc

    # -- the cluster ---------------------------------------------------------------------------
    def fault(self, action: str, path: str, **kw: Any) -> None:
        with self.bed.enter():
            self.bed.sim_admin.add_fault(action, path, **kw)

    def clear_faults(self) -> None:
        with self.bed.enter():
            self.bed.sim_admin.clear_faults()

    def vms(self) -> dict[int, dict[str, Any]]:
        """Every VM that is not the session's, by vmid, with its config (counted through the API)."""
        with self.bed.enter():
            prox = self.bed.proxmoxer()
            out = {}
            for res in self.bed.all_vms():
                vmid = int(res["vmid"])
                if vmid in self.foreign:
                    continue
                try:
                    out[vmid] = prox.nodes(self.bed.node).qemu(vmid).config.get()
                except Exception:  # gone meanwhile
                    continue
            return out

    @staticmethod
    def record(cfg: dict[str, Any]) -> dict[str, Any]:
        try:
            return json.loads(cfg.get("description") or "{}").get("refresh") or {}
        except ValueError:
            return {}

    def template(self) -> dict[str, Any]:
        return self.vms()[TEMPLATE]

    def settled(self, what: str, *, candidates: int = 0, extra: set[int] = frozenset()) -> dict[int, dict[str, Any]]:
        """No VM is orphaned: only the template, archives, ``candidates`` staged candidates and ``extra``;
        the template is a protected, promoted, verified template."""
        vms = self.vms()
        roles = {vmid: self.record(cfg).get("role") for vmid, cfg in vms.items()
                 if self.record(cfg).get("vmid") == vmid}  # a clone carries a copy of its source's record
        staged = [v for v, r in roles.items() if r == "candidate"]
        others = set(vms) - {TEMPLATE} - {v for v, r in roles.items() if r == "archive"} - set(staged) - set(extra)
        assert others == set(), f"{what}: orphans {sorted(others)}: {roles}"
        assert len(staged) == candidates, f"{what}: candidates {staged}"
        assert all(v in OURS or v in extra for v in vms), f"{what}: {sorted(vms)}"
        t = vms[TEMPLATE]
        rec = self.record(t)
        assert t.get("template") == 1 and t.get("protection") == 1 and t["name"] == NAME, (what, t)
        assert rec.get("role") == "promoted" and rec.get("step") == "done", (what, rec)
        assert rec.get("verification", {}).get("outcome") == "passed", (what, rec)
        assert set(t["tags"].split(";")) == {"golden", "e2e", "nixgold"}, (what, t["tags"])
        return vms

    def archives(self) -> list[int]:
        return sorted(v for v, cfg in self.vms().items() if v in OURS and self.record(cfg).get("role") == "archive")

    def remove(self, vmid: int) -> None:
        """Remove a VM as its owner would: a clone of the protected template is protected too (PVE copies
        the flag into clones), so first `qm set --protection 0`."""
        with self.bed.enter():
            qemu = self.bed.root_api().nodes(self.bed.node).qemu(vmid)
            if qemu.config.get().get("protection"):
                qemu.config.put(delete="protection")
            self.bed.destroy_vm(vmid)

    def linked_clone(self) -> None:
        with self.bed.enter():
            prox = self.bed.root_api()
            node = prox.nodes(self.bed.node)
            self.bed._wait(prox, node.qemu(TEMPLATE).clone.post(newid=CONSUMER, name="consumer-linked", full=0))


@pytest.fixture(scope="module")
def story(testbed, tmp_path_factory) -> Any:
    s = Story(testbed, tmp_path_factory.mktemp("refresh"))
    seed_promoted(testbed, TEMPLATE, NAME, build_id=SEED_BUILD, tags="e2e;golden;nixgold",
                  archive=(ARCHIVES.start, OLD_BUILD), digest=s.digest(TZ_1))
    yield s
    s.clear_faults()
    for vmid in sorted(set(s.vms()) - s.foreign, reverse=True):  # the consumer's clone first
        s.remove(vmid)


def exit_of(result: subprocess.CompletedProcess, code: int) -> None:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# ------------------------------------------------------------------------------------------------
def test_a_rollback_after_a_promotion_killed_while_archiving_keeps_the_template(story):
    """A refresh SIGKILLed while it copies the promoted template into its archive never touched the
    template: `invoke rollback` then undoes that promotion (the half copy and the candidate removed, the
    template the same VM, build and protection) and the cluster is as before. The candidate is seeded
    as verified (its inputs TZ_4), so no verify is spent here. Whatever happens, the story goes on from
    the seeded state (the fault story after it counts on that)."""
    before = story.template()
    try:
        story.write_config(TZ_4)
        seed_candidate(story.bed, STAGING.start, TEMPLATE, NAME, build_id="seed-cand-0001",
                       digest=story.digest(TZ_4))
        story.fault("slow_task", f"/nodes/*/qemu/{TEMPLATE}/clone", method="POST", nth=1, seconds=20)
        arch = story.start("refresh")
        rc = story.kill_at(arch, rf"archiving .* as ({ARCHIVES.start + 1}) \(a full copy\)", after=3)
        story.clear_faults()
        assert rc == -signal.SIGKILL
        assert f"using candidate {STAGING.start}" in arch.err and "same inputs, no build" in arch.err, arch.err
        assert "verify:" not in arch.err, arch.err  # the seeded record passed as verified
        half = story.vms()
        promotion = story.record(half[STAGING.start]).get("promotion") or {}
        assert (promotion.get("step"), promotion.get("archive_vmid")) == ("archiving", ARCHIVES.start + 1), promotion
        assert half[ARCHIVES.start + 1].get("lock") == "clone", half[ARCHIVES.start + 1]  # the copy still under way
        assert half[TEMPLATE]["protection"] == 1 and half[TEMPLATE]["description"] == before["description"]

        back = story.run("rollback")
        exit_of(back, 0)
        assert f"undid the promotion of {STAGING.start}: {TEMPLATE} is still build {SEED_BUILD}" in back.stdout, \
            back.stdout
        after = story.settled("rollback after a promotion killed while archiving")
        assert set(after) == {TEMPLATE, ARCHIVES.start}, sorted(after)  # the seeded archive; no half copy/candidate
        assert after[TEMPLATE]["digest"] == before["digest"] and after[TEMPLATE]["description"] == before["description"]
    finally:
        story.clear_faults()
        story.write_config(TZ_1)
        deadline = time.monotonic() + 120
        while leftovers := sorted(set(story.vms()) - {TEMPLATE, ARCHIVES.start}):
            try:
                for vmid in leftovers:
                    story.remove(vmid)
            except Exception:  # noqa: BLE001 - a copy still under way holds its lock
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)


def test_faults_at_every_phase_boundary_then_the_next_run_converges(story):
    """Build, verify, archive, swap, retention: SIGKILL, SIGTERM and simulator faults (500, lock timeout,
    task failure) at each, then the next run finishes or undoes it; two refreshes at once; linked clones
    with on_linked_clones = fail; a crash in the swap repaired by `invoke rollback` and by `invoke refresh`;
    the no-op after it all."""
    story.write_config(TZ_3)
    seeded = story.template()
    assert story.record(seeded)["input_digest"] == story.digest(TZ_1) != story.digest(TZ_3)

    # 1. two refreshes at once: the first holds the lock (building, slowly), a second on this machine
    #    and a third "from another machine" (its own build dir: another local lock file) exit 7
    slow = story.env(NIXGOLD_STANDIN_IMPORT_DELAY="60")
    first = story.start("refresh", env=slow)
    first.wait_for(r"build \(test seam\): VM \d+ created; waiting", timeout=300)
    second = story.run("refresh")
    exit_of(second, ExitCode.LOCKED)
    assert "another refresh of template 9400 runs on this machine" in second.stderr
    other = story.run("refresh", "--set", f"build.output_dir={story.root / 'elsewhere'}")
    exit_of(other, ExitCode.LOCKED)
    assert re.search(rf"refresh \S+ of template {TEMPLATE} holds the lock \(VM {LOCK}\): \S+ pid {first.proc.pid},",
                     other.stderr), other.stderr
    assert len([v for v in story.vms() if v in STAGING]) == 1  # nothing built twice
    # 2. SIGKILL during the build: a build VM and a stale marker are left
    assert story.kill_at(first, r"waiting \d+s before converting", after=1) == -signal.SIGKILL
    assert {LOCK, STAGING.start} <= set(story.vms())

    # 3. the next run takes the marker over, removes the build VM; its build fails (500 on create): exit 4
    story.fault("fail", "/nodes/*/qemu", method="POST", nth=2, message="simulated create failure")
    failed = story.run("refresh")
    story.clear_faults()
    exit_of(failed, ExitCode.BUILD)
    assert "taking over the lock marker of refresh" in failed.stderr and "is gone" in failed.stderr
    assert "the build VM of a stopped run" in failed.stderr and "simulated create failure" in failed.stdout
    story.settled("build failed")

    # 4. the verify's clone gets a 500: infrastructure (6); the built candidate stays staged
    story.fault("fail", "^/nodes/[^/]+/qemu/940[234]/clone$", method="POST", message="simulated clone failure")
    infra = story.run("refresh")
    story.clear_faults()
    exit_of(infra, ExitCode.INFRA)
    assert "stays staged (not verified)" in infra.stderr
    story.settled("verify infra error", candidates=1)

    # 5. SIGTERM while the clone boots: verify cleans up, the candidate stays, exit 130
    term = story.start("refresh")
    assert story.kill_at(term, r"-verify-1: \w+ clone ready in", signal.SIGTERM, after=3) == ExitCode.INTERRUPTED
    assert "using candidate" in term.err and "destroying 1 clone" in term.err
    story.settled("SIGTERM in verify", candidates=1)

    # 6. SIGKILL while the clone boots: the verify clone is left (and the marker)
    kill = story.start("refresh")
    story.kill_at(kill, r"-verify-1: \w+ clone ready in", after=3)
    left = story.vms()
    assert LOCK in left and any(cfg.get("name", "").endswith("-verify-1") for cfg in left.values()), sorted(left)

    # 7. a consumer's linked clone pins the template: verified, not promoted (8); nothing destroyed
    story.linked_clone()
    pinned = story.run("refresh")
    exit_of(pinned, ExitCode.NOT_PROMOTED)
    assert "a verify clone of" in pinned.stderr  # the killed verify's clone was removed first
    assert f"linked clone ({CONSUMER})" in pinned.stdout or f"({CONSUMER})" in pinned.stdout
    vms = story.settled("linked clone", candidates=1, extra={CONSUMER})
    candidate = next(v for v, cfg in vms.items() if v in STAGING and story.record(cfg).get("role") == "candidate")
    assert story.record(vms[candidate])["step"] == "verified" and vms[TEMPLATE]["digest"] == seeded["digest"]
    story.remove(CONSUMER)

    # 8. archive: a lock timeout (retried), then SIGKILL during the slow second copy
    story.fault("clone_lock_timeout", f"/nodes/*/qemu/{TEMPLATE}/clone", nth=1)
    story.fault("slow_task", f"/nodes/*/qemu/{TEMPLATE}/clone", method="POST", nth=2, seconds=20)
    arch = story.start("refresh")
    story.kill_at(arch, r"copying 9400 to \d+ failed .*lock.*retrying", after=3)
    story.clear_faults()
    assert "same inputs, no build" in arch.err and "verify:" not in arch.err

    # 9. the next run finishes the archive (its half copy redone), then the swap: a failed copy task
    #    (retried), then SIGKILL during the slow second copy: the old template is gone, the new not in place
    story.fault("task_error", f"/nodes/*/qemu/{candidate}/clone", method="POST", nth=1, message="simulated task failure")
    story.fault("slow_task", f"/nodes/*/qemu/{candidate}/clone", method="POST", nth=2, seconds=20)
    swap = story.start("refresh")
    story.kill_at(swap, rf"copying {candidate} to {TEMPLATE} failed .*simulated task failure.*retrying", after=3)
    story.clear_faults()
    assert "finishing the promotion of candidate" in swap.err and "swap: removing the protection" in swap.err
    assert TEMPLATE not in story.vms() or story.record(story.vms()[TEMPLATE]).get("role") != "promoted" \
        or story.record(story.vms()[TEMPLATE]).get("step") != "done"

    # 10. `invoke rollback` repairs it by undoing the promotion: the old template back from its archive
    back = story.run("rollback")
    exit_of(back, 0)
    assert "the half-done promotion of candidate" in back.stdout
    vms = story.settled("rolled back")
    assert story.record(vms[TEMPLATE]).get("rolled_back_from", {}).get("build_id") and \
        "seed-good-0001" == json.loads(vms[TEMPLATE]["description"])["build_id"]
    # 11. the same inputs are held back now; --force builds them (verify), SIGKILL during that swap
    held = story.run("refresh")
    exit_of(held, ExitCode.UP_TO_DATE)
    assert "were rolled back" in held.stdout
    story.fault("slow_task", "^/nodes/[^/]+/qemu/940[234]/clone$", method="POST", nth=2, seconds=20)
    forced = story.start("refresh", "--force")
    story.kill_at(forced, rf"swap: copying candidate \d+ .* to {TEMPLATE}", after=3)
    story.clear_faults()
    # 12. ... the next refresh repairs it by finishing: promoted; retention then fails (task error)
    story.fault("task_error", f"/nodes/*/qemu/{ARCHIVES.start}", method="DELETE", times=0,
                message="simulated destroy failure")
    fin = story.run("refresh")
    story.clear_faults()
    exit_of(fin, ExitCode.INFRA)
    assert "finished the promotion of" in fin.stdout and "simulated destroy failure" in fin.stdout
    # 13. ... and the run after that applies retention: keep = 1
    tidy = story.run("refresh")
    exit_of(tidy, ExitCode.UP_TO_DATE)
    assert f"deleted {ARCHIVES.start}" in tidy.stdout
    vms = story.settled("converged")
    assert len(story.archives()) == 1
    assert story.record(vms[TEMPLATE])["replaced"]["build_id"] == SEED_BUILD
    # 14. unchanged inputs: a no-op, fast, with no lock taken
    noop = story.run("refresh")
    exit_of(noop, ExitCode.UP_TO_DATE)
    # no lock taken, nothing built (how fast it is: benchmarks/refresh.py, goal < 5 s)
    assert "lock:" not in noop.stderr and "verify:" not in noop.stderr, noop.stderr
    print(f"no-op refresh: {noop.seconds:.1f} s")


def test_a_candidate_that_fails_verification_is_removed_and_the_template_kept(story):
    """The agent-off stand-in (its guest agent never answers) as the build: exit 5, the candidate gone,
    the promoted template the same VM with the same build, nothing left besides the archives."""
    story.write_config(TZ_2)
    before = story.template()
    result = story.run("refresh", "--set", "verify.agent_timeout=20s", env=story.env(variant="agent-off"))
    exit_of(result, ExitCode.VERIFY)
    assert re.search(r"boot\.agent\s+\S+\s+FAILED", result.stdout) and "failed verification" in result.stdout
    after = story.settled("verification failed")
    assert after[TEMPLATE]["digest"] == before["digest"] and after[TEMPLATE]["description"] == before["description"]


def test_rollback_restores_the_previous_template_and_it_verifies(story):
    """`invoke rollback` killed in its swap is finished by the next `invoke rollback`; the refresh then
    holds those inputs back; linked clones make a rollback fail (8) or rename in place; `invoke templates`
    shows it all; the rolled-back template passes `invoke verify`."""
    current = json.loads(story.template()["description"])["build_id"]
    (archive,) = story.archives()
    restored_build = json.loads(story.vms()[archive]["description"])["build_id"]
    story.fault("slow_task", f"/nodes/*/qemu/{archive}/clone", method="POST", seconds=20)
    killed = story.start("rollback")
    story.kill_at(killed, rf"swap: copying archive {archive}", after=3)
    story.clear_faults()
    again = story.run("rollback")
    exit_of(again, 0)
    assert "finished the rollback a stopped run had started" in again.stdout
    vms = story.settled("rolled back")
    assert json.loads(vms[TEMPLATE]["description"])["build_id"] == restored_build
    before = story.record(vms[TEMPLATE])["rolled_back_from"]["input_digest"]
    story.write_config(next(tz for tz in (TZ_1, TZ_3) if story.digest(tz) == before))  # the inputs rolled back
    held = story.run("refresh")
    exit_of(held, ExitCode.UP_TO_DATE)
    assert "were rolled back" in held.stdout

    story.linked_clone()
    refused = story.run("rollback")
    exit_of(refused, ExitCode.NOT_PROMOTED)
    by_name = story.run("rollback", "--set", "refresh.on_linked_clones=promote-by-name")
    exit_of(by_name, 0)
    vms = story.vms()  # (the consumer's linked clone has a copy of the template's record: not ours, not counted)
    (promoted,) = [v for v, cfg in vms.items() if v in OURS and story.record(cfg).get("role") == "promoted"]
    assert promoted != TEMPLATE and vms[promoted]["name"] == NAME and vms[promoted]["protection"] == 1
    assert json.loads(vms[promoted]["description"])["build_id"] == current
    assert story.record(vms[TEMPLATE])["role"] == "archive" and CONSUMER in vms  # pinned: renamed, kept
    listing = story.run("templates")
    exit_of(listing, 0)
    assert re.search(rf"^promoted\s+{promoted}\s+{NAME}\s", listing.stdout, re.M)
    assert re.search(rf"^archive\s+{TEMPLATE}\s+\S+\s.*\s1\s+no\s+archived$", listing.stdout, re.M), listing.stdout
    verify = story.run("verify", "--name", NAME, "--profile", "generic", timeout=1200)
    exit_of(verify, 0)
    assert re.search(r"checks: \d+ passed, 0 failed", verify.stdout)


def test_update_lock_pins_the_iso_before_deciding(story):
    """--update-lock runs `invoke lock` under the refresh's lock before the digest is taken, also when the
    template is up to date: here the channel mirror is unreachable, so the run says so (2) and the lock
    marker is gone again."""
    env = story.env(NIXGOLD_CHANNELS_URL="https://127.0.0.1:9")
    result = story.run("refresh", "--update-lock", env=env)
    exit_of(result, ExitCode.CONFIG)
    assert "--update-lock: pinning the channel's newest ISO" in result.stderr
    assert "cannot resolve nixos-" in result.stdout and LOCK not in story.vms()
