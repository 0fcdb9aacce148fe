"""The stand-in installer ISO (tests/testbed/images/installer_iso.py) and the stand-in
install.sh/cleanup.sh (tests/testbed/standin/): recipe, cache, layout, scripts.

That the ISO really boots and installs is proven by tests/test_refresh_packer_e2e.py (its build phase:
Packer 1.6.6, SeaBIOS on i440fx) and tests/test_build_plugin_e2e.py (Packer 1.16 + packer-plugin-proxmox, q35 with OVMF
and with SeaBIOS): Packer types the boot_command into it through the simulator and builds a
template from it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.testbed.images import installer_iso
from tests.testbed.images.installer_iso import (EFI_IMAGE, ISO_VOLUME_ID, LIVE_CMDLINE, MENU_TIMEOUT_DS,
                                               build_installer_iso, isolinux_cfg, load_installer_iso, recipe_hash,
                                               systemd_boot_files)

SCRIPTS = ["install.sh", "cleanup.sh"]
FIRMWARES = ["bios", "uefi"]


def test_recipe_hash_is_stable_and_tracks_the_mirror():
    h = recipe_hash()
    assert h == recipe_hash() and len(h) == 16 and int(h, 16) >= 0
    assert recipe_hash(mirror="http://mirror.invalid/debian") != h


def test_isolinux_menu_boots_the_live_entry_like_the_nixos_iso():
    cfg = isolinux_cfg()
    assert LIVE_CMDLINE in cfg
    assert f"TIMEOUT {MENU_TIMEOUT_DS}" in cfg.upper().replace("\t", " ")
    assert "systemd.mask=qemu-guest-agent.service" in LIVE_CMDLINE  # no agent in the live session


def test_systemd_boot_menu_boots_the_same_live_entry_on_uefi():
    files = systemd_boot_files()
    loader = dict(line.split(" ", 1) for line in files["loader/loader.conf"].splitlines())
    assert loader == {"timeout": str(MENU_TIMEOUT_DS // 10), "default": "live.conf", "editor": "no"}
    entry = dict(line.split(" ", 1) for line in files["loader/entries/live.conf"].splitlines())
    assert entry["linux"] == "/live/vmlinuz" and entry["initrd"] == "/live/initrd.img"
    assert entry["options"] == LIVE_CMDLINE


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_standin_scripts_pass_shellcheck_and_bash_n(script, firmware, tmp_path):
    """The stand-in's scripts, rendered from nixgold's templates (tests/testbed/standin/render.py)."""
    from nixgold.config.load import parse_config
    from tests.testbed.standin.render import render_overlay

    overlay = render_overlay(parse_config({"vm": {"firmware": firmware}}), tmp_path / "standin")
    path = overlay / ("http" if script == "install.sh" else "packer") / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    result = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    text = path.read_text()
    assert "set -Eeuo pipefail" in text and "nixgold test bed: the STAND-IN" in text or script == "cleanup.sh"


@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_iso_is_built_once_then_cached_with_its_layout(tmp_path):
    first = build_installer_iso()  # cold on a fresh machine (a few minutes), cached afterwards
    t0 = time.monotonic()
    again = build_installer_iso()
    assert again.built is False and time.monotonic() - t0 < 1.0
    assert load_installer_iso().path == again.path == first.path
    assert again.path.parent.name == f"{installer_iso.PREFIX}-{recipe_hash()}"
    files = subprocess.run(["xorriso", "-indev", str(again.path), "-find", "/", "-type", "f"],
                           capture_output=True, text=True, check=True).stdout.split()
    files = {f.strip("'") for f in files}
    assert {"/isolinux/isolinux.bin", "/isolinux/isolinux.cfg", "/isolinux/ldlinux.c32", "/live/vmlinuz",
            "/live/initrd.img", "/live/filesystem.squashfs", "/live/live.squashfs", "/live/filesystem.module",
            f"/{EFI_IMAGE}", "/nixgold-standin.json"} <= files
    # two El Torito entries: isolinux for SeaBIOS, the FAT image (systemd-boot) for OVMF
    torito = subprocess.run(["xorriso", "-indev", str(again.path), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True).stdout
    assert "El Torito img path :   1  /isolinux/isolinux.bin" in torito
    assert f"El Torito img path :   2  /{EFI_IMAGE}" in torito and "El Torito boot img :   2  UEFI" in torito
    efi = tmp_path / "efiboot.img"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(again.path), "-extract", f"/{EFI_IMAGE}", str(efi)],
                   capture_output=True, check=True)
    listing = subprocess.run(["mdir", "-/", "-b", "-i", str(efi), "::/"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert {"::/EFI/BOOT/BOOTX64.EFI", "::/live/vmlinuz", "::/live/initrd.img", "::/loader/loader.conf",
            "::/loader/entries/live.conf"} <= set(listing)
    for rel, text in systemd_boot_files().items():
        assert subprocess.run(["mtype", "-i", str(efi), f"::/{rel}"], capture_output=True, text=True,
                              check=True).stdout == text
    pvd = subprocess.run(["xorriso", "-indev", str(again.path), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    assert f"Volume Id    : {ISO_VOLUME_ID}" in pvd
    meta = json.loads((again.path.parent / "installer.json").read_text())
    assert meta["recipe_hash"] == again.recipe_hash and meta["live_cmdline"] == LIVE_CMDLINE
    # the live session runs Debian's generic kernel (AHCI for q35's CD), the installed system its cloud kernel
    assert "-cloud-" not in meta["live_kernel_version"] and meta["kernel_version"].endswith("-cloud-amd64")
    # this entry's only (the other worker may be building something else into the shared cache)
    assert not list(again.path.parent.parent.glob(f".tmp-{installer_iso.PREFIX}-{again.recipe_hash}-*"))
    print(f"\nstand-in installer ISO: cold build {again.build_seconds:.0f}s, "
          f"{again.path.stat().st_size >> 20} MiB")
