"""`invoke build-template` paths README promises that need Packer's side but no guest: the real CLI in
the test bed's namespace, against the simulator, with a stand-in Packer (tests/helpers/fake_packer.py)
that does through the API what Packer would have done, then fails or succeeds at once.

* ``--replace``: preflight, then our template at the vmid is destroyed before the build (and not
  without ``--replace``);
* a VM Packer leaves behind: nixgold destroys it through the API when its name carries this
  build's id, and leaves any other VM alone;
* ``--verify`` ends in exit 5 when a check fails (the built template has no guest agent: a blocking
  pre-check, so no clone boots).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixgold.errors import ExitCode
from nixgold.proxmox.vms import build_vm_name
from tests.helpers.fake_packer import write_fake_packer
from tests.test_build_e2e import build_env, invoke_argv, upload_dummy_iso, write_config

pytestmark = pytest.mark.vm

VMID = 9240
ISO = "nixgold-paths.iso"
OLD_BUILD = "20260101t000000z-abcdef"


@pytest.fixture(scope="module")
def iso(testbed, tmp_path_factory) -> str:
    return upload_dummy_iso(testbed, tmp_path_factory, ISO)


@pytest.fixture
def bed(testbed) -> Any:
    with testbed.enter():
        testbed.destroy_vm(VMID)
    yield testbed
    with testbed.enter():
        testbed.destroy_vm(VMID)


def vm_at(testbed: Any, vmid: int) -> dict[str, Any] | None:
    with testbed.enter():
        return next((vm for vm in testbed.all_vms() if int(vm["vmid"]) == vmid), None)


def build(testbed: Any, tmp_path: Path, iso: str, scenario: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, testbed, iso=iso, vmid=VMID, boot_wait="2s", live_boot_wait="2s")
    packer = write_fake_packer(tmp_path / "fake", scenario, tmp_path / "packer-argv.jsonl")
    return subprocess.run(invoke_argv(testbed, f"--set=build.packer={packer}", *args),
                          env=build_env(testbed, config), cwd=tmp_path, capture_output=True, text=True, timeout=600)


def build_id_of(err: str) -> str:
    m = re.search(r"build (\S+) in \S+ \(bundled dialect\)", err)
    assert m, err
    return m.group(1)


def plant_template(testbed: Any) -> None:
    """A template an earlier nixgold build made at VMID (its manifest in the description)."""
    manifest = {"nixgold_manifest": 1, "nixgold_version": "0.1.0", "config_sha256": "0" * 64,
                "nixos_release": "26.05", "template_vmid": VMID, "template_name": "nixgold-e2e", "dialect": "bundled",
                "firmware": "bios", "build_id": OLD_BUILD, "build_time": "2026-01-01T00:00:00Z"}
    with testbed.enter():
        api = testbed.proxmoxer()
        node = api.nodes(testbed.node)
        testbed._wait(api, node.qemu.post(vmid=VMID, name="nixgold-e2e", memory=64, description=json.dumps(manifest)))
        testbed._wait(api, node.qemu(VMID).template.post())


def test_replace_destroys_our_template_before_the_build(bed, iso, tmp_path):
    plant_template(bed)
    refused = build(bed, tmp_path / "without", iso, "fail")
    assert refused.returncode == ExitCode.PREFLIGHT, refused.stderr
    assert f"vmid {VMID} holds nixgold template 'nixgold-e2e' (build {OLD_BUILD}" in refused.stderr
    assert "pass --replace" in refused.stderr and vm_at(bed, VMID)["template"] == 1

    result = build(bed, tmp_path / "with", iso, "fail", "--replace")
    err = result.stderr
    assert result.returncode == ExitCode.BUILD, err
    destroying = f"--replace: destroying nixgold template 'nixgold-e2e' (build {OLD_BUILD}, 2026-01-01T00:00:00Z) at vmid {VMID}"
    assert f"{destroying}: done" in err, err
    # after preflight and packer validate, before Packer ran
    assert err.index("preflight: packer, Proxmox API") < err.index(destroying) < err.index("packer: creating the VM")
    assert "build failed during 'creating the VM': Error creating VM" in err
    assert vm_at(bed, VMID) is None  # the old template is gone (README: "if the build then fails, there is none")


@pytest.mark.parametrize("scenario", ["leave-vm", "leave-foreign"])
def test_a_vm_packer_leaves_is_destroyed_only_when_it_carries_the_build_id(bed, iso, tmp_path, scenario):
    result = build(bed, tmp_path, iso, scenario)
    err = result.stderr
    assert result.returncode == ExitCode.BUILD, err
    build_id = build_id_of(err)
    assert "build failed during 'creating the VM': Timeout waiting for SSH." in err, err
    assert f"making sure no VM of build {build_id} is left (vmid {VMID})" in err
    if scenario == "leave-vm":
        name = build_vm_name("nixgold-e2e", build_id)
        assert f"Packer left VM {VMID} ({name}) behind: destroying it" in err, err
        assert vm_at(bed, VMID) is None
    else:
        # Packer's default build-VM description and the old `<name>-building` name prove nothing
        assert (f"vmid {VMID} holds a VM that is not this build's ('nixgold-e2e-building': it does not carry build "
                f"id {build_id}); leaving it alone") in err, err
        assert vm_at(bed, VMID)["name"] == "nixgold-e2e-building"
        with bed.enter():
            assert bed.proxmoxer().nodes(bed.node).qemu(VMID).config.get()["description"] == "Packer ephemeral build VM"


def test_build_template_verify_exits_5_when_a_check_fails(bed, iso, tmp_path):
    result = build(bed, tmp_path, iso, "template", "--verify")
    out, err = result.stdout, result.stderr
    assert result.returncode == ExitCode.VERIFY, f"stdout:\n{out}\nstderr:\n{err}"
    build_id = build_id_of(err)
    assert re.search(rf"template {VMID} 'nixgold-e2e' on {bed.node} built \(bundled dialect, build {build_id}", out), out
    assert "not cloning: template.agent" in err, err
    assert re.search(r"^template\.agent +template +FAILED ", out, re.M) and "FAILED (exit 5)" in out, out
    assert re.search(r"nixgold: \d+ of \d+ checks failed: template\.agent on template", err), err
    with bed.enter():
        config = bed.proxmoxer().nodes(bed.node).qemu(VMID).config.get()
        clones = [vm for vm in bed.all_vms() if "-verify-" in (vm.get("name") or "")]
    assert json.loads(config["description"])["build_id"] == build_id and config["template"] == 1
    assert config["serial0"] == "socket" and "nixgold" in config["tags"].split(";")  # nixgold finished the template
    assert clones == []
