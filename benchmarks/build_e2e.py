"""What a stand-in `invoke build-template` costs, split by stage, and what typing the boot_command costs.

    .venv/bin/python benchmarks/build_e2e.py [--dialect {bundled,plugin}] [--keep-bed] [--verify]

On a private test bed (namespace ``ngbuild-<pid>``, no template imported) it uploads the stand-in
installer ISO (``tests/testbed/images/installer_iso.py``) to ``local:iso/``, runs the REAL
``invoke build-template`` with the Debian stand-in's install.sh/cleanup.sh rendered for the config
(``NIXGOLD_RENDER_OVERLAY``, ``tests/testbed/standin``) inside the namespace, and prints:

* first, the dialect and the versions the tools themselves report: ``bundled dialect, Packer 1.6.6``
  (Debian's ``packer``, builder ``proxmox``, password login, SeaBIOS) or ``plugin dialect, Packer
  1.16.0, plugin 1.2.4`` (``scripts/setup.sh --dev``'s Packer and packer-plugin-proxmox,
  ``proxmox-iso``, API token, UEFI: the default config);
* the wall time and each stage's share (from ``build/<id>/build.json``, written by nixgold from
  Packer's machine-readable output);
* the boot_command: keystrokes (one ``sendkey`` API call each), the waits it contains, the measured
  "typing the boot command" stage, and from those the seconds per key (interval + API round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def tools_line(dialect: str) -> str:
    """The first line: the dialect and the versions its tools report themselves."""
    import shutil

    from tests.helpers import packer_tools

    if dialect == "bundled":
        packer = shutil.which("packer")
        if packer is None:
            raise packer_tools.ToolMissing("`packer` (Debian's 1.6.6) is not installed: run `bash scripts/setup.sh`")
        return f"bundled dialect, Packer {packer_tools.packer_version(packer)}"
    packer = packer_tools.plugin_dialect_packer()
    plugin = packer_tools.installed_proxmox_plugin()
    return f"plugin dialect, Packer {packer_tools.packer_version(packer)}, plugin {packer_tools.plugin_version(plugin)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", choices=("bundled", "plugin"), default="bundled",
                        help="bundled: Debian's Packer 1.6.6 (BIOS); plugin: Packer >= 1.10 + packer-plugin-proxmox "
                             "(UEFI, the default config)")
    parser.add_argument("--keep-bed", action="store_true", help="leave the test bed up afterwards")
    parser.add_argument("--verify", action="store_true", help="also run --verify (generic profile, 1 clone)")
    parser.add_argument("--live-boot-wait", default=None, help="default: the e2e tests' LIVE_BOOT_WAIT")
    parser.add_argument("--key-interval", default="10ms")
    args = parser.parse_args()

    from nixgold.bootcmd.stats import stats
    from nixgold.units import duration_seconds
    from nixgold.config.load import load_config
    from nixgold.render.boot_command import boot_command
    from tests.helpers.packer_tools import ToolMissing
    from tests.test_build_e2e import build_env, standin_overlay, upload_iso, write_config
    from tests.testbed.bed import Testbed
    from tests.testbed.images.installer_iso import build_installer_iso

    try:
        versions = tools_line(args.dialect)
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(versions, flush=True)
    root = Path(tempfile.mkdtemp(prefix="nixgold-build-bench-"))
    bed = Testbed(root=root / "bed", netns=f"ngbuild-{os.getpid()}", log_fn=lambda m: None)
    t_bed = time.monotonic()
    bed.up(template=False)
    try:
        t_iso = time.monotonic()
        iso = Path(build_installer_iso())
        upload_iso(bed, iso, "nixgold-standin-installer.iso")
        prep = time.monotonic() - t_iso
        work = root / "work"
        if args.dialect == "plugin":
            from tests.test_build_plugin_e2e import plugin_env
            from tests.test_build_plugin_e2e import write_config as write_plugin_config

            config = write_plugin_config(work, bed, vmid=9200, firmware="uefi",
                                         iso=f'volume = "{bed.storage}:iso/nixgold-standin-installer.iso"')
        else:
            config = write_config(work, bed, iso="nixgold-standin-installer.iso", extra="")
        text = config.read_text()
        text = re.sub(r'^key_interval = ".*"$', f'key_interval = "{args.key_interval}"', text, flags=re.M)
        if args.live_boot_wait:  # else the tests' LIVE_BOOT_WAIT, which write_config put there
            text = re.sub(r'^live_boot_wait = ".*"$', f'live_boot_wait = "{args.live_boot_wait}"', text, flags=re.M)
        config.write_text(text)
        overlay = standin_overlay(config, work / "standin")
        if args.dialect == "plugin":
            env = plugin_env(bed, config, overlay, (bed.token_id, bed.token_secret))
        else:
            env = build_env(bed, config, overlay)
        invoke = REPO / ".venv" / "bin" / "invoke"
        argv = ["ip", "netns", "exec", bed.netns, str(invoke), "-r", str(REPO), "build-template"]
        if args.verify:
            argv.append("--verify")
        t0 = time.monotonic()
        result = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=7200)
        wall = time.monotonic() - t0
        if result.returncode != 0:
            print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
            print(f"build failed (exit {result.returncode}) after {wall:.0f}s", file=sys.stderr)
            return 1
        m = re.search(r"build (\S+) in (\S+) \((?:bundled|plugin) dialect\)", result.stderr)
        assert m, result.stderr
        report = json.loads((Path(m.group(2)) / "build.json").read_text())
        cfg = load_config(config, env={})
        typed = stats(boot_command(cfg), duration_seconds(cfg.build.key_interval))
        print(f"stand-in build ({report['dialect']} dialect, {cfg.vm.firmware}, TCG): wall {wall:.0f}s"
              f" (bed up {t_iso - t_bed:.0f}s and ISO build+upload {prep:.0f}s not included)")
        total = sum(s["seconds"] for s in report["stages"])
        for s in report["stages"]:
            print(f"  {s['name']:<28} {s['seconds']:7.1f}s  {100 * s['seconds'] / total:5.1f}%")
        outside = wall - total
        print(f"  {'nixgold (preflight, validate, checks' + (', verify' if args.verify else '') + ')':<28} "
              f"{outside:7.1f}s")
        typing = next((s["seconds"] for s in report["stages"] if s["name"] == "typing the boot command"), None)
        print(f"boot_command: {typed.keystrokes} keystrokes (one sendkey API call each) at {cfg.build.key_interval}/key, "
              f"{typed.wait_seconds:.0f}s of <wait> inside it")
        if typing is not None:
            keys_s = max(0.0, typing - typed.wait_seconds)
            print(f"  measured typing stage {typing:.1f}s = {typed.wait_seconds:.0f}s waits + {keys_s:.1f}s keys "
                  f"-> {1000 * keys_s / max(1, typed.keystrokes):.0f} ms per key (estimate was "
                  f"{typed.typing_seconds:.1f}s)")
        return 0
    finally:
        if not args.keep_bed:
            bed.down()
        else:
            print(f"bed left up: {bed.root} (netns {bed.netns})")


if __name__ == "__main__":
    sys.exit(main())
