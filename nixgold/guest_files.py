"""Files the guest sees during the build: configuration.nix, install.sh and cleanup.sh.

Pure functions of :class:`~nixgold.render_inputs.RenderInputs`. No secret is ever rendered:
the per-build SSH public key is fetched by install.sh at install time (``build_key.pub``
from Packer's HTTP server), and the private key never leaves the host.
"""

from __future__ import annotations

import re
from typing import Any

from . import __version__
from .errors import RenderError
from .render_inputs import (
    BUILD_KEY_PUB,
    CONFIGURATION_NIX,
    INSTALL_SCRIPT,
    RenderInputs,
    guest_disk_device,
)
from .templating import render

#: Written by install.sh next to configuration.nix only when permit_root_login = "no"
#: (Packer still needs root SSH with the build key); deleted again by cleanup.sh.
BUILD_OVERRIDE_NIX = "nixgold-build.nix"

CONFIGURATION_TEMPLATE = "configuration.nix.j2"
INSTALL_TEMPLATE = "install.sh.j2"
CLEANUP_TEMPLATE = "cleanup.sh.j2"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _common(inputs: RenderInputs) -> dict[str, Any]:
    return {
        "nixgold_version": __version__,
        "config_hash": inputs.config.config_hash(),
        "build_override_nix": BUILD_OVERRIDE_NIX,
        "firmware": inputs.config.vm.firmware,
        "disk": guest_disk_device(inputs.config.vm.disk_type),
    }


def _users(inputs: RenderInputs) -> list[dict[str, Any]]:
    users = []
    for user in inputs.config.users:
        groups = list(user.groups)
        if user.sudo and "wheel" not in groups:
            groups.append("wheel")
        users.append({"name": user.name, "groups": groups, "ssh_keys": list(user.ssh_keys)})
    return users


def render_configuration_nix(inputs: RenderInputs) -> str:
    """The NixOS configuration of the golden image (installed as /etc/nixos/configuration.nix)."""
    nixos = inputs.config.nixos
    return render(
        CONFIGURATION_TEMPLATE,
        **_common(inputs),
        release=nixos.release,
        locale=nixos.locale,
        timezone=nixos.timezone,
        keymap=nixos.keymap,
        packages=list(nixos.packages),
        permit_root_login=nixos.permit_root_login,
        flakes=nixos.flakes,
        auto_gc=nixos.auto_gc,
        users=_users(inputs),
        sudo_users=[user.name for user in inputs.config.users if user.sudo],
    )


def render_install_sh(inputs: RenderInputs, configuration_nix_sha256: str) -> str:
    """install.sh, with the sha256 of the configuration.nix it must fetch baked in."""
    if not isinstance(configuration_nix_sha256, str) or not _SHA256_RE.fullmatch(configuration_nix_sha256):
        raise RenderError(f"configuration_nix_sha256 must be 64 lowercase hex digits, got {configuration_nix_sha256!r}")
    return render(
        INSTALL_TEMPLATE,
        **_common(inputs),
        install_script=INSTALL_SCRIPT,
        configuration_nix=CONFIGURATION_NIX,
        configuration_nix_sha256=configuration_nix_sha256,
        build_key_pub=BUILD_KEY_PUB,
        root_login_override=inputs.config.nixos.permit_root_login == "no",
    )


def render_cleanup_sh(inputs: RenderInputs) -> str:
    """cleanup.sh, the final provisioner (written as :data:`~nixgold.render_inputs.CLEANUP_SCRIPT`)."""
    return render(CLEANUP_TEMPLATE, **_common(inputs))
