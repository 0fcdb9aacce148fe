"""The nightly refresh's pure parts: [refresh] config, the input digest, the ownership kinds, linked
clones, retention, the swap plan and its pre-check, the lock's staleness rule, the report and exit codes."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixgold.config.load import parse_config
from nixgold.config.model import Config, vmid_range
from nixgold.errors import ConfigError, ExitCode, NotPromoted
from nixgold.proxmox.vms import LINKED_BASE_RE, Owner, build_vm_name, linked_clone_map, owner_of, verify_marker
from nixgold.refresh.digest import image_config, input_digest
from nixgold.refresh.lock import ClusterLock
from nixgold.refresh.report import OUTCOME_CODES, Phase, RefreshResult, summary_lines
from nixgold.refresh.retention import plan_retention
from nixgold.refresh.state import View, VmState, candidate_name, dump_description
from nixgold.refresh.swap import SwapContext, copy_problems, plan_promotion

REPO = Path(__file__).resolve().parents[1]
ARCHIVES = "9010-9014"


def config(**sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {"build": {"dialect": "bundled"}, "vm": {"firmware": "bios"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


def manifest(build_id: str, **record: Any) -> str:
    data: dict[str, Any] = {"nixgold_manifest": 1, "nixgold_version": "0.1.0", "config_sha256": "0" * 64,
                            "nixos_release": "26.05", "template_vmid": 9004, "template_name": "nixos-golden",
                            "dialect": "bundled", "firmware": "bios", "build_id": build_id}
    if record:
        data["refresh"] = record
    return json.dumps(data)


def vm(vmid: int, build_id: str = "b", *, template: bool = True, protection: bool = False, **record: Any) -> VmState:
    if record:
        record.setdefault("vmid", vmid)
    cfg: dict[str, Any] = {"name": f"vm-{vmid}", "description": manifest(build_id, **record),
                           "scsi0": f"local:{vmid}/base-{vmid}-disk-0.qcow2,size=2G"}
    if template:
        cfg["template"] = 1
    if protection:
        cfg["protection"] = 1
    return VmState(vmid, "pve", cfg)


# --- config -------------------------------------------------------------------------------------
def test_refresh_defaults_are_valid_and_ranges_parse():
    c = Config()
    assert (c.refresh.lock_vmid, list(c.refresh.staging), c.refresh.keep) == (9005, [9006, 9007, 9008, 9009], 3)
    assert len(c.refresh.archives) == 20 and c.refresh.on_linked_clones == "fail"
    assert list(vmid_range("9006")) == [9006]
    with pytest.raises(ValueError):
        vmid_range("9006-")


@pytest.mark.parametrize("values, key, expected", [
    ({"staging_vmids": "9000-9010"}, "refresh.staging_vmids", "do not overlap template.vmid"),
    ({"lock_vmid": 9007}, "refresh.staging_vmids", "do not overlap refresh.lock_vmid"),
    ({"archive_vmids": "9008-9020"}, "refresh.archive_vmids", "do not overlap refresh.staging_vmids"),
    ({"archive_vmids": "9010-9012", "keep": 3}, "refresh.archive_vmids", "at least refresh.keep + 1 = 4 ids"),
    ({"staging_vmids": "x"}, "refresh.staging_vmids", "a vmid"),
    ({"staging_vmids": "9009-9006"}, "refresh.staging_vmids", "FIRST <= LAST"),
    ({"keep": 0}, "refresh.keep", "between 1 and 100"),
    ({"on_linked_clones": "destroy"}, "refresh.on_linked_clones", "fail or promote-by-name"),
    ({"lock_timeout": "30m"}, "refresh.lock_timeout", "longer than build.ssh_timeout + build.task_timeout (60 min)"),
])
def test_bad_refresh_settings_name_the_key(values, key, expected):
    with pytest.raises(ConfigError) as info:
        parse_config({"refresh": values})
    assert any(i.key == key and expected in i.expected for i in info.value.issues), info.value


# --- digest -------------------------------------------------------------------------------------
@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_digest_ignores_how_nixgold_connects_builds_checks_and_refreshes(here):
    base = input_digest(config(), env={})
    same = config(proxmox={"url": "https://other:8006/api2/json", "timeout": 60}, verify={"clones": 1},
                  build={"ssh_timeout": "20m", "output_dir": "elsewhere", "status_port": 0},
                  refresh={"keep": 5, "on_linked_clones": "promote-by-name"})
    assert input_digest(same, env={}).sha256 == base.sha256 == input_digest(config(), env={}).sha256
    assert image_config(same).refresh == image_config(config()).refresh


@pytest.mark.parametrize("change", [{"nixos": {"timezone": "Europe/Berlin"}}, {"template": {"name": "other"}},
                                    {"vm": {"disk_size": "30G"}}, {"proxmox": {"node": "pve2"}}])
def test_the_digest_follows_what_is_built(here, change):
    assert input_digest(config(**change), env={}).sha256 != input_digest(config(), env={}).sha256


def test_the_digest_follows_the_lock_file_and_the_overlay(here):
    c = dataclasses.replace(config(), source=str(here / "nixgold.toml"))
    before = input_digest(c, env={})
    from nixgold.lock import IsoLock, write_lock

    url = "https://releases.nixos.org/nixos/26.05/nixos-26.05.1.abc/nixos-minimal-26.05.1.abc-x86_64-linux.iso"
    write_lock(here / "nixgold.lock", IsoLock("nixos-26.05", "https://channels.nixos.org/x.iso", url, "a" * 64,
                                              url.rsplit("/", 1)[1], "2026-12-01T00:00:00Z"))
    with_lock = input_digest(c, env={})
    assert with_lock.sha256 != before.sha256 and with_lock.parts["lock_sha256"]
    overlay = here / "overlay" / "http"
    overlay.mkdir(parents=True)
    (overlay / "install.sh").write_text("echo stand-in\n")
    one = input_digest(c, env={"NIXGOLD_RENDER_OVERLAY": str(here / "overlay")})
    (overlay / "install.sh").write_text("echo stand-in 2\n")
    two = input_digest(c, env={"NIXGOLD_RENDER_OVERLAY": str(here / "overlay")})
    assert len({with_lock.sha256, one.sha256, two.sha256}) == 3
    assert one.parts["files"]["http/install.sh"].startswith("overlay:")


# --- ownership ----------------------------------------------------------------------------------
def test_owner_of_knows_the_refresh_kinds_and_keeps_the_others():
    assert owner_of({"description": manifest("B1", role="candidate", id="R1")}) == Owner("candidate", "r1")
    assert owner_of({"description": manifest("B1", role="archive", id="R2")}) == Owner("archive", "r2")
    assert owner_of({"description": manifest("B1", role="promoted", id="R3")}) == Owner("build", "b1")
    assert owner_of({"description": json.dumps({"nixgold_refresh_lock": 1, "id": "R4"})}) == Owner("refresh-lock", "r4")
    assert owner_of({"description": json.dumps({"nixgold_refresh_lock": 2, "id": "R4"})}) is None
    assert owner_of({"name": build_vm_name("x", "20261201T010203Z-abcdef")}) == Owner("build", "20261201t010203z-abcdef")
    assert owner_of({"description": f"... {verify_marker('0123456789ab')} ..."}) == Owner("verify", "0123456789ab")
    assert owner_of({"description": "a VM someone made"}) is None
    # PVE copies descriptions into clones: a record names the vmid it was written for
    ours = {"description": manifest("B1", role="archive", id="R2", vmid=9010)}
    assert owner_of(ours, vmid=9010) == Owner("archive", "r2") and owner_of(ours, vmid=9411) is None
    assert VmState(9411, "pve", ours).role is None and VmState(9010, "pve", ours).role == "archive"


def test_linked_clones_are_found_for_directory_and_block_storages():
    assert LINKED_BASE_RE.findall("local:9004/base-9004-disk-0.qcow2/101/vm-101-disk-0.qcow2") == ["9004"]
    assert LINKED_BASE_RE.findall("local-lvm:base-9004-disk-1/vm-102-disk-1") == ["9004"]
    assert LINKED_BASE_RE.findall("local:9004/base-9004-disk-0.qcow2") == []  # the template's own disk

    class Fake:
        configs = {101: {"scsi0": "local:9004/base-9004-disk-0.qcow2/101/vm-101-disk-0.qcow2,size=2G"},
                   102: {"virtio0": "local-lvm:base-9004-disk-0/vm-102-disk-0", "unused0": "x"},
                   9004: {"scsi0": "local:9004/base-9004-disk-0.qcow2,size=2G", "template": 1},
                   103: {"scsi0": "local:103/vm-103-disk-0.qcow2"}}

        def vm_resources(self):
            return [{"vmid": v, "node": "pve"} for v in self.configs]

        def vm_config(self, node, vmid):
            return self.configs[vmid]

    assert linked_clone_map(Fake()) == {9004: [101, 102]}  # type: ignore[arg-type]


# --- state --------------------------------------------------------------------------------------
def test_records_read_back_and_update_without_losing_the_manifest():
    c = vm(9006, "R1", role="candidate", id="R1", of=9004, step="built", input_digest="d1")
    assert (c.role, c.step, c.refresh_id, c.digest, c.verified, c.promotion) == ("candidate", "built", "r1", "d1",
                                                                                   False, None)
    updated = json.loads(c.description_with(step="verified", verification={"outcome": "passed"}, input_digest=None))
    assert updated["build_id"] == "R1" and updated["refresh"]["step"] == "verified"
    assert "input_digest" not in updated["refresh"] and updated["refresh"]["verification"]["outcome"] == "passed"
    with pytest.raises(Exception, match="too long"):
        dump_description({"x": "y" * 9000})
    assert len(candidate_name("n" * 40, "20261201T010203Z-abcdef")) <= 63


def test_the_view_finds_the_promoted_template_free_ids_and_the_promotion_in_flight():
    c = config(refresh={"archive_vmids": ARCHIVES})
    view = View(c, vms={9004: vm(9004, "B0", protection=True)}, taken={9004, 9010, 9011})
    assert view.promoted is view.vms[9004]  # a nixgold template there, even without a refresh record
    assert view.free(c.refresh.archives) == 9012
    by_name = vm(9007, "B2", role="promoted", id="R2", of=9004, step="done", promoted_at="2026-12-01T00:00:00Z")
    view = View(c, vms={9004: vm(9004, "B0", role="archive", id="R2", of=9004, step="archived"), 9007: by_name})
    assert view.promoted is by_name and [a.vmid for a in view.archives] == [9004]
    moving = vm(9006, "B3", role="candidate", id="R3", of=9004, step="verified",
                promotion={"step": "swapping", "target": 9004, "by": "r3"})
    assert View(c, vms={9006: moving}).in_flight is moving


# --- swap ---------------------------------------------------------------------------------------
def swap_context(**refresh: Any) -> SwapContext:
    return SwapContext(client=None, config=config(refresh={"archive_vmids": ARCHIVES, **refresh}),  # type: ignore[arg-type]
                       refresh_id="R9", say=lambda s: None, task_timeout=60)


def test_the_plan_archives_the_promoted_template_into_the_first_free_archive_id():
    ctx = swap_context()
    candidate = vm(9006, "R9", role="candidate", id="R9", of=9004, step="verified")
    view = View(ctx.config, vms={9004: vm(9004, "B0", protection=True), 9006: candidate}, taken={9004, 9006, 9010})
    plan = plan_promotion(ctx, view, candidate, pins={})
    assert (plan["mode"], plan["step"], plan["archive_vmid"], plan["old"]["build_id"]) == ("swap", "archiving", 9011, "B0")
    empty = View(ctx.config, vms={9006: candidate}, taken={9006})
    first = plan_promotion(ctx, empty, candidate, pins={})
    assert first["old"] is None and "archive_vmid" not in first


def test_linked_clones_fail_the_promotion_or_rename_in_place():
    candidate = vm(9006, "R9", role="candidate", id="R9", of=9004, step="verified")
    ctx = swap_context()
    view = View(ctx.config, vms={9004: vm(9004, "B0", protection=True), 9006: candidate}, taken={9004, 9006})
    with pytest.raises(NotPromoted) as info:
        plan_promotion(ctx, view, candidate, pins={9004: [120, 121]})
    text = str(info.value)
    assert "2 linked clones (120, 121)" in text and "stays staged as candidate 9006" in text
    assert "promote-by-name" in text and info.value.exit_code == ExitCode.NOT_PROMOTED
    by_name = plan_promotion(swap_context(on_linked_clones="promote-by-name"), view, candidate, pins={9004: [120]})
    assert by_name["mode"] == "by-name" and "archive_vmid" not in by_name


def test_the_pre_check_ignores_what_a_copy_changes_and_names_the_rest():
    source = {"name": "c", "template": 1, "scsi0": "local:9006/base-9006-disk-0.qcow2,size=2G",
              "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0", "serial0": "socket", "agent": "1", "digest": "a",
              "description": "x", "smbios1": "uuid=1", "ide2": "local:9006/vm-9006-cloudinit.qcow2,media=cdrom"}
    copy = {**source, "name": "golden", "scsi0": "local:9004/base-9004-disk-0.qcow2,size=2G", "protection": 1,
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0", "digest": "b", "smbios1": "uuid=2",
            "ide2": "local:9004/vm-9004-cloudinit.qcow2,media=cdrom"}
    assert copy_problems(source, copy) == []
    assert copy_problems(source, {**copy, "serial0": None, "template": 0}) == ["serial0: 'socket' -> None",
                                                                               "not a template"]


# --- retention ----------------------------------------------------------------------------------
def archive(vmid: int, at: str, *, verified: bool = True, protection: bool = False) -> VmState:
    return vm(vmid, f"B{vmid}", protection=protection, role="archive", id="R", of=9004, step="archived",
              archived_at=at, verification={"outcome": "passed" if verified else "failed"} if verified else None)


def test_retention_keeps_the_newest_verified_and_says_why_it_keeps_others():
    a = [archive(9014, "2026-12-05T00:00:00Z"), archive(9013, "2026-12-04T00:00:00Z", verified=False),
         archive(9012, "2026-12-03T00:00:00Z"), archive(9011, "2026-12-02T00:00:00Z"),
         archive(9010, "2026-12-01T00:00:00Z", protection=True)]
    plan = plan_retention(a, keep=2, pins={9011: [130]})
    kept = {vm.vmid: why for vm, why in plan.keep}
    assert sorted(kept) == [9010, 9011, 9012, 9014] and [d.vmid for d in plan.delete] == [9013]
    assert kept[9014] == "the newest verified archive" and "linked clones use it (130)" in kept[9011]
    assert "protected by hand" in kept[9010]
    unverified = [archive(9011, "2026-12-02T00:00:00Z", verified=False), archive(9010, "2026-12-01T00:00:00Z",
                                                                                 verified=False)]
    plan = plan_retention(unverified, keep=1, pins={})
    assert [k.vmid for k, _ in plan.keep] == [9011] and [d.vmid for d in plan.delete] == [9010]


# --- lock ---------------------------------------------------------------------------------------
def test_a_marker_is_stale_when_its_process_here_is_gone_or_it_was_not_updated_in_time():
    lock = ClusterLock(client=None, config=config(), refresh_id="R")  # type: ignore[arg-type]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    now = "2099-01-01T00:00:00Z"
    assert "is gone" in lock.stale_reason({"host": here, "pid": dead.pid, "updated": now})
    assert lock.stale_reason({"host": here, "pid": os.getpid(), "updated": now}) is None
    assert lock.stale_reason({"host": "elsewhere", "pid": 1, "updated": now}) is None
    assert "not updated for" in lock.stale_reason({"host": "elsewhere", "pid": 1, "updated": "2020-01-01T00:00:00Z"})
    message = lock.locked_message({"id": "r1", "of": 9004, "host": "h", "pid": 7, "user": "u", "phase": "verify",
                                   "started": "s"})
    assert "refresh r1 of template 9004 holds the lock (VM 9005): u@h pid 7" in message


# --- report and exit codes ----------------------------------------------------------------------
def test_outcomes_map_to_the_documented_exit_codes():
    assert {k: int(v) for k, v in OUTCOME_CODES.items()} == {
        "up-to-date": 0, "promoted": 10, "rolled-back": 0, "not-promoted": 8, "build-failed": 4, "verify-failed": 5,
        "locked": 7, "error": 6, "interrupted": 130}
    readme = (REPO / "README.md").read_text()
    for code, meaning in [(7, "locked"), (8, "not promoted"), (10, "promoted")]:
        assert f"| {code} |" in readme and meaning in readme.split(f"| {code} |", 1)[1].split("\n", 1)[0].lower()


def test_the_summary_is_one_line_per_phase_then_the_outcome():
    result = RefreshResult(refresh_id="R", command="refresh", template_vmid=9004, template_name="g", started_at="t")
    result.phases = [Phase("decide", 0.4, True, "digest abc"), Phase("build", 2.0, False)]
    result.swap_window_seconds = 1.25
    result.finish("build-failed", "secret-token-value broke")
    lines = summary_lines(result, redact=lambda s: s.replace("secret-token-value", "***"))
    assert lines[1].split() == ["decide", "0.4s", "ok", "digest", "abc"] and "FAILED" in lines[2]
    assert lines[3] == "  swap window: 1.2s" and lines[-1].startswith("BUILD-FAILED (exit 4) in 0.0s: *** broke")


def test_the_tasks_are_listed_with_their_flags():
    invoke = REPO / ".venv" / "bin" / "invoke"
    listing = subprocess.run([str(invoke), "-r", str(REPO), "--list"], capture_output=True, text=True, check=True)
    assert all(name in listing.stdout for name in ("refresh", "rollback", "templates"))
    help_text = subprocess.run([str(invoke), "-r", str(REPO), "--help", "refresh"], capture_output=True, text=True,
                               check=True).stdout
    for flag in ("--force", "--keep-on-error", "--update-lock", "--json"):
        assert flag in help_text


def test_the_candidate_is_the_users_config_placed_elsewhere_with_the_users_hash():
    from nixgold.refresh.producer import candidate_config
    from nixgold.render.files import prepare_inputs, render_files

    user = config()
    candidate = candidate_config(user, 9006, "20261201T010203Z-abcdef")
    assert (candidate.template.vmid, candidate.template.tags) == (9006, ("nixgold-candidate",))
    assert candidate.template.name == "nixos-golden-candidate-20261201t010203z-abcdef"
    assert candidate.config_hash() == user.config_hash() and candidate.to_dict() != user.to_dict()

    def files(c: Config) -> dict[str, str]:
        return {f.path: f.content for f in render_files(prepare_inputs(c, dialect="bundled", lock=None,
                                                                       require_iso=False))}

    mine, theirs = files(candidate), files(user)
    assert mine["http/configuration.nix"] == theirs["http/configuration.nix"]  # a stand-in overlay fits both
    assert mine["http/install.sh"] == theirs["http/install.sh"] and mine["packer/nixgold.pkr.hcl"] != theirs[
        "packer/nixgold.pkr.hcl"]
