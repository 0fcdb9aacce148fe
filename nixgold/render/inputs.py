"""What every renderer gets: the validated config plus the decisions made from it.

Renderers (:mod:`nixgold.render.packer_template`, :mod:`nixgold.render.guest_files`) are pure functions of a
:class:`RenderInputs`; :mod:`nixgold.render` assembles them into files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nixgold.config.model import Config
from nixgold.lock import IsoSource

DIALECTS = ("plugin", "bundled")

# File names inside a render root (the repo root for `invoke render`, build/<id>/ for builds).
PACKER_DIR = "packer"
HTTP_DIR = "http"
HCL_FILE = "nixgold.pkr.hcl"
CLEANUP_SCRIPT = "cleanup.sh"  # in packer/, run by the final shell provisioner
INSTALL_SCRIPT = "install.sh"  # in http/, fetched by the boot_command line
CONFIGURATION_NIX = "configuration.nix"  # in http/, fetched by install.sh
BUILD_KEY_PUB = "build_key.pub"  # served over HTTP (http_content var, or a per-build file)

# Packer variables nixgold feeds through PKR_VAR_<name> at run time (never written to disk).
VAR_PROXMOX_URL = "proxmox_url"
VAR_PROXMOX_USERNAME = "proxmox_username"  # user@realm!tokenid (plugin) or user@realm (bundled)
VAR_PROXMOX_TOKEN = "proxmox_token"  # sensitive, plugin dialect
VAR_PROXMOX_PASSWORD = "proxmox_password"  # sensitive, bundled dialect
VAR_BUILD_PUBLIC_KEY = "build_public_key"
VAR_BUILD_PRIVATE_KEY_FILE = "build_private_key_file"
VAR_ISO_URL = "iso_url"
VAR_ISO_SHA256 = "iso_sha256"
VAR_BUILD_ID = "build_id"
VAR_BUILD_VM_NAME = "build_vm_name"  # carries the build id: how nixgold proves a build VM is its own
VAR_GIT_COMMIT = "git_commit"


@dataclass(frozen=True)
class RenderInputs:
    config: Config
    dialect: str  # "plugin" | "bundled"
    boot_command: tuple[str, ...]  # Packer-level strings (HCL escaping happens in hcl.py)
    manifest: dict[str, Any]  # static manifest fields (nixgold.render.manifest.static_manifest)
    iso: IsoSource | None  # None: not pinned yet; the HCL then takes iso_url/iso_sha256 without defaults

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {self.dialect!r}")


def disk_bus_key(disk_type: str) -> str:
    """The PVE config key of the boot disk: scsi0, virtio0 or sata0."""
    return f"{disk_type}0"


def guest_disk_device(disk_type: str) -> str:
    """The installed disk as the Linux guest sees it (first disk on that bus)."""
    return "/dev/vda" if disk_type == "virtio" else "/dev/sda"


def boot_order(disk_type: str) -> str:
    """Disk first: the empty disk falls through to the ISO, the reboot after install boots the disk."""
    return f"order={disk_bus_key(disk_type)};ide2"
