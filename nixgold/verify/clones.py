"""The throwaway clones verify boots.

Names, boot disk and MAC from their config, and the SSH key login that says a clone is up.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixgold.errors import ProxmoxError
from nixgold.proxmox.vms import CloneJob, dns_label
from nixgold.units import parse_size
from nixgold.verify.ssh import SSH_PORT, connect

if TYPE_CHECKING:
    from nixgold.verify.checks import CheckRun

VERIFY_TAG = "nixgold-verify"

CLONE_ATTEMPTS = 5  # new vmid after "already exists", lock timeouts, linked -> full fallback

LOCK_WAIT = 120.0  # seconds to wait for a VM lock (template busy, clone lock after the task)

AGENT_POLL = 1.0  # seconds between agent pings (PVE's own guest-ping waits up to 3 s)


@dataclass
class CloneRun:
    """One throwaway clone and everything we know about it (mutated by its worker thread)."""

    index: int
    job: CloneJob
    mac: str | None = None
    disk: str | None = None
    disk_bytes: int = 0
    address: str | None = None
    boot_results: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    destroyed: bool = False
    kept: bool = False
    check_run: CheckRun | None = None  # its own checks' run (None: not checked)

    @property
    def vmid(self) -> int:
        assert self.job.vmid is not None
        return self.job.vmid

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def node(self) -> str:
        return self.job.node

    @property
    def booted(self) -> bool:
        return len(self.boot_results) == 3 and all(r.outcome == "passed" for r in self.boot_results)

# --- pure helpers ------------------------------------------------------------------------------
def clone_name(template_name: str, index: int) -> str:
    """``<template-name>-verify-<n>``, a valid DNS label (PVE uses it as the guest hostname)."""
    suffix = f"-verify-{index}"
    return dns_label(template_name, 63 - len(suffix)) + suffix

_DISK_KEY_RE = re.compile(r"^(ide|sata|scsi|virtio)\d+$")

def _is_disk(value: str) -> bool:
    return "media=cdrom" not in value and "cloudinit" not in value.split(",", 1)[0] and \
        value.split(",", 1)[0] not in ("none", "cdrom")

def boot_disk(config: dict[str, Any]) -> tuple[str, int | None]:
    """The boot disk key (from ``boot: order=...``, legacy ``bootdisk``, else the first disk) and size."""
    candidates: list[str] = []
    boot = str(config.get("boot") or "")
    m = re.search(r"(?:^|,)order=([^,]*)", boot)
    if m:
        candidates += [d for d in m.group(1).split(";") if d]
    if config.get("bootdisk"):
        candidates.append(str(config["bootdisk"]))
    candidates += sorted((k for k in config if _DISK_KEY_RE.match(k)),
                         key=lambda k: (["scsi", "virtio", "sata", "ide"].index(re.sub(r"\d+", "", k)),
                                        int(re.sub(r"\D", "", k))))
    for key in candidates:
        value = config.get(key)
        if _DISK_KEY_RE.match(key) and isinstance(value, str) and _is_disk(value):
            sm = re.search(r"(?:^|,)size=([^,]+)", value)
            return key, (parse_size(sm.group(1)) if sm else None)
    raise ProxmoxError(f"the template has no boot disk (boot: {boot or 'unset'})")

def net0_mac(config: dict[str, Any]) -> str | None:
    m = re.search(r"(?:^|,)(?:[a-z0-9-]+)=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", str(config.get("net0") or ""))
    return m.group(1) if m else None

def ssh_login(address: str, user: str, key_file: Path, timeout: float = 10.0) -> tuple[bool, str]:
    """TCP connect to port 22, then a key login as ``user``. (ok, what happened)."""
    import paramiko

    try:
        with socket.create_connection((address, SSH_PORT), timeout=min(timeout, 3.0)):
            pass
    except OSError as exc:
        return False, f"port {SSH_PORT}: {exc.strerror or exc}"
    try:
        connect(address, user, key_file, timeout).close()
        return True, "ok"
    except paramiko.AuthenticationException as exc:
        return False, f"key rejected for {user} ({exc})"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
