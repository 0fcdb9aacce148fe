"""Every rule a configuration value must follow, with what was expected (PVE formats from pve-common JSONSchema.pm)."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from nixgold.config.model import CURRENT_STABLE_RELEASE, OLDEST_SUPPORTED_RELEASE, Config, vmid_range
from nixgold.errors import ConfigError, ConfigIssue, Hidden
from nixgold.units import duration_seconds, size_gib

# --- value formats (PVE formats from pve-common JSONSchema.pm) -------------------------
_DNS_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"

DNS_NAME_RE = re.compile(rf"^({_DNS_LABEL}\.)*{_DNS_LABEL}$")

NODE_RE = re.compile(rf"^{_DNS_LABEL}$")

STORAGE_ID_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]$")

BRIDGE_RE = re.compile(r"^[-_.\w]+$", re.ASCII)

TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*$")

DISK_SIZE_RE = re.compile(r"^(\d+)([KMGT])$")

DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|ms|s|m|h))+$")

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

def url_credentials(url: str) -> bool:
    """True when a URL carries a user name or password (``https://user:pass@host/``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "@" in url
    return "@" in parts.netloc


def api_url_problem(url: str) -> str | None:
    """What is wrong with a Proxmox API URL (None: nothing)."""
    if url_credentials(url):
        return "no user or password in the URL: put the token in PROXMOX_TOKEN_ID/PROXMOX_TOKEN_SECRET"
    if not re.fullmatch(r"^https://[^/\s:@]+(:\d+)?(/api2/json)?/?$", url):
        return "https://<host>[:port][/api2/json], e.g. https://pve.lan:8006/api2/json"
    return None


def url_value(url: str) -> object:
    """How a URL may appear in an error message: not at all when it carries credentials."""
    return Hidden("the URL holds credentials") if url_credentials(url) else url


class Issues:
    def __init__(self, origins: Mapping[str, str]):
        self.items: list[ConfigIssue] = []
        self.origins = origins

    def add(self, key: str, value: Any, expected: str) -> None:
        origin = self.origins.get(key)
        shown_key = f"{key} (from {origin})" if origin else key
        self.items.append(ConfigIssue(shown_key, value, expected))

def _release_key(release: str) -> tuple[int, int]:
    year, month = release.split(".")
    return int(year), int(month)

def validate(c: Config, issues: Issues) -> None:
    add = issues.add
    # proxmox
    if not NODE_RE.fullmatch(c.proxmox.node):
        add("proxmox.node", c.proxmox.node, "a PVE node name (letters, digits, '-'; no '_' or dots)")
    if c.proxmox.url is not None and (problem := api_url_problem(c.proxmox.url)):
        add("proxmox.url", url_value(c.proxmox.url), problem)
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
    elif size_gib(c.vm.disk_size) < 8:
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
    if c.iso.url is not None and url_credentials(c.iso.url):
        add("iso.url", url_value(c.iso.url), "a URL without a user or password (it would land in the Packer "
                                             "template, the manifest and the template's description)")
    elif c.iso.volume is not None and c.iso.url is not None:
        add("iso.url", c.iso.url, "either iso.volume or iso.url, not both")
    if c.iso.volume is not None and not ISO_VOLUME_RE.fullmatch(c.iso.volume):
        add("iso.volume", c.iso.volume, "a PVE ISO volume like local:iso/nixos-minimal-26.05.x86_64-linux.iso")
    if c.iso.url is not None and not url_credentials(c.iso.url):
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
    if not DURATION_RE.fullmatch(c.build.install_report_wait):
        add("build.install_report_wait", c.build.install_report_wait, "a duration like 3m or 90s (0s: no warning)")
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
    validate_refresh(c, issues)

def validate_refresh(c: Config, issues: Issues) -> None:
    """[refresh]: vmids that do not overlap each other or template.vmid, enough archive slots, a lock
    timeout longer than a build may take (else a running build's marker would look stale)."""
    add, r = issues.add, c.refresh
    ids: dict[str, range] = {"template.vmid": range(c.template.vmid, c.template.vmid + 1),
                             "refresh.lock_vmid": range(r.lock_vmid, r.lock_vmid + 1)}
    if not 100 <= r.lock_vmid <= 999_999_999:
        add("refresh.lock_vmid", r.lock_vmid, "a VM id between 100 and 999999999")
    for key in ("staging_vmids", "archive_vmids"):
        value = getattr(r, key)
        try:
            span = vmid_range(value)
        except ValueError:
            add(f"refresh.{key}", value, "a vmid (\"9006\") or a range FIRST-LAST (\"9006-9009\")")
            continue
        if not span or span.start < 100 or span.stop - 1 > 999_999_999 or len(span) > 1000:
            add(f"refresh.{key}", value, "FIRST <= LAST, both between 100 and 999999999, at most 1000 ids")
            continue
        ids[f"refresh.{key}"] = span
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if ids[a].start < ids[b].stop and ids[b].start < ids[a].stop:
                add(b, getattr(r, b.split(".", 1)[1]) if b.startswith("refresh.") else c.template.vmid,
                    f"ids that do not overlap {a} ({ids[a].start}-{ids[a].stop - 1})")
    if not 1 <= r.keep <= 100:
        add("refresh.keep", r.keep, "between 1 and 100 verified archives")
    elif "refresh.archive_vmids" in ids and len(ids["refresh.archive_vmids"]) < r.keep + 1:
        add("refresh.archive_vmids", r.archive_vmids,
            f"at least refresh.keep + 1 = {r.keep + 1} ids (a new archive is made before the oldest goes)")
    if r.on_linked_clones not in ("fail", "promote-by-name"):
        add("refresh.on_linked_clones", r.on_linked_clones, "fail or promote-by-name")
    if not DURATION_RE.fullmatch(r.lock_timeout) or duration_seconds(r.lock_timeout) <= 0:
        add("refresh.lock_timeout", r.lock_timeout, "a positive duration like 3h")
    elif all(DURATION_RE.fullmatch(v) for v in (c.build.ssh_timeout, c.build.task_timeout)):
        floor = duration_seconds(c.build.ssh_timeout) + duration_seconds(c.build.task_timeout)
        if duration_seconds(r.lock_timeout) <= floor:
            add("refresh.lock_timeout", r.lock_timeout,
                f"longer than build.ssh_timeout + build.task_timeout ({floor / 60:.0f} min): a build that long is "
                f"still alive")

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


def check_dialect_fits(config: Config, dialect: str) -> None:
    """Refuse settings the dialect's builder cannot express (all problems at once)."""
    if dialect != "bundled":
        return
    issues = []
    if config.vm.firmware == "uefi":
        issues.append(ConfigIssue(
            "vm.firmware", "uefi",
            "bios: Packer 1.6's bundled proxmox builder has no UEFI support; "
            "install Packer >= 1.10 (plugin dialect) for UEFI"))
    if config.build.http_interface is not None:
        issues.append(ConfigIssue(
            "build.http_interface", config.build.http_interface,
            "no http_interface with Packer 1.6 (its proxmox builder rejects it whenever it is set); set "
            "build.http_bind_address to this machine's address as seen from the VM instead"))
    if issues:
        raise ConfigError(issues)
