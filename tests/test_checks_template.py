"""Template pre-checks (nixgold.verify.checks.template): each one passes on a good template config and fails
on a bad one. The configs are shaped like PVE's ``GET /nodes/{node}/qemu/{vmid}/config`` answers
(the simulator answers the same shape; the last test reads one from it)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from nixgold.verify.checks import BLOCKING_TEMPLATE_CHECKS, TEMPLATE_CHECKS, CheckResult, template_checks

MANIFEST = json.dumps({"nixgold_manifest": 1, "nixgold_version": "0.1.0", "config_sha256": "0" * 64,
                       "nixos_release": "26.05", "template_vmid": 9004, "template_name": "nixos-golden",
                       "dialect": "plugin", "firmware": "uefi", "build_time": "2026-11-01T10:00:00Z"}, indent=1)

# What PVE 9 answers for a template built by nixgold's Packer template (UEFI, SCSI, cloud-init on ide2).
UEFI: dict[str, Any] = {
    "agent": "1,fstrim_cloned_disks=1", "bios": "ovmf", "boot": "order=scsi0;ide2;net0", "cores": 2,
    "cpu": "x86-64-v2-AES", "description": MANIFEST, "digest": "4f7c0d2b8e1a3f5c6d7e8f9a0b1c2d3e4f5a6b7c",
    "efidisk0": "local-lvm:base-9004-disk-0,efitype=4m,pre-enrolled-keys=0,size=4M",
    "ide2": "local-lvm:vm-9004-cloudinit,media=cdrom", "machine": "q35", "memory": "2048", "meta":
    "creation-qemu=9.2.0,ctime=1761984000", "name": "nixos-golden", "net0": "virtio=BC:24:11:5E:7A:01,bridge=vmbr0",
    "numa": 0, "ostype": "l26", "scsi0": "local-lvm:base-9004-disk-1,discard=on,iothread=1,size=20G",
    "scsihw": "virtio-scsi-single", "serial0": "socket", "smbios1": "uuid=0b0f8f5e-8b55-4d5c-9c31-6f3b2f7a1c11",
    "sockets": 1, "tags": "golden;nixos", "template": 1, "vga": "serial0", "vmgenid": "5d1e9a0c-3f7b-4c6e-8a2d-1b9c0e7f6a54",
}
# The test bed's stand-in (SeaBIOS, direct kernel boot, agent as a bare 1).
SEABIOS: dict[str, Any] = {
    "agent": "1", "boot": "order=scsi0", "ciupgrade": 0, "cores": 1, "cpu": "x86-64-v2-AES",
    "description": MANIFEST, "digest": "9a8b7c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3", "ide2": "local:9004/vm-9004-cloudinit.qcow2,media=cdrom",
    "ipconfig0": "ip=dhcp", "memory": "1024", "name": "nixgold-testbed-good", "net0": "virtio=BC:24:11:CC:0C:48,bridge=vmbr0",
    "ostype": "l26", "rng0": "source=/dev/urandom", "scsi0": "local:9004/base-9004-disk-0.qcow2,size=2G",
    "scsihw": "virtio-scsi-single", "serial0": "socket", "sockets": 1, "tags": "nixgold;testbed", "template": 1,
}


def results(config: dict[str, Any], description: str | None = MANIFEST) -> dict[str, CheckResult]:
    out = template_checks(config, description)
    assert [r.id for r in out] == list(TEMPLATE_CHECKS)
    assert all(r.target == "template" and r.summary for r in out)
    return {r.id: r for r in out}


def changed(base: dict[str, Any], drop: tuple[str, ...] = (), **values: Any) -> dict[str, Any]:
    config = {k: v for k, v in base.items() if k not in drop}
    config.update(values)
    return config


@pytest.mark.parametrize("config", [UEFI, SEABIOS], ids=["uefi", "seabios"])
def test_good_templates_pass(config):
    res = results(config, config["description"])
    expected_skip = {"template.efi-disk"} if config is SEABIOS else set()
    assert {k for k, r in res.items() if r.outcome == "skipped"} == expected_skip
    assert all(r.outcome == "passed" and r.reason == "" for k, r in res.items() if k not in expected_skip)
    assert res.get("template.efi-disk").reason == ("bios seabios: no EFI disk needed" if expected_skip else "")


# check id -> bad configs (each with a fragment of the expected one-line reason)
BAD: dict[str, list[tuple[dict[str, Any], str]]] = {
    "template.is-template": [(changed(UEFI, drop=("template",)), "not a template"),
                             (changed(UEFI, template=0), "not a template")],
    "template.agent": [(changed(UEFI, drop=("agent",)), "not enabled"),
                       (changed(UEFI, agent="0"), "disabled (agent: 0)"),
                       (changed(UEFI, agent="enabled=0,fstrim_cloned_disks=1"), "disabled"),
                       (changed(UEFI, agent="0,type=virtio"), "disabled")],
    "template.cloud-init": [(changed(UEFI, drop=("ide2",)), "no cloud-init drive"),
                            (changed(UEFI, ide2="local:iso/nixos-minimal.iso,media=cdrom"), "no cloud-init drive"),
                            (changed(UEFI, ide2="none,media=cdrom"), "no cloud-init drive")],
    "template.serial": [(changed(UEFI, drop=("serial0",)), "no serial0"),
                        (changed(UEFI, serial0="/dev/ttyS0"), "serial0: /dev/ttyS0")],
    "template.boot-order": [(changed(UEFI, boot="order=ide2;scsi0;net0"), "starts with ide2, a CD-ROM"),
                            (changed(UEFI, boot="order=net0;scsi0"), "the network (net0)"),
                            (changed(UEFI, boot="order=virtio0;scsi0"), "virtio0, which is not a disk"),
                            (changed(UEFI, boot="order="), "empty"),
                            (changed(UEFI, boot="dcn", bootdisk="scsi0"), "starts with 'd'"),
                            (changed(UEFI, boot="cdn", bootdisk="ide2"), "no usable bootdisk")],
    "template.efi-disk": [(changed(UEFI, drop=("efidisk0",)), "without efidisk0")],
    "template.manifest": [],  # descriptions, below
}


@pytest.mark.parametrize("check_id, config, fragment",
                         [(k, c, f) for k, cases in BAD.items() for c, f in cases],
                         ids=[f"{k}-{i}" for k, cases in BAD.items() for i in range(len(cases))])
def test_each_check_fails_on_a_bad_config(check_id, config, fragment):
    res = results(config)
    r = res[check_id]
    assert r.outcome == "failed" and fragment in r.reason and "\n" not in r.reason
    others = {k: v.outcome for k, v in res.items() if k != check_id and v.outcome not in ("passed", "skipped")}
    assert others == {}, f"only {check_id} should fail"


@pytest.mark.parametrize("description, fragment", [
    (None, "no description"),
    ("", "no description"),
    ("hand-made golden image", "holds no JSON manifest"),
    ('{"name": "x"}', "not a nixgold manifest"),
    ('{"nixgold_manifest": 1, "nixgold_version": "0.1.0"}', "lacks config_sha256"),
    ("{broken json", "not a JSON manifest"),
])
def test_manifest_check_fails_on_bad_descriptions(description, fragment):
    r = results(UEFI, description)["template.manifest"]
    assert r.outcome == "failed" and fragment in r.reason and "\n" not in r.reason


def test_legacy_and_default_boot_orders_that_boot_the_disk():
    assert results(changed(UEFI, boot="cdn", bootdisk="scsi0"))["template.boot-order"].outcome == "passed"
    assert results(changed(UEFI, drop=("boot",)))["template.boot-order"].outcome == "passed"
    assert results(changed(UEFI, boot="order=scsi0"))["template.boot-order"].outcome == "passed"
    assert results(changed(UEFI, agent="enabled=1"))["template.agent"].outcome == "passed"
    assert results(changed(UEFI, template="1"))["template.is-template"].outcome == "passed"


def test_every_blocking_id_names_a_check():
    """An id in BLOCKING_TEMPLATE_CHECKS that names no check would never block anything. (That a
    blocking failure skips cloning is verify's behaviour: tests/test_verify_flow.py, and through the
    CLI tests/test_build_paths.py and tests/test_secret_sweep.py.)"""
    assert BLOCKING_TEMPLATE_CHECKS and BLOCKING_TEMPLATE_CHECKS <= set(TEMPLATE_CHECKS)


def test_a_broken_check_is_an_error_not_a_crash(monkeypatch):
    def boom(config, description):
        raise KeyError("surprise")

    monkeypatch.setitem(TEMPLATE_CHECKS, "template.serial", ("serial", boom))
    r = results(UEFI)["template.serial"]
    assert r.outcome == "error" and r.reason == "KeyError: 'surprise'"


def test_the_simulators_config_answer_passes(testbed):
    """The real shape: GET .../config of the bed's template 9004 (the stand-in good image)."""
    with testbed.enter():
        config = testbed.proxmoxer().nodes(testbed.node).qemu(testbed.template_vmid).config.get()
    res = results(config, config.get("description"))
    assert {k: r.outcome for k, r in res.items()} == {k: "skipped" if k == "template.efi-disk" else "passed"
                                                      for k in TEMPLATE_CHECKS}
