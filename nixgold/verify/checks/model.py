"""The data the check suite takes and gives back (no pytest import here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

#: The outcomes a check can have, in report order.
OUTCOMES = ("passed", "failed", "error", "skipped")


@dataclass(frozen=True)
class CheckResult:
    """One check on one target: ``template``, a clone's name, or ``clones`` (cross-clone checks)."""

    id: str
    target: str
    outcome: str  # passed | failed | error | skipped
    seconds: float
    reason: str = ""  # one line; empty when passed
    summary: str = ""  # what the check proves, one line


@dataclass(frozen=True)
class CloneTarget:
    """A booted clone the checks reach over SSH (``vmid`` 0: not a Proxmox clone, e.g. standalone runs)."""

    vmid: int
    name: str
    node: str
    address: str
    ssh_user: str
    ssh_key_file: Path
    disk_bytes: int  # the boot disk's size as Proxmox reports it after the resize (0: unknown)


@dataclass(frozen=True)
class CheckContext:
    """Everything the checks may compare against, from the config, the manifest and the run."""

    profile: str  # nixos | generic
    nixos_release: str  # from the build manifest ("" = unknown)
    permit_root_login: str  # nixos.permit_root_login
    ciuser: str  # verify.ciuser
    injected_public_key: str  # the run's ephemeral key, one OpenSSH line ("" = unknown)
    allowed_keys: tuple[str, ...]  # keys of the configured users (may be in authorized_keys)
    clones: tuple[CloneTarget, ...]
    #: ``agent(vmid, "ping" | "get-osinfo" | "get-host-name")`` -> the guest agent's result; raises
    #: ProxmoxError. Standalone runs get one that skips the calling check.
    agent: Callable[[int, str], Any]
    #: How the checks reach the clones: "paramiko" (SSH with ``ssh_key_file``), or "local" (this
    #: machine, testinfra's local backend: the suite's own tests).
    connection: str = "paramiko"
