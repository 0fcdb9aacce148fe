"""The typed nixgold configuration: TOML file < environment < command-line flags.

Where the file comes from (first match wins): ``--config PATH``, ``$NIXGOLD_CONFIG``,
``./nixgold.toml``. Secrets never live in the file: they come from the environment
(see :class:`Credentials`). Every value is validated before anything is written or
contacted; :class:`~nixgold.errors.ConfigError` lists every bad key at once, each with
the key path, the value, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, ConfigIssue

DEFAULT_CONFIG_NAME = "nixgold.toml"
CONFIG_ENV = "NIXGOLD_CONFIG"

#: The NixOS release used when none is configured: the current stable.
CURRENT_STABLE_RELEASE = "26.05"
#: Oldest release whose options our configuration.nix uses (services.openssh.settings).
OLDEST_SUPPORTED_RELEASE = "23.05"

# --- value formats (PVE formats from pve-common JSONSchema.pm) -------------------------
_DNS_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
DNS_NAME_RE = re.compile(rf"^({_DNS_LABEL}\.)*{_DNS_LABEL}$")
NODE_RE = re.compile(rf"^{_DNS_LABEL}$")
STORAGE_ID_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]$")
BRIDGE_RE = re.compile(r"^[-_.\w]+$", re.ASCII)
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*$")
DISK_SIZE_RE = re.compile(r"^(\d+)([KMGT])$")
DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|ms|s|m|h))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
RELEASE_RE = re.compile(r"^(\d{2})\.(05|11)$")
ISO_VOLUME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9\-_.]*:iso/[^/\s]+\.iso$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TOKEN_ID_RE = re.compile(r"^[^\s!@:]+@[A-Za-z][A-Za-z0-9.\-_]*![A-Za-z][A-Za-z0-9.\-_]*$")
USERID_RE = re.compile(r"^[^\s!@:]+@[A-Za-z][A-Za-z0-9.\-_]*$")
POSIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
NIX_IDENT = r"[A-Za-z_][A-Za-z0-9_'-]*"
NIX_ATTR_PATH_RE = re.compile(rf"^{NIX_IDENT}(\.{NIX_IDENT})*$")
NIX_KEYWORDS = frozenset({"if", "then", "else", "let", "in", "with", "rec", "inherit", "assert", "or"})
LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[A-Za-z]+)?$|^C(\.UTF-8)?$")
TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
KEYMAP_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
IFACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
SIZE_UNITS = {"K": 1 / (1024 * 1024), "M": 1 / 1024, "G": 1, "T": 1024}
RESERVED_USERS = frozenset({"root", "nixos", "nobody", "sshd", "messagebus", "systemd-network"})
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


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
        m = DISK_SIZE_RE.fullmatch(self.disk_size)
        assert m, self.disk_size
        return int(m.group(1)) * SIZE_UNITS[m.group(2)]


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
class Config:
    proxmox: ProxmoxSettings = field(default_factory=ProxmoxSettings)
    template: TemplateSettings = field(default_factory=TemplateSettings)
    vm: VmSettings = field(default_factory=VmSettings)
    nixos: NixosSettings = field(default_factory=NixosSettings)
    iso: IsoSettings = field(default_factory=IsoSettings)
    users: tuple[UserSettings, ...] = ()
    build: BuildSettings = field(default_factory=BuildSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    source: str | None = field(default=None, compare=False)  # path of the file, for messages

    @property
    def channel(self) -> str:
        return self.iso.channel or f"nixos-{self.nixos.release}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no secrets live in Config), used for hashing and `invoke config`."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return _jsonable(data)

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --- secrets ----------------------------------------------------------------------------
REDACTED = "***"


@dataclass(frozen=True)
class Credentials:
    """Connection settings and secrets, from the environment only.

    ``PROXMOX_URL``, ``PROXMOX_TOKEN_ID`` (user@realm!tokenid), ``PROXMOX_TOKEN_SECRET``,
    and for password login (Packer's bundled builder): ``PROXMOX_USERNAME``,
    ``PROXMOX_PASSWORD``. ``PROXMOX_CA_BUNDLE`` names a PEM file to trust.
    """

    url: str | None = None
    token_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token_secret, self.password) if s)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def describe(self) -> dict[str, str | None]:
        return {
            "url": self.url,
            "token_id": self.token_id,
            "token_secret": REDACTED if self.token_secret else None,
            "username": self.username,
            "password": REDACTED if self.password else None,
            "ca_bundle": self.ca_bundle,
        }


def redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """Replace every occurrence of each secret (longest first) with ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def load_credentials(config: Config, env: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if env is None else env
    creds = Credentials(
        url=env.get("PROXMOX_URL") or config.proxmox.url,
        token_id=env.get("PROXMOX_TOKEN_ID") or config.proxmox.token_id,
        token_secret=env.get("PROXMOX_TOKEN_SECRET") or None,
        username=env.get("PROXMOX_USERNAME") or config.proxmox.username,
        password=env.get("PROXMOX_PASSWORD") or None,
        ca_bundle=env.get("PROXMOX_CA_BUNDLE") or config.proxmox.ca_bundle,
    )
    issues: list[ConfigIssue] = []
    if creds.url is not None:
        _check_api_url("PROXMOX_URL", creds.url, issues)
    if creds.token_id is not None and not TOKEN_ID_RE.fullmatch(creds.token_id):
        issues.append(ConfigIssue("PROXMOX_TOKEN_ID", creds.token_id, "user@realm!tokenid, e.g. nixgold@pve!build"))
    if creds.username is not None and not USERID_RE.fullmatch(creds.username):
        issues.append(ConfigIssue("PROXMOX_USERNAME", creds.username, "user@realm, e.g. root@pam"))
    if creds.ca_bundle is not None and not Path(creds.ca_bundle).is_file():
        issues.append(ConfigIssue("PROXMOX_CA_BUNDLE", creds.ca_bundle, "an existing PEM file"))
    if issues:
        raise ConfigError(issues, source="environment")
    return creds


def _check_api_url(key: str, url: str, issues: list[ConfigIssue]) -> None:
    if not re.fullmatch(r"^https://[^/\s:]+(:\d+)?(/api2/json)?/?$", url):
        issues.append(ConfigIssue(key, url, "https://<host>[:port][/api2/json], e.g. https://pve.lan:8006/api2/json"))


# --- loading ----------------------------------------------------------------------------
def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None,
                     cwd: Path | None = None) -> Path | None:
    """``--config`` > ``$NIXGOLD_CONFIG`` > ``./nixgold.toml`` (None when none exists)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.exists() else None


def load_config(path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None, require_file: bool = True) -> Config:
    """Find, read, merge and validate the configuration.

    ``overrides`` maps dotted key paths (``"template.vmid"``) to values from command-line
    flags; they win over the file.
    """
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    source = None
    if file is None:
        if require_file:
            raise ConfigError(
                ConfigIssue("config file", str(Path.cwd() / DEFAULT_CONFIG_NAME),
                            f"an existing file: copy nixgold.example.toml to {DEFAULT_CONFIG_NAME}, "
                            f"or pass --config PATH / set {CONFIG_ENV}"))
    else:
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(ConfigIssue("config file", str(file), f"a readable file ({exc.strerror})")) from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(ConfigIssue("config file", str(file), f"valid TOML ({exc})")) from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
        origins[dotted] = "flag"
    return parse_config(raw, source=source, origins=origins)


def parse_override(assignment: str) -> tuple[str, Any]:
    """Parse ``--set key.path=value``; the value is read as TOML, else taken as a string."""
    if "=" not in assignment:
        raise ConfigError(ConfigIssue("--set", assignment, "KEY=VALUE, e.g. vm.cores=4"))
    key, _, text = assignment.partition("=")
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(ConfigIssue(dotted, value, f"'{part}' to be a table"))
    node[parts[-1]] = value


# --- validation ---------------------------------------------------------------------------
_SECTIONS: dict[str, type] = {
    "proxmox": ProxmoxSettings,
    "template": TemplateSettings,
    "vm": VmSettings,
    "nixos": NixosSettings,
    "iso": IsoSettings,
    "build": BuildSettings,
    "verify": VerifySettings,
}


class _Issues:
    def __init__(self, origins: Mapping[str, str]):
        self.items: list[ConfigIssue] = []
        self.origins = origins

    def add(self, key: str, value: Any, expected: str) -> None:
        origin = self.origins.get(key)
        shown_key = f"{key} (from {origin})" if origin else key
        self.items.append(ConfigIssue(shown_key, value, expected))


def parse_config(raw: Mapping[str, Any], *, source: str | None = None,
                 origins: Mapping[str, str] | None = None) -> Config:
    """Validate raw TOML data into a :class:`Config` or raise one ConfigError listing all issues."""
    issues = _Issues(origins or {})
    sections: dict[str, Any] = {}
    known = set(_SECTIONS) | {"users"}
    for key in raw:
        if key not in known:
            issues.add(key, raw[key], f"one of the sections {sorted(known)}{_did_you_mean(key, known)}")
    for name, cls in _SECTIONS.items():
        sections[name] = _build_section(name, cls, raw.get(name, {}), issues)
    users = _build_users(raw.get("users", []), issues)
    # Values that failed their type check were reported and replaced by defaults, so the
    # value checks below still run and every problem is reported in one go.
    config = Config(users=users, source=source, **sections)
    _validate(config, issues)
    if issues.items:
        raise ConfigError(issues.items, source=source)
    return config


def _did_you_mean(key: str, options: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build_section(name: str, cls: type, data: Any, issues: _Issues) -> Any:
    if not isinstance(data, dict):
        issues.add(name, data, "a table ([" + name + "])")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{name}.{key}"
        if key not in fields:
            issues.add(path, value, f"a known key of [{name}]: {sorted(fields)}{_did_you_mean(key, fields)}")
            continue
        coerced = _coerce(path, value, fields[key].type, issues)
        if coerced is not _INVALID:
            kwargs[key] = coerced
    return cls(**kwargs)


_INVALID = object()


def _coerce(path: str, value: Any, annotation: Any, issues: _Issues) -> Any:
    """Check the TOML value's type against the dataclass annotation (a string here)."""
    ann = str(annotation)
    optional = "None" in ann
    base = ann.replace(" | None", "")
    if value is None and optional:
        return None
    if base == "bool":
        if isinstance(value, bool):
            return value
        issues.add(path, value, "true or false")
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        issues.add(path, value, "an integer")
    elif base == "str":
        if isinstance(value, str):
            return value
        issues.add(path, value, "a string")
    elif base.startswith("tuple[str"):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        issues.add(path, value, "a list of strings")
    else:  # pragma: no cover - a field type the loader does not know
        raise TypeError(f"unsupported config field type {ann} for {path}")
    return _INVALID


def _build_users(data: Any, issues: _Issues) -> tuple[UserSettings, ...]:
    if not isinstance(data, list):
        issues.add("users", data, "an array of tables ([[users]])")
        return ()
    users = []
    for index, item in enumerate(data):
        path = f"users[{index}]"
        if not isinstance(item, dict):
            issues.add(path, item, "a table with name and ssh_keys")
            continue
        fields = {f.name: f for f in dataclasses.fields(UserSettings)}
        kwargs: dict[str, Any] = {}
        for key, value in item.items():
            if key not in fields:
                issues.add(f"{path}.{key}", value, f"a known user key: {sorted(fields)}{_did_you_mean(key, fields)}")
                continue
            coerced = _coerce(f"{path}.{key}", value, fields[key].type, issues)
            if coerced is not _INVALID:
                kwargs[key] = coerced
        if "name" not in kwargs:
            if not any(i.key.startswith(f"{path}.name") for i in issues.items):
                issues.add(f"{path}.name", None, "a user name (required)")
            continue
        users.append(UserSettings(**kwargs))
    return tuple(users)


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration string like ``1m30s`` (already validated)."""
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in _DURATION_PART_RE.findall(text))


def _release_key(release: str) -> tuple[int, int]:
    year, month = release.split(".")
    return int(year), int(month)


def _validate(c: Config, issues: _Issues) -> None:
    add = issues.add
    # proxmox
    if not NODE_RE.fullmatch(c.proxmox.node):
        add("proxmox.node", c.proxmox.node, "a PVE node name (letters, digits, '-'; no '_' or dots)")
    if c.proxmox.url is not None:
        tmp: list[ConfigIssue] = []
        _check_api_url("proxmox.url", c.proxmox.url, tmp)
        for i in tmp:
            add(i.key, i.value, i.expected)
    if c.proxmox.token_id is not None and not TOKEN_ID_RE.fullmatch(c.proxmox.token_id):
        add("proxmox.token_id", c.proxmox.token_id, "user@realm!tokenid, e.g. nixgold@pve!build")
    if c.proxmox.username is not None and not USERID_RE.fullmatch(c.proxmox.username):
        add("proxmox.username", c.proxmox.username, "user@realm, e.g. root@pam")
    if not 5 <= c.proxmox.timeout <= 600:
        add("proxmox.timeout", c.proxmox.timeout, "seconds between 5 and 600 (30 or more is wise)")
    # template
    if not 100 <= c.template.vmid <= 999_999_999:
        add("template.vmid", c.template.vmid, "a VM id between 100 and 999999999")
    if not DNS_NAME_RE.fullmatch(c.template.name) or len(c.template.name) > 253:
        add("template.name", c.template.name, "a DNS-style name (letters, digits, '-', dots; no '_' or spaces)")
    if not c.template.tags:
        add("template.tags", list(c.template.tags), "at least one tag (nixgold finds its templates by tag)")
    for i, tag in enumerate(c.template.tags):
        if not TAG_RE.fullmatch(tag):
            add(f"template.tags[{i}]", tag, "a PVE tag: letters, digits, '_', '-', '+', '.' (not starting with - + .)")
    if c.template.pool is not None and not STORAGE_ID_RE.fullmatch(c.template.pool):
        add("template.pool", c.template.pool, "a PVE pool id")
    # vm
    if not 1 <= c.vm.cores <= 128:
        add("vm.cores", c.vm.cores, "between 1 and 128")
    if not 1024 <= c.vm.memory <= 4 * 1024 * 1024:
        add("vm.memory", c.vm.memory, "MiB between 1024 (nixos-install needs it) and 4194304")
    m = DISK_SIZE_RE.fullmatch(c.vm.disk_size)
    if not m:
        add("vm.disk_size", c.vm.disk_size, "a size like 20G (digits followed by K, M, G or T)")
    elif int(m.group(1)) * SIZE_UNITS[m.group(2)] < 8:
        add("vm.disk_size", c.vm.disk_size, "at least 8G (the NixOS closure and the installer need room)")
    if c.vm.disk_type not in ("scsi", "virtio", "sata"):
        add("vm.disk_type", c.vm.disk_type, "scsi, virtio or sata")
    if c.vm.disk_format not in ("raw", "qcow2"):
        add("vm.disk_format", c.vm.disk_format, "raw (LVM, ZFS, Ceph storages) or qcow2 (directory storages)")
    for key in ("storage", "cloud_init_storage", "efi_storage"):
        value = getattr(c.vm, key)
        if value is not None and not STORAGE_ID_RE.fullmatch(value):
            add(f"vm.{key}", value, "a PVE storage id (e.g. local-lvm)")
    if not BRIDGE_RE.fullmatch(c.vm.bridge):
        add("vm.bridge", c.vm.bridge, "a bridge id (e.g. vmbr0)")
    if c.vm.vlan is not None and not 1 <= c.vm.vlan <= 4094:
        add("vm.vlan", c.vm.vlan, "a VLAN tag between 1 and 4094")
    if c.vm.firmware not in ("uefi", "bios"):
        add("vm.firmware", c.vm.firmware, "uefi or bios")
    if not re.fullmatch(r"^[A-Za-z0-9\-_.+]+$", c.vm.cpu_type):
        add("vm.cpu_type", c.vm.cpu_type, "a QEMU CPU model (e.g. host, x86-64-v2-AES)")
    if c.vm.scsi_controller not in ("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi"):
        add("vm.scsi_controller", c.vm.scsi_controller, "one of lsi, lsi53c810, virtio-scsi-pci, virtio-scsi-single, megasas, pvscsi")
    # nixos
    rel = RELEASE_RE.fullmatch(c.nixos.release)
    if not rel:
        add("nixos.release", c.nixos.release, f"a NixOS release like {CURRENT_STABLE_RELEASE} (YY.05 or YY.11)")
    elif not (_release_key(OLDEST_SUPPORTED_RELEASE) <= _release_key(c.nixos.release)
              <= _release_key(CURRENT_STABLE_RELEASE[:3] + "11")):
        add("nixos.release", c.nixos.release,
            f"a release between {OLDEST_SUPPORTED_RELEASE} and {CURRENT_STABLE_RELEASE[:3]}11 "
            f"(older releases lack services.openssh.settings)")
    if not LOCALE_RE.fullmatch(c.nixos.locale):
        add("nixos.locale", c.nixos.locale, "a locale like en_US.UTF-8")
    if not TIMEZONE_RE.fullmatch(c.nixos.timezone):
        add("nixos.timezone", c.nixos.timezone, "a tz database name like Europe/Berlin (no spaces)")
    if not KEYMAP_RE.fullmatch(c.nixos.keymap):
        add("nixos.keymap", c.nixos.keymap, "a console keymap name like us or de")
    for i, pkg in enumerate(c.nixos.packages):
        if not NIX_ATTR_PATH_RE.fullmatch(pkg) or any(p in NIX_KEYWORDS for p in pkg.split(".")):
            add(f"nixos.packages[{i}]", pkg, "a nixpkgs attribute path like htop or python3Packages.requests")
    if c.nixos.permit_root_login not in ("prohibit-password", "no"):
        add("nixos.permit_root_login", c.nixos.permit_root_login, "prohibit-password (key only) or no")
    # users
    seen: set[str] = set()
    for i, user in enumerate(c.users):
        if not POSIX_USER_RE.fullmatch(user.name):
            add(f"users[{i}].name", user.name, "a POSIX user name (lowercase letters, digits, '_', '-'; max 32)")
        elif user.name in RESERVED_USERS:
            add(f"users[{i}].name", user.name, f"a name that is not reserved ({', '.join(sorted(RESERVED_USERS))})")
        elif user.name in seen:
            add(f"users[{i}].name", user.name, "a name not used by another [[users]] entry")
        seen.add(user.name)
        for j, key in enumerate(user.ssh_keys):
            problem = ssh_public_key_problem(key)
            if problem:
                add(f"users[{i}].ssh_keys[{j}]", key, problem)
        for j, group in enumerate(user.groups):
            if not POSIX_USER_RE.fullmatch(group):
                add(f"users[{i}].groups[{j}]", group, "a POSIX group name")
    # iso
    if c.iso.channel is not None and not re.fullmatch(r"^nixos-(\d{2}\.(05|11)|unstable)$", c.iso.channel):
        add("iso.channel", c.iso.channel, "a channel like nixos-26.05")
    if c.iso.volume is not None and c.iso.url is not None:
        add("iso.url", c.iso.url, "either iso.volume or iso.url, not both")
    if c.iso.volume is not None and not ISO_VOLUME_RE.fullmatch(c.iso.volume):
        add("iso.volume", c.iso.volume, "a PVE ISO volume like local:iso/nixos-minimal-26.05.x86_64-linux.iso")
    if c.iso.url is not None:
        if not re.fullmatch(r"^https://[^\s/]+/\S+\.iso$", c.iso.url):
            add("iso.url", c.iso.url, "an https:// URL ending in .iso")
        elif is_floating_iso_url(c.iso.url):
            if c.iso.sha256 is not None:
                add("iso.sha256", c.iso.sha256,
                    "no sha256 for a latest-* URL (it changes under you); `invoke lock` pins both")
        elif c.iso.sha256 is None:
            add("iso.sha256", None, "the ISO's sha256 (64 hex digits) when iso.url is set")
    if c.iso.sha256 is not None and not SHA256_RE.fullmatch(c.iso.sha256):
        add("iso.sha256", c.iso.sha256, "64 lowercase hex digits")
    if not STORAGE_ID_RE.fullmatch(c.iso.storage):
        add("iso.storage", c.iso.storage, "a PVE storage id with ISO content (e.g. local)")
    # build
    if c.build.dialect not in ("auto", "plugin", "bundled"):
        add("build.dialect", c.build.dialect, "auto, plugin (Packer >= 1.10 + proxmox plugin) or bundled (Packer 1.6)")
    for key in ("boot_wait", "live_boot_wait", "key_interval", "ssh_timeout", "task_timeout"):
        value = getattr(c.build, key)
        if not DURATION_RE.fullmatch(value) or duration_seconds(value) <= 0:
            add(f"build.{key}", value, "a positive duration like 10s, 1m30s or 20ms")
    if DURATION_RE.fullmatch(c.build.task_timeout) and duration_seconds(c.build.task_timeout) < 600:
        add("build.task_timeout", c.build.task_timeout, "at least 10m (ISO downloads and conversions are slow)")
    if DURATION_RE.fullmatch(c.build.key_interval) and duration_seconds(c.build.key_interval) > 1:
        add("build.key_interval", c.build.key_interval, "at most 1s per key")
    if c.build.http_bind_address is not None and c.build.http_interface is not None:
        add("build.http_interface", c.build.http_interface, "either build.http_bind_address or build.http_interface, not both")
    if c.build.http_bind_address is not None:
        try:
            ipaddress.IPv4Address(c.build.http_bind_address)
        except ValueError:
            add("build.http_bind_address", c.build.http_bind_address, "an IPv4 address of this machine reachable from the VM")
    if c.build.http_interface is not None and not IFACE_RE.fullmatch(c.build.http_interface):
        add("build.http_interface", c.build.http_interface, "a network interface name like eth0")
    if c.build.http_port is not None and not 1024 <= c.build.http_port <= 65535:
        add("build.http_port", c.build.http_port, "a port between 1024 and 65535")
    if c.build.status_port != 0 and not 1024 <= c.build.status_port <= 65535:
        add("build.status_port", c.build.status_port, "a port between 1024 and 65535, or 0 to turn install reports off")
    elif c.build.status_port != 0 and c.build.status_port == c.build.http_port:
        add("build.status_port", c.build.status_port, "a port other than build.http_port (Packer's HTTP server)")
    if not re.fullmatch(r"^[A-Za-z0-9_.\-/]+$", c.build.output_dir):
        add("build.output_dir", c.build.output_dir, "a relative or absolute directory path without spaces")
    # verify
    if c.verify.profile not in ("nixos", "generic"):
        add("verify.profile", c.verify.profile, "nixos or generic")
    if not 1 <= c.verify.clones <= 8:
        add("verify.clones", c.verify.clones, "between 1 and 8")
    if c.verify.clone_mode not in ("auto", "linked", "full"):
        add("verify.clone_mode", c.verify.clone_mode, "auto, linked or full")
    if not POSIX_USER_RE.fullmatch(c.verify.ciuser) or c.verify.ciuser in RESERVED_USERS:
        add("verify.ciuser", c.verify.ciuser, "a POSIX user name that is not reserved")
    problem = ipconfig_problem(c.verify.ipconfig0)
    if problem:
        add("verify.ipconfig0", c.verify.ipconfig0, problem)
    if c.verify.nameserver is not None:
        try:
            ipaddress.ip_address(c.verify.nameserver)
        except ValueError:
            add("verify.nameserver", c.verify.nameserver, "an IP address")
    if not re.fullmatch(r"^\+\d+[KMGT]$", c.verify.disk_grow):
        add("verify.disk_grow", c.verify.disk_grow, "a growth like +1G (the resize check needs the disk to grow)")
    for key in ("agent_timeout", "ssh_timeout"):
        value = getattr(c.verify, key)
        if not DURATION_RE.fullmatch(value) or duration_seconds(value) <= 0:
            add(f"verify.{key}", value, "a positive duration like 5m")
    if c.verify.checks_dir is not None and not Path(c.verify.checks_dir).is_dir():
        add("verify.checks_dir", c.verify.checks_dir, "an existing directory of test_*.py check files")


def is_floating_iso_url(url: str) -> bool:
    """True for URLs like .../latest-nixos-minimal-x86_64-linux.iso that move over time."""
    return "latest-" in url.rsplit("/", 1)[-1]


def ssh_public_key_problem(line: str) -> str | None:
    """None when ``line`` is one OpenSSH public key, else what was expected."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if "\n" in line or "\r" in line:
        return "one public key on one line"
    if "\0" in line:
        return "a key without NUL characters (Nix strings cannot hold them)"
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        return f"an OpenSSH public key '<type> <base64> [comment]' with type in {sorted(SSH_KEY_TYPES)}"
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError) as exc:  # cryptography raises ValueError for bad keys
        return f"a public key that parses ({exc})"
    except Exception as exc:  # unsupported key types raise UnsupportedAlgorithm
        return f"a supported public key ({exc})"
    return None


def ipconfig_problem(text: str) -> str | None:
    """Validate a PVE ``ipconfigN`` value (format pve-qm-ipconfig, IPv4 part)."""
    expected = "ip=dhcp or ip=<address>/<prefix>[,gw=<address>] (PVE ipconfig0)"
    parts: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in ("ip", "gw", "ip6", "gw6") or key in parts:
            return expected
        parts[key] = value
    ip = parts.get("ip")
    if ip is None and "ip6" not in parts:
        return expected
    if ip is not None and ip != "dhcp":
        try:
            ipaddress.IPv4Interface(ip)
            if "/" not in ip:
                return expected
        except ValueError:
            return expected
    if "gw" in parts:
        if ip in (None, "dhcp"):
            return "gw only together with a static ip=<address>/<prefix>"
        try:
            ipaddress.IPv4Address(parts["gw"])
        except ValueError:
            return expected
    return None


def describe_config(config: Config, creds: Credentials) -> dict[str, Any]:
    """The effective configuration as printed by `invoke config` (secrets redacted)."""
    return {"source": config.source, "credentials": creds.describe(), **config.to_dict()}
