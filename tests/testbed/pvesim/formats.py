"""Named formats and property strings as pve-common's JSONSchema.pm checks them.

A ``format`` in the PVE schema is either a *name* (``pve-vmid``, ``dns-name``,
``pve-configid-list``...) with a verifier that dies with a message, or a
*hash* (``net[n]``, ``scsi[n]``...) describing a property string
``key=value,key=value`` that ``parse_property_string`` parses and checks key
by key.  Verifier messages are copied from pve-common / qemu-server so the
400 bodies read like PVE's.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any, Callable

log = logging.getLogger(__name__)


class FormatError(Exception):
    """A verifier ``die``: the message keeps PVE's trailing newline."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        if not message.endswith("\n"):
            message += "\n"
        self.errors = errors or {}
        super().__init__(message)

    def text(self) -> str:
        """PVE::Exception stringify: message + one ``path: msg`` line per nested error."""
        msg = str(self)
        for key, value in self.errors.items():
            msg += f"{key}: {value}\n"
        return msg


# --- regexes from pve-common -------------------------------------------------
CONFIGID_RE = re.compile(r"^[a-z][a-z0-9_-]+$", re.I)
STORAGE_ID_RE = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.I)
VMID_RE = re.compile(r"^[1-9][0-9]{2,8}$")
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
DNS_LABEL = r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)"
DNS_NAME_RE = re.compile(rf"^({DNS_LABEL}\.)*{DNS_LABEL}$")
URLENCODED_RE = re.compile(r"^[-%a-zA-Z0-9_.!~*'()]*$")
TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.I)
MAC_RE = re.compile(r"^[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$", re.I)
BRIDGE_RE = re.compile(r"^[-_.\w\d]+$")
POOL_RE = re.compile(r"^[A-Za-z0-9\-_/]+$")
REALM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9.\-_]+$")
USERID_RE = re.compile(r"^[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+$")
VOLUME_ID_RE = re.compile(r"^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$", re.I)
DISK_SIZE_RE = re.compile(r"^(\d+(\.\d+)?)([KMGT])?$")
STORAGE_CONTENT = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"}


def split_list(text: str | None) -> list[str]:
    """PVE::Tools::split_list: split on NUL, or on ``,``/``;``/whitespace."""
    text = text or ""
    if "\0" in text:
        return text.split("\0")
    return [part for part in re.split(r"[,;\s]+", text.strip()) if part]


def parse_boolean(value: str) -> int | None:
    if re.fullmatch(r"(?i)1|on|yes|true", value):
        return 1
    if re.fullmatch(r"(?i)0|off|no|false", value):
        return 0
    return None


def _verify_regex(regex: re.Pattern[str], message: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not regex.match(value):
            raise FormatError(message.format(value=value))

    return check


def _verify_ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IPv4 address") from None


def _verify_ipv6(value: str) -> None:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IPv6 address") from None


def _verify_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise FormatError("value does not look like a valid IP address") from None


def _cidr(value: str, version: int | None) -> bool:
    if "/" not in value:
        return False
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return False
    return version is None or iface.version == version


def _verify_cidr(version: int | None, label: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not _cidr(value, version):
            raise FormatError(f"value does not look like a valid {label}")

    return check


def _verify_ipv4_config(value: str) -> None:
    if value in ("dhcp", "manual") or _cidr(value, 4):
        return
    raise FormatError("value does not look like a valid ipv4 network configuration")


def _verify_ipv6_config(value: str) -> None:
    if value in ("dhcp", "manual", "auto") or _cidr(value, 6):
        return
    raise FormatError("value does not look like a valid ipv6 network configuration")


def _verify_volume_id(value: str) -> None:
    if not VOLUME_ID_RE.match(value):
        raise FormatError(f"unable to parse volume ID '{value}'")


def _verify_volume_id_or_qm_path(value: str) -> None:
    if value in ("none", "cdrom") or value.startswith("/"):
        return
    _verify_volume_id(value)


def _verify_volume_id_or_absolute_path(value: str) -> None:
    if value.startswith("/"):
        return
    _verify_volume_id(value)


def _verify_content(value: str) -> None:
    if value not in STORAGE_CONTENT:
        raise FormatError(f"invalid content type '{value}'")


def _verify_disk_size(value: str) -> None:
    if not DISK_SIZE_RE.match(value):
        raise FormatError(f"unable to parse size '{value}'")


def _verify_address_list(value: str) -> None:
    for addr in split_list(value):
        _verify_ip(addr)


DRIVE_PREFIXES = {"ide": 3, "sata": 5, "scsi": 30, "virtio": 15}


def is_valid_drivename(name: str) -> bool:
    m = re.fullmatch(r"(ide|sata|scsi|virtio)(\d+)", name)
    if m:
        return int(m.group(2)) <= DRIVE_PREFIXES[m.group(1)]
    return name in ("efidisk0", "tpmstate0")


def _verify_bootdev(value: str) -> None:
    if is_valid_drivename(value) and not value.startswith(("efidisk", "tpmstate")):
        return
    m = re.fullmatch(r"(net|usb|hostpci)(\d+)", value)
    if m and int(m.group(2)) <= {"net": 31, "usb": 4, "hostpci": 15}[m.group(1)]:
        return
    raise FormatError(f"invalid boot device '{value}'")


def _verify_bootdisk(value: str) -> None:
    if not is_valid_drivename(value):
        raise FormatError(f"invalid boot disk '{value}'")


def _verify_priv(value: str) -> None:
    from .auth import ALL_PRIVILEGES  # late import: auth imports formats

    if value not in ALL_PRIVILEGES:
        raise FormatError(f"invalid privilege '{value}'")


VERIFIERS: dict[str, Callable[[str], None]] = {
    "pve-vmid": _verify_regex(VMID_RE, "value does not look like a valid VM ID"),
    "pve-node": _verify_regex(NODE_RE, "value does not look like a valid node name"),
    "dns-name": _verify_regex(DNS_NAME_RE, "value does not look like a valid DNS name"),
    "pve-storage-id": _verify_regex(STORAGE_ID_RE, "storage ID '{value}' contains illegal characters"),
    "pve-configid": _verify_regex(CONFIGID_RE, "invalid configuration ID '{value}'"),
    "urlencoded": _verify_regex(URLENCODED_RE, "invalid urlencoded string: {value}"),
    "pve-tag": _verify_regex(TAG_RE, "invalid characters in tag"),
    "mac-addr": _verify_regex(MAC_RE, "value does not look like a valid unicast MAC address"),
    "pve-bridge-id": _verify_regex(BRIDGE_RE, "invalid bridge ID '{value}'"),
    "pve-poolid": _verify_regex(POOL_RE, "pool name '{value}' contains illegal characters"),
    "pve-realm": _verify_regex(REALM_RE, "realm ID '{value}' contains illegal characters"),
    "pve-userid": _verify_regex(USERID_RE, "value '{value}' does not look like a valid user name"),
    "ipv4": _verify_ipv4,
    "ipv6": _verify_ipv6,
    "ip": _verify_ip,
    "address": _verify_ip,
    "CIDR": _verify_cidr(None, "CIDR network"),
    "CIDRv4": _verify_cidr(4, "IPv4 CIDR network"),
    "CIDRv6": _verify_cidr(6, "IPv6 CIDR network"),
    "pve-ipv4-config": _verify_ipv4_config,
    "pve-ipv6-config": _verify_ipv6_config,
    "pve-volume-id": _verify_volume_id,
    "pve-volume-id-or-qm-path": _verify_volume_id_or_qm_path,
    "pve-volume-id-or-absolute-path": _verify_volume_id_or_absolute_path,
    "pve-storage-content": _verify_content,
    "disk-size": _verify_disk_size,
    "address-list": _verify_address_list,
    "pve-qm-bootdev": _verify_bootdev,
    "pve-qm-bootdisk": _verify_bootdisk,
    "pve-priv": _verify_priv,
}

# Hash formats that apidata.js only names.  The fixture's ``named_formats``
# (qemu-server sources) supplies ipconfig/boot/cicustom; these two are small
# enough to state here (qemu-server CPUConfig.pm $cpu_fmt, QemuServer.pm $smbios1_fmt).
LOCAL_HASH_FORMATS: dict[str, dict[str, Any]] = {
    "pve-vm-cpu-conf": {
        "cputype": {"type": "string", "default_key": 1, "optional": 1},
        "flags": {"type": "string", "optional": 1},
        "guest-phys-bits": {"type": "integer", "optional": 1, "minimum": 32, "maximum": 64},
        "hidden": {"type": "boolean", "optional": 1},
        "hv-vendor-id": {"type": "string", "optional": 1, "pattern": r"[a-zA-Z0-9]{1,12}"},
        "phys-bits": {"type": "string", "optional": 1},
        "reported-model": {"type": "string", "optional": 1},
    },
    "pve-qm-smbios1": {
        key: {"type": "string", "optional": 1}
        for key in ("family", "manufacturer", "product", "serial", "sku", "uuid", "version")
    }
    | {"base64": {"type": "boolean", "optional": 1}},
}


class FormatRegistry:
    """Resolves format names to verifiers or hash formats."""

    def __init__(self, named_hash_formats: dict[str, dict[str, Any]] | None = None) -> None:
        self.hash_formats: dict[str, dict[str, Any]] = dict(LOCAL_HASH_FORMATS)
        for name, fmt in (named_hash_formats or {}).items():
            props = {k: v for k, v in fmt.items() if not k.startswith("_")}
            if props and all(isinstance(v, dict) for v in props.values()):
                self.hash_formats[name] = props
        self._unknown_logged: set[str] = set()

    def check_named(self, name: str, value: str, path: str, check_object: Callable) -> Any:
        """pve-common check_format for a string format name (with -list / -opt)."""
        base, kind = name, None
        m = re.fullmatch(r"(.*)-(list|opt)", name)
        if m and name not in VERIFIERS and name not in self.hash_formats:
            base, kind = m.group(1), m.group(2)
        if base in self.hash_formats:
            return parse_property_string(self.hash_formats[base], value, path, check_object)
        verifier = VERIFIERS.get(base)
        if verifier is None:
            if base not in self._unknown_logged:
                self._unknown_logged.add(base)
                log.debug("format %r is not verified by the simulator (accepted)", base)
            return value
        if kind == "list":
            for item in split_list(value):
                verifier(item)
        elif kind == "opt":
            if value != "":
                verifier(value)
        else:
            verifier(value)
        return value


def parse_property_string(
    fmt: dict[str, Any], data: str, path: str, check_object: Callable[..., None]
) -> dict[str, Any]:
    """pve-common parse_property_string: ``k=v,...`` plus an optional default key."""
    res: dict[str, Any] = {}
    default_key: str | None = None
    for part in data.split(","):
        if re.fullmatch(r"\s*", part):
            continue
        m = re.fullmatch(r"([^=]+)=(.+)", part, re.S)
        if m:
            key, value = m.group(1), m.group(2)
            if key in res:
                raise FormatError(f"duplicate key in comma-separated list property: {key}")
            schema = fmt.get(key)
            if schema and schema.get("alias"):
                key_alias = schema.get("keyAlias")
                if key_alias:
                    if key_alias in res:
                        raise FormatError(f"key alias '{key_alias}' is already defined")
                    res[key_alias] = key
                key = schema["alias"]
                schema = fmt.get(key)
            if not schema:
                raise FormatError(f"invalid key in comma-separated list property: {key}")
            if schema.get("type") == "boolean":
                parsed = parse_boolean(value)
                value = parsed if parsed is not None else value
            res[key] = value
        elif "=" not in part:
            if default_key:
                raise FormatError(f"duplicate key in comma-separated list property: {default_key}")
            for key, schema in fmt.items():
                if isinstance(schema, dict) and schema.get("default_key"):
                    default_key = key
                    if key in res:
                        raise FormatError(f"duplicate key in comma-separated list property: {key}")
                    res[key] = part
                    break
            if not default_key:
                raise FormatError("value without key, but schema does not define a default key")
        else:
            raise FormatError("missing key in comma-separated list property")
    errors: dict[str, str] = {}
    check_object(path, fmt, res, 0, errors)
    if errors:
        raise FormatError("format error", errors)
    return res


def print_property_string(data: dict[str, Any], fmt: dict[str, Any], skip: set[str] | None = None) -> str:
    """pve-common print_property_string: default key first (bare), then sorted keys."""
    skip = skip or set()
    parts: list[str] = []
    done: set[str] = set()
    default_key = next((k for k, s in fmt.items() if isinstance(s, dict) and s.get("default_key")), None)
    if default_key and default_key in data and default_key not in skip:
        parts.append(str(data[default_key]))
        done.add(default_key)
    for key in sorted(data):
        if key in done or key in skip or data[key] is None:
            continue
        parts.append(f"{key}={data[key]}")
    return ",".join(parts)
