"""The stand-in installer ISO (tests/testbed/images/installer_iso.py) and the stand-in
install.sh/cleanup.sh (tests/testbed/standin/): recipe, cache, layout, scripts.

That the ISO really boots and installs is proven by tests/test_build_e2e.py (Packer 1.6.6
types the boot_command into it through the simulator and builds a template from it)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.testbed.images import installer_iso
from tests.testbed.images.installer_iso import (ISO_VOLUME_ID, LIVE_CMDLINE, MENU_TIMEOUT_DS, build_installer_iso,
                                               isolinux_cfg, load_installer_iso, recipe_hash)

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
            "/nixgold-standin.json"} <= files
    pvd = subprocess.run(["xorriso", "-indev", str(again.path), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    assert f"Volume Id    : {ISO_VOLUME_ID}" in pvd
    meta = json.loads((again.path.parent / "installer.json").read_text())
    assert meta["recipe_hash"] == again.recipe_hash and meta["live_cmdline"] == LIVE_CMDLINE
    assert not list(again.path.parent.parent.glob(f".tmp-{installer_iso.PREFIX}*"))
    print(f"\nstand-in installer ISO: cold build {again.build_seconds:.0f}s, "
          f"{again.path.stat().st_size >> 20} MiB")
