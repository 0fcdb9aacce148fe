"""Files the guest sees during the build: configuration.nix, install.sh and cleanup.sh.

Pure functions of :class:`~nixgold.render.inputs.RenderInputs`. No secret is ever rendered:
the per-build SSH public key is fetched by install.sh at install time (``build_key.pub``
from Packer's HTTP server), and the private key never leaves the host.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2

from nixgold import __version__
from nixgold.errors import RenderError
from nixgold.render.inputs import BUILD_KEY_PUB, CONFIGURATION_NIX, INSTALL_SCRIPT, RenderInputs, guest_disk_device
from nixgold.render.templating import render

#: Written by install.sh next to configuration.nix only when permit_root_login = "no"
#: (Packer still needs root SSH with the build key); deleted again by cleanup.sh.
BUILD_OVERRIDE_NIX = "nixgold-build.nix"

#: Packages configuration.nix installs whatever the config says: cleanup.sh runs `cloud-init`,
#: which nixpkgs' cloud-init.nix puts only on its units' path, not in environment.systemPackages.
TEMPLATE_PACKAGES = ("cloud-init",)

CONFIGURATION_TEMPLATE = "configuration.nix.j2"
INSTALL_TEMPLATE = "install.sh.j2"
CLEANUP_TEMPLATE = "cleanup.sh.j2"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: A numbered step of a guest script: ``step "..."`` at the start of a line (lib.sh.j2).
_STEP_CALL_RE = re.compile(r'^\s*step "', re.M)


def render_script(template: str, env: jinja2.Environment | None = None, **context: Any) -> str:
    """A guest script; ``steps_total`` (what "step 4/9" counts up to) is the number of
    ``step`` calls the rendered script makes, so the template is rendered twice."""
    draft = render(template, env=env, **context, steps_total="0")
    return render(template, env=env, **context, steps_total=str(len(_STEP_CALL_RE.findall(draft))))


def _common(inputs: RenderInputs) -> dict[str, Any]:
    return {
        "nixgold_version": __version__,
        "root_login_override": inputs.config.nixos.permit_root_login == "no",
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
        template_packages=list(TEMPLATE_PACKAGES),
        packages=[p for p in nixos.packages if p not in TEMPLATE_PACKAGES],
        permit_root_login=nixos.permit_root_login,
        flakes=nixos.flakes,
        auto_gc=nixos.auto_gc,
        users=_users(inputs),
        sudo_users=[user.name for user in inputs.config.users if user.sudo],
    )


def render_install_sh(inputs: RenderInputs, configuration_nix_sha256: str, *, template: str = INSTALL_TEMPLATE,
                      env: jinja2.Environment | None = None, **extra: Any) -> str:
    """install.sh, with the sha256 of the configuration.nix it must fetch baked in.

    ``template``/``env``/``extra``: a template that extends install.sh.j2 (the test bed's
    Debian stand-in) and what it needs on top.
    """
    if not isinstance(configuration_nix_sha256, str) or not _SHA256_RE.fullmatch(configuration_nix_sha256):
        raise RenderError(f"configuration_nix_sha256 must be 64 lowercase hex digits, got {configuration_nix_sha256!r}")
    return render_script(
        template, env,
        **_common(inputs),
        install_script=INSTALL_SCRIPT,
        configuration_nix=CONFIGURATION_NIX,
        configuration_nix_sha256=configuration_nix_sha256,
        build_key_pub=BUILD_KEY_PUB,
        status_port=str(inputs.config.build.status_port),
        **extra,
    )


def render_cleanup_sh(inputs: RenderInputs, *, template: str = CLEANUP_TEMPLATE,
                      env: jinja2.Environment | None = None, **extra: Any) -> str:
    """cleanup.sh, the final provisioner (written as :data:`~nixgold.render.inputs.CLEANUP_SCRIPT`)."""
    return render_script(template, env, **_common(inputs), **extra)
