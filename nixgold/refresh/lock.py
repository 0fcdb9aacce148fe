"""One refresh per template at a time: a local file lock, then a marker VM in the cluster.

* **Local**: ``flock`` on ``<build.output_dir>/.refresh-<template.vmid>.lock`` (non-blocking; the
  kernel drops it when the process dies, whatever killed it).
* **Cluster** (across machines): a diskless VM created at ``refresh.lock_vmid``. PVE creates a VM
  id only once (``unable to create VM N``: the create call claims the id before it forks), so
  exactly one refresh gets it. Its description is the marker: ``{"nixgold_refresh_lock": 1, "id":
  <refresh id>, "host", "pid", "user", "started", "updated", "phase", ...}``; each phase updates it.
* **Stale marker**: the run that wrote it is dead, so nobody will remove it. Taken over when the
  marker's host is this machine and its pid is gone, or when it was not updated for
  ``refresh.lock_timeout`` (longer than a build may take). The takeover is a config write guarded
  by the marker's digest (PVE refuses it with ``checksum mismatch`` when another run took over
  first), and the taker then finishes or undoes what the dead run left (see ``refresh.recover``).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import getpass
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nixgold.config.model import Config
from nixgold.errors import PreflightError, ProxmoxError, RefreshLocked
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import EXISTS_RE, Owner, destroy_vm, owner_of
from nixgold.refresh.state import LOCK_TAG, VmState, lock_name, now_iso, parse_iso, read_vm
from nixgold.render.manifest import LOCK_MARKER_KEY
from nixgold.units import duration_seconds, fmt_duration

CREATE_REFUSED_RE = EXISTS_RE  # "unable to create VM N: config file already exists" / "... already exists"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return str(os.getuid())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class LocalLock:
    """``flock`` on a file next to the builds; :meth:`acquire` raises RefreshLocked when held."""

    def __init__(self, config: Config):
        self.path = Path(config.build.output_dir) / f".refresh-{config.template.vmid}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RefreshLocked(f"locked: another refresh of template {self.path.stem.split('-')[-1]} runs on "
                                    f"this machine ({holder or 'pid unknown'}; lock file {self.path})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class ClusterLock:
    """The marker VM at ``refresh.lock_vmid``; :attr:`previous` is a stale marker this run took over."""

    client: ProxmoxClient
    config: Config
    refresh_id: str
    say: Callable[[str], None] = lambda s: None
    held: bool = False
    previous: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def vmid(self) -> int:
        return self.config.refresh.lock_vmid

    @property
    def node(self) -> str:
        return self.config.proxmox.node

    def _marker(self, phase: str, **extra: Any) -> dict[str, Any]:
        started = self.data.get("started") or now_iso()
        self.data = {**self.data, LOCK_MARKER_KEY: 1, "id": self.refresh_id.lower(), "of": self.config.template.vmid,
                     "host": socket.gethostname(), "pid": os.getpid(), "user": _user(), "started": started,
                     "updated": now_iso(), "phase": phase, **extra}
        return self.data

    def _description(self) -> str:
        import json

        return json.dumps(self.data, sort_keys=True, separators=(",", ":"))

    def acquire(self, *, timeout: float) -> None:
        self._marker("locked")
        try:
            upid = self.client.post(f"nodes/{self.node}/qemu", vmid=self.vmid, name=lock_name(self.config.template.name),
                                    description=self._description(), tags=f"nixgold;{LOCK_TAG}")
        except ProxmoxError as exc:
            if not CREATE_REFUSED_RE.search(str(exc)):
                raise
            self._take_over_or_fail()
            return
        self.client.wait_task(str(upid), timeout)
        self.held = True

    def _take_over_or_fail(self) -> None:
        vm = read_vm(self.client, self.vmid, self.node)
        if vm is None:  # released between our create and this read: try once more
            raise RefreshLocked(f"locked: the lock VM {self.vmid} came and went while this run tried to take it; "
                                f"another refresh is starting or ending, run again")
        owner = owner_of(vm.config)
        marker = vm.lock_marker
        if owner is None or owner.kind != "refresh-lock" or marker is None:
            raise PreflightError(f"refresh.lock_vmid {self.vmid} holds {vm.describe()}, which is not nixgold's refresh "
                                 f"lock marker: set refresh.lock_vmid to a free vmid (nixgold never touches a VM it "
                                 f"did not create)")
        if owner == Owner("refresh-lock", self.refresh_id.lower()):
            self.held = True  # our own create went through although its answer got lost
            return
        why = self.stale_reason(marker)
        if why is None:
            raise RefreshLocked(self.locked_message(marker))
        self.say(f"taking over the lock marker of refresh {marker.get('id')} ({why})")
        self._marker("locked", took_over=marker.get("id"))
        try:  # compare-and-swap: refused when the marker changed since we read it (another taker won)
            self.client.set_config(self.node, self.vmid, description=self._description(), digest=vm.config.get("digest"))
        except ProxmoxError as exc:
            if "checksum mismatch" in str(exc):
                raise RefreshLocked(f"locked: another run took over the stale marker of refresh {marker.get('id')} "
                                    f"first") from None
            raise
        self.previous = marker
        self.held = True

    def stale_reason(self, marker: dict[str, Any]) -> str | None:
        """Why the marker's run is surely dead, or None while it may be alive."""
        timeout = duration_seconds(self.config.refresh.lock_timeout)
        updated = parse_iso(marker.get("updated") or marker.get("started"))
        age = (dt.datetime.now(dt.timezone.utc) - updated).total_seconds() if updated else None
        if marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int) \
                and not pid_alive(marker["pid"]):
            return f"its process {marker['pid']} on this machine is gone"
        if age is not None and age > timeout:
            return (f"not updated for {fmt_duration(round(age))}, longer than refresh.lock_timeout "
                    f"{self.config.refresh.lock_timeout}")
        if age is None:
            return "its marker has no readable time"
        return None

    def locked_message(self, marker: dict[str, Any]) -> str:
        updated = parse_iso(marker.get("updated"))
        ago = (f", updated {fmt_duration(round((dt.datetime.now(dt.timezone.utc) - updated).total_seconds()))} ago"
               if updated else "")
        return (f"locked: refresh {marker.get('id')} of template {marker.get('of')} holds the lock (VM {self.vmid}): "
                f"{marker.get('user')}@{marker.get('host')} pid {marker.get('pid')}, started {marker.get('started')}, "
                f"phase {marker.get('phase')}{ago}. It is taken over once stale (refresh.lock_timeout "
                f"{self.config.refresh.lock_timeout}, or at once on that machine when the process is gone)")

    def update(self, phase: str, **extra: Any) -> None:
        """Heartbeat + journal: the phase this run is in (and what it is working on)."""
        if not self.held:
            return
        self._marker(phase, **extra)
        self.client.set_config(self.node, self.vmid, description=self._description())

    def release(self, *, timeout: float) -> None:
        if not self.held:
            return
        vm = read_vm(self.client, self.vmid, self.node)
        self.held = False
        if vm is None:
            return
        if owner_of(vm.config) != Owner("refresh-lock", self.refresh_id.lower()):
            self.say(f"the lock marker {self.vmid} is no longer this run's (taken over as stale?): leaving it")
            return
        destroy_vm(self.client, vm.node, self.vmid, timeout=timeout)


def held_by(vm: VmState | None) -> dict[str, Any] | None:
    """The marker of the lock VM, if ``vm`` is one."""
    return vm.lock_marker if vm is not None else None
