"""Render the Debian stand-in's install.sh and cleanup.sh for a config: the build's render overlay.

    overlay = render_overlay(config, tmp / "standin")    # <dir>/http/install.sh, <dir>/packer/cleanup.sh
    env["NIXGOLD_RENDER_OVERLAY"] = str(overlay)          # build-template then serves these instead

Both come from nixgold's own templates (nixgold/templates/install.sh.j2, cleanup.sh.j2) extended by
``templates/standin-*.sh.j2``, rendered with the same inputs the build renders (so install.sh
checks the very configuration.nix the build serves), plus the NixOS template's cloud-init settings
evaluated from that configuration.nix (``nixos.py``).

    python -m tests.testbed.standin.render --config nixgold.toml --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Sequence

from nixgold.render import templating
from nixgold.config.model import Config
from nixgold.config.load import load_config
from nixgold.render.guest_files import render_cleanup_sh, render_configuration_nix, render_install_sh
from nixgold.render.inputs import CLEANUP_SCRIPT, HTTP_DIR, INSTALL_SCRIPT, PACKER_DIR, RenderInputs

from . import nixos

TEMPLATES = Path(__file__).resolve().parent / "templates"
INSTALL_TEMPLATE = "standin-install.sh.j2"
CLEANUP_TEMPLATE = "standin-cleanup.sh.j2"


def _inputs(config: Config) -> RenderInputs:
    # Guest files do not depend on the dialect, the boot_command, the manifest or the ISO.
    return RenderInputs(config=config, dialect="plugin", boot_command=(), manifest={}, iso=None)


def render_scripts(config: Config, settings: dict | None = None) -> tuple[str, str]:
    """(install.sh, cleanup.sh) of the stand-in; ``settings``: the configuration.nix cloud-init
    settings to give the installed system (default: evaluated from the rendered configuration.nix)."""
    inputs = _inputs(config)
    env = templating.make_environment([TEMPLATES])
    nixcfg = render_configuration_nix(inputs)
    settings = nixos.evaluated_settings(config) if settings is None else settings
    install = render_install_sh(inputs, hashlib.sha256(nixcfg.encode()).hexdigest(), template=INSTALL_TEMPLATE,
                                env=env, cloud_cfg=nixos.cloud_cfg(settings), cloud_cfg_path=nixos.CLOUD_CFG,
                                ds_identify=nixos.DS_IDENTIFY, os_release_line=nixos.OS_RELEASE_LINE)
    cleanup = render_cleanup_sh(inputs, template=CLEANUP_TEMPLATE, env=env)
    return install, cleanup


def render_overlay(config: Config, out: Path, settings: dict | None = None) -> Path:
    """Write the overlay directory for NIXGOLD_RENDER_OVERLAY; returns ``out``."""
    install, cleanup = render_scripts(config, settings)
    for rel, text in ((f"{HTTP_DIR}/{INSTALL_SCRIPT}", install), (f"{PACKER_DIR}/{CLEANUP_SCRIPT}", cleanup)):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="nixgold.toml the build uses")
    parser.add_argument("--out", required=True, type=Path, help="overlay directory to write")
    args = parser.parse_args(argv)
    print(render_overlay(load_config(args.config, env={}), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
