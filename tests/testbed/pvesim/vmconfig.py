"""VM configuration files in qemu-server's format.

``/etc/pve/nodes/<node>/qemu-server/<vmid>.conf``::

    #description (one '#' line per line, %XX-encoded)
    agent: 1
    boot: order=scsi0
    ...
    [PENDING]
    memory: 4096
    delete: tags

    [special:cloudinit]
    ciuser: old-value

Keys are written sorted; the API ``digest`` is the SHA1 of the file text.
Drives and NICs are property strings parsed with the schema's own formats.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from .formats import is_valid_drivename, parse_boolean, print_property_string

DRIVE_KEY_RE = re.compile(r"^(ide|sata|scsi|virtio)(\d+)$|^(efidisk0|tpmstate0)$")
UNUSED_RE = re.compile(r"^unused(\d+)$")
NET_RE = re.compile(r"^net(\d+)$")
CLOUDINIT_KEYS = re.compile(r"^(cicustom|cipassword|citype|ciuser|ciupgrade|nameserver|searchdomain|sshkeys|ipconfig\d+)$")
# qemu-server vmconfig_hotplug_pending: applied at once even while running
FAST_PLUG = {"lock", "name", "onboot", "shares", "startup", "description", "protection", "vmstatestorage",
             "hookscript", "tags"}
NIC_MODELS = {"e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
              "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3"}
_UNSAFE_TEXT = re.compile(r"[^\x20-\x24\x26-\x7e]")  # everything but printable ASCII without '%'


def encode_text(text: str) -> str:
    return _UNSAFE_TEXT.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), text)


def decode_text(text: str) -> str:
    raw = re.sub(rb"%([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode())
    return raw.decode("utf-8", "replace")


def config_value(value: Any) -> str:
    """A parameter as qemu-server writes it into the config file.

    Booleans are ``1``/``0``: pve-common accepts only '1'/'0' or a JSON bool for a boolean
    (JSONSchema.pm:1243,1253) and Perl prints both as 1/0 (a JSON::PP::Boolean stringifies so).
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def is_flag_set(value: str | None) -> bool:
    """A boolean config key read like Perl's truth test of a 1/0 value (JSONSchema.pm:1061 parse_boolean)."""
    return value is not None and parse_boolean(value) == 1


def random_mac(prefix: str = "BC:24:11") -> str:
    tail = secrets.token_bytes(3)
    return prefix.upper() + ":" + ":".join(f"{b:02X}" for b in tail)


def is_drive_key(key: str) -> bool:
    return bool(DRIVE_KEY_RE.match(key)) and (key in ("efidisk0", "tpmstate0") or is_valid_drivename(key))


def drive_sort_key(key: str) -> tuple[int, int]:
    order = {"ide": 0, "sata": 1, "scsi": 2, "virtio": 3, "efidisk": 4, "tpmstate": 5, "unused": 6}
    m = re.match(r"([a-z]+)(\d+)$", key)
    if not m:
        return (9, 0)
    return (order.get(m.group(1), 8), int(m.group(2)))


@dataclass
class VMConf:
    vmid: int
    values: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    pending_delete: dict[str, bool] = field(default_factory=dict)  # key -> force
    special_cloudinit: dict[str, str] = field(default_factory=dict)

    # -- file format ----------------------------------------------------------
    def render(self) -> str:
        out: list[str] = []

        def section(values: dict[str, str], deletes: dict[str, bool] | None = None) -> None:
            descr = values.get("description")
            if descr is not None:
                for line in descr.split("\n"):
                    out.append("#" + encode_text(line))
            for key in sorted(values):
                if key == "description":
                    continue
                out.append(f"{key}: {values[key]}")
            if deletes:
                out.append("delete: " + ",".join(("!" if force else "") + k for k, force in deletes.items()))

        section(self.values)
        if self.pending or self.pending_delete:
            out.append("")
            out.append("[PENDING]")
            section(self.pending, self.pending_delete)
        if self.special_cloudinit:
            out.append("")
            out.append("[special:cloudinit]")
            section(self.special_cloudinit)
        return "\n".join(out) + "\n"

    @classmethod
    def parse(cls, vmid: int, text: str) -> "VMConf":
        conf = cls(vmid)
        target = conf.values
        descr: list[str] = []
        current_section = "main"
        for line in text.split("\n"):
            if line.startswith("["):
                if descr:
                    target["description"] = "\n".join(descr)
                    descr = []
                name = line.strip("[]")
                current_section = name
                target = conf.pending if name == "PENDING" else (
                    conf.special_cloudinit if name == "special:cloudinit" else {})
                continue
            if line.startswith("#"):
                descr.append(decode_text(line[1:]))
                continue
            m = re.match(r"^([a-z][a-z_\-]*\d*):\s*(.*)$", line)
            if not m:
                continue
            key, value = m.group(1), m.group(2)
            if current_section == "PENDING" and key == "delete":
                for item in value.split(","):
                    if item:
                        conf.pending_delete[item.lstrip("!")] = item.startswith("!")
                continue
            target[key] = value
        if descr:
            target["description"] = "\n".join(descr)
        return conf

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.render().encode()).hexdigest()

    # -- views ----------------------------------------------------------------
    def effective(self) -> dict[str, str]:
        """Config with pending changes applied (GET config without current=1)."""
        out = dict(self.values)
        out.update(self.pending)
        for key in self.pending_delete:
            out.pop(key, None)
        return out

    @property
    def lock(self) -> str | None:
        return self.values.get("lock")

    @property
    def is_template(self) -> bool:
        # qemu-server AbstractConfig is_template: template == 1
        return is_flag_set(self.values.get("template"))

    def apply_pending(self) -> None:
        self.values = self.effective()
        self.pending.clear()
        self.pending_delete.clear()

    def drives(self, values: dict[str, str] | None = None) -> list[str]:
        values = self.values if values is None else values
        return sorted((k for k in values if is_drive_key(k)), key=drive_sort_key)

    def next_unused_key(self) -> str:
        used = {int(m.group(1)) for k in list(self.values) + list(self.pending) if (m := UNUSED_RE.match(k))}
        n = 0
        while n in used:
            n += 1
        return f"unused{n}"


def new_smbios1() -> str:
    return f"uuid={uuid.uuid4()}"


def print_net(net: dict[str, Any], fmt: dict[str, Any]) -> str:
    """qemu-server print_net: ``model=MAC`` first, then the other keys sorted."""
    parts = []
    model, mac = net.get("model"), net.get("macaddr")
    if model and mac:
        parts.append(f"{model}={mac}")
    elif model:
        parts.append(str(model))
    rest = {k: v for k, v in net.items() if k not in ("model", "macaddr") and v is not None}
    tail = print_property_string(rest, {})
    if tail:
        parts.append(tail)
    return ",".join(parts)


def print_drive(drive: dict[str, Any]) -> str:
    """qemu-server print_drive: ``file`` (default key) first, then sorted keys."""
    rest = {k: v for k, v in drive.items() if k not in ("file", "interface", "index") and v is not None}
    head = str(drive["file"])
    tail = print_property_string(rest, {})
    return head + ("," + tail if tail else "")


def parse_boot_order(boot: str | None, conf: dict[str, str]) -> list[str]:
    """Devices in boot order; PVE's default is every disk/cdrom then the first NIC."""
    if boot:
        m = re.search(r"(?:^|,)order=([^,]*)", boot)
        if m:
            return [d for d in m.group(1).split(";") if d]
        legacy = re.search(r"(?:^|,)(?:legacy=)?([acdn]{1,4})(?:,|$)", boot)
        if legacy:
            out: list[str] = []
            bootdisk = conf.get("bootdisk")
            for ch in legacy.group(1):
                if ch == "c" and bootdisk:
                    out.append(bootdisk)
                elif ch == "d":
                    out.extend(k for k in conf if is_drive_key(k) and "media=cdrom" in conf[k])
                elif ch == "n":
                    out.extend(sorted(k for k in conf if NET_RE.match(k)))
            return out
    disks = sorted((k for k in conf if is_drive_key(k)), key=drive_sort_key)
    nets = sorted((k for k in conf if NET_RE.match(k)), key=lambda k: int(k[3:]))
    return disks + nets[:1]
