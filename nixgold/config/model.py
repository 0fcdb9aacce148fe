"""The typed nixgold configuration: one frozen dataclass per TOML section (defaults are the documented ones)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nixgold.units import size_gib

#: The NixOS release used when none is configured: the current stable.
CURRENT_STABLE_RELEASE = "26.05"

#: Oldest release whose options our configuration.nix uses (services.openssh.settings).
OLDEST_SUPPORTED_RELEASE = "23.05"

# --- the model --------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxmoxSettings:
    node: str = "pve"
    url: str | None = None  # https://host:8006/api2/json ; env PROXMOX_URL wins
    token_id: str | None = None  # user@realm!tokenid ; env PROXMOX_TOKEN_ID wins
    username: str | None = None  # user@realm for password login (bundled packer) ; env PROXMOX_USERNAME
    ca_bundle: str | None = None  # PEM file to verify the API certificate ; env PROXMOX_CA_BUNDLE
    timeout: int = 30  # seconds per API request

@dataclass(frozen=True)
class TemplateSettings:
    vmid: int = 9004
    name: str = "nixos-golden"
    tags: tuple[str, ...] = ("nixos", "golden")
    description: str = ""  # free text, carried in the build manifest
    pool: str | None = None

@dataclass(frozen=True)
class VmSettings:
    cores: int = 2
    memory: int = 2048  # MiB
    disk_size: str = "20G"
    disk_type: str = "scsi"  # scsi | virtio | sata
    disk_format: str = "raw"  # raw (LVM/ZFS/Ceph) | qcow2 (directory storages; allows linked clones there)
    storage: str = "local-lvm"
    cloud_init_storage: str | None = None  # default: storage
    efi_storage: str | None = None  # default: storage
    bridge: str = "vmbr0"
    vlan: int | None = None
    firmware: str = "uefi"  # uefi | bios
    cpu_type: str = "x86-64-v2-AES"
    scsi_controller: str = "virtio-scsi-single"

    @property
    def cloud_init_pool(self) -> str:
        return self.cloud_init_storage or self.storage

    @property
    def efi_pool(self) -> str:
        return self.efi_storage or self.storage

    @property
    def disk_size_gib(self) -> float:
        return size_gib(self.disk_size)

@dataclass(frozen=True)
class NixosSettings:
    release: str = CURRENT_STABLE_RELEASE
    locale: str = "en_US.UTF-8"
    timezone: str = "UTC"
    keymap: str = "us"
    packages: tuple[str, ...] = ("vim", "git", "htop")
    permit_root_login: str = "prohibit-password"  # prohibit-password | no
    flakes: bool = True
    auto_gc: bool = True

@dataclass(frozen=True)
class UserSettings:
    name: str
    ssh_keys: tuple[str, ...] = ()
    sudo: bool = True
    groups: tuple[str, ...] = ()

@dataclass(frozen=True)
class IsoSettings:
    channel: str | None = None  # default: nixos-<release>
    volume: str | None = None  # local:iso/<file>.iso already on PVE storage
    url: str | None = None  # pinned https URL (needs sha256); latest-* only via nixgold.lock
    sha256: str | None = None
    storage: str = "local"  # where PVE keeps downloaded ISOs
    download_on_pve: bool = True  # PVE fetches the URL itself (iso_download_pve)

@dataclass(frozen=True)
class BuildSettings:
    dialect: str = "auto"  # auto | plugin | bundled
    output_dir: str = "build"
    boot_wait: str = "10s"  # before the first key: ISO boot menu
    live_boot_wait: str = "60s"  # after the menu: until the live shell is ready
    key_interval: str = "20ms"  # boot_key_interval
    http_bind_address: str | None = None
    http_interface: str | None = None
    http_port: int | None = None  # fixed port for firewalls (http_port_min = max)
    status_port: int = 8799  # install.sh reports its steps here (same address as Packer's HTTP server); 0: off
    install_report_wait: str = "3m"  # no report this long after the boot command: say why that may be; 0s: never
    ssh_timeout: str = "45m"  # install + reboot must finish within this
    task_timeout: str = "15m"
    packer: str = "packer"  # binary

@dataclass(frozen=True)
class VerifySettings:
    profile: str = "nixos"  # nixos | generic
    clones: int = 2
    clone_mode: str = "auto"  # auto (linked when possible) | linked | full
    ciuser: str = "nixgold"
    ipconfig0: str = "ip=dhcp"
    nameserver: str | None = None
    disk_grow: str = "+1G"
    agent_timeout: str = "5m"
    ssh_timeout: str = "3m"
    checks_dir: str | None = None  # extra check modules (test_*.py) to run

@dataclass(frozen=True)
class RefreshSettings:
    """The nightly refresh (`invoke refresh`): where it builds aside, archives, and locks."""

    lock_vmid: int = 9005  # a diskless marker VM here is the cluster-wide lock while a refresh runs
    staging_vmids: str = "9006-9009"  # the candidate is built at the first free id ("9006" for just one)
    archive_vmids: str = "9010-9029"  # replaced templates are archived here
    keep: int = 3  # verified archives kept
    on_linked_clones: str = "fail"  # fail | promote-by-name
    lock_timeout: str = "3h"  # a marker its run has not updated for this long is stale (taken over)

    @property
    def staging(self) -> range:
        return vmid_range(self.staging_vmids)

    @property
    def archives(self) -> range:
        return vmid_range(self.archive_vmids)

def vmid_range(text: str) -> range:
    """``"9006-9009"`` -> 9006..9009 (inclusive), ``"9006"`` -> just 9006; ValueError otherwise."""
    first, sep, last = text.strip().partition("-")
    if not first.isdigit() or (sep and not last.isdigit()):
        raise ValueError(f"not a vmid or a range FIRST-LAST: {text!r}")
    return range(int(first), int(last if sep else first) + 1)

@dataclass(frozen=True)
class Config:
    proxmox: ProxmoxSettings = field(default_factory=ProxmoxSettings)
    template: TemplateSettings = field(default_factory=TemplateSettings)
    vm: VmSettings = field(default_factory=VmSettings)
    nixos: NixosSettings = field(default_factory=NixosSettings)
    iso: IsoSettings = field(default_factory=IsoSettings)
    users: tuple[UserSettings, ...] = ()
    build: BuildSettings = field(default_factory=BuildSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    source: str | None = field(default=None, compare=False)  # path of the file, for messages
    #: The refresh builds its candidate from the user's config placed elsewhere (a staging vmid, another
    #: name and tag): the candidate's files and manifest carry the hash of the config the user wrote.
    origin_hash: str | None = field(default=None, compare=False)

    @property
    def channel(self) -> str:
        return self.iso.channel or f"nixos-{self.nixos.release}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no secrets live in Config), used for hashing and `invoke config`."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("origin_hash")
        return _jsonable(data)

    def config_hash(self) -> str:
        if self.origin_hash:
            return self.origin_hash
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
