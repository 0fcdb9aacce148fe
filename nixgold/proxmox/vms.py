"""VMs nixgold makes and removes: clones, stop-then-destroy, names and tags, and the one ownership rule.

**Ownership** (:func:`owner_of`): a VM is nixgold's only when it carries the id of the run that made
it, never because it looks like one:

* a build VM: its name ends in ``-build-<build id>`` (:func:`build_vm_name`; Packer sets it at
  create from the ``build_vm_name`` variable nixgold passes);
* a template: its description holds a nixgold build manifest, whose ``build_id`` it carries;
* a verify clone: its description holds ``nixgold verify (run <run id>)`` (:func:`verify_marker`);
* the nightly refresh's VMs carry the refresh id in the manifest's ``refresh`` record: a staged
  ``candidate`` and an ``archive`` (a replaced template, copied by that refresh); the promoted
  template is a nixgold template (``build``) whose record says ``promoted``;
* the refresh's lock marker: a diskless VM whose description is ``{"nixgold_refresh_lock": 1, "id": ...}``.

Preflight, the build's cleanup, ``--replace``, verify's cleanup and refresh all decide with it:
:class:`Owner` ``("build", id)`` / ``("verify", id)`` / ``("candidate", id)`` / ``("archive", id)`` /
``("refresh-lock", id)``, compared with their own id. Packer's default description and a ``-building``
name prove nothing: every Packer build writes them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from nixgold.errors import ProxmoxError, ProxmoxTaskError
from nixgold.proxmox.client import OutcomeUnknown, ProxmoxClient
from nixgold.render.manifest import REFRESH_KEY, ManifestError, lock_marker_data, manifest_data

BUILD_VM_RE = re.compile(r"-build-(\d{8}t\d{6}z-[0-9a-f]{6})$")
VERIFY_MARKER_RE = re.compile(r"nixgold verify \(run ([0-9a-f]{12})\)")


@dataclass(frozen=True)
class Owner:
    kind: str  # "build" | "verify" | "candidate" | "archive" | "refresh-lock"
    id: str  # the build id (lower case), the verify run id or the refresh id; "" when a manifest has none


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS label (PVE's VM names are DNS names; guests take them as hostname)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", label)[:limit].strip("-") or "nixgold"


def build_vm_name(template_name: str, build_id: str) -> str:
    """The build VM's name: the template's, cut to fit, plus ``-build-<build id>``."""
    return f"{dns_label(template_name, 30)}-build-{build_id.lower()}"


def verify_marker(run_id: str) -> str:
    return f"nixgold verify (run {run_id})"


def owner_of(config: dict[str, Any], vmid: int | None = None) -> Owner | None:
    """Which nixgold run made this VM, from the id its config carries; None: not nixgold's.

    ``vmid``: the VM's id. A refresh record names the vmid it was written for; PVE copies descriptions
    into clones, so a record naming another vmid is a copy's: such a VM is none of the refresh's."""
    m = BUILD_VM_RE.search(str(config.get("name") or ""))
    if m:
        return Owner("build", m.group(1))
    description = str(config.get("description") or "")
    m = VERIFY_MARKER_RE.search(description)
    if m:
        return Owner("verify", m.group(1))
    lock = lock_marker_data(description)
    if lock is not None:
        return Owner("refresh-lock", str(lock.get("id") or "").lower())
    try:
        data = manifest_data(description)
    except ManifestError:
        return None
    record = data.get(REFRESH_KEY)
    if isinstance(record, dict) and record.get("role") in REFRESH_KINDS and record.get("id"):
        if vmid is not None and record.get("vmid") != vmid:
            return None
        return Owner(str(record["role"]), str(record["id"]).lower())
    build_id = data.get("build_id")
    return Owner("build", (build_id if isinstance(build_id, str) and build_id != "unknown" else "").lower())


#: Roles of the refresh record that make a VM the refresh's own kind (a promoted template stays "build").
REFRESH_KINDS = ("candidate", "archive")

#: A linked clone's disk names its base volume: ``local:9004/base-9004-disk-0.qcow2/101/vm-101-disk-0.qcow2``
#: (directory storages), ``local-lvm:base-9004-disk-0/vm-101-disk-0`` (LVM-thin, ZFS, RBD).
LINKED_BASE_RE = re.compile(r"(?:^|[:/])base-(\d+)-disk-\d+[^/,]*/")


def linked_clone_map(client: ProxmoxClient) -> dict[int, list[int]]:
    """{template vmid: [vmids of the VMs whose disks are linked clones of its base volumes]} over the
    cluster (one config read per VM). PVE refuses to destroy a template while any exist (QemuServer.pm
    destroy_vm: "base volume ... is still in use by linked cloned")."""
    found: dict[int, set[int]] = {}
    for res in client.vm_resources():
        vmid = int(res["vmid"])
        try:
            config = client.vm_config(str(res["node"]), vmid)
        except ProxmoxError as exc:
            if exc.status == 500 and "does not exist" in str(exc):
                continue  # destroyed meanwhile
            raise
        for value in config.values():
            for base in LINKED_BASE_RE.findall(str(value).split(",", 1)[0]):
                if int(base) != vmid:
                    found.setdefault(int(base), set()).add(vmid)
    return {base: sorted(clones) for base, clones in found.items()}


def split_tags(tags: str | None) -> list[str]:
    """PVE's tag list (``;``, ``,`` or spaces between them), lower case."""
    return [t.lower() for t in re.split(r"[;,\s]+", tags or "") if t]


def merged_tags(have: str | None, wanted: Iterable[str]) -> str | None:
    """The tag list with ``wanted`` added, or None when it has them all already."""
    present = [t for t in re.split(r"[;,\s]+", have or "") if t]
    missing = [t for t in dict.fromkeys(wanted) if t.lower() not in {p.lower() for p in present}]
    return ";".join([*present, *missing]) if missing else None


def destroy_vm(client: ProxmoxClient, node: str, vmid: int, *, timeout: float, lock_wait: float = 120.0,
               attempts: int = 3) -> None:
    """Stop (if it runs) and destroy a VM with its disks; the caller has proven it is theirs.

    A start task under way when the status is read (a start request cut by a signal) makes the VM
    run only after the read: qemu-server runs the whole start under the config lock (src/PVE/
    QemuServer.pm vm_start: ``return PVE::QemuConfig->lock_config(`` around it), and the destroy
    task takes that lock, then runs its early checks again (src/PVE/API2/Qemu.pm destroy_vm: ``#
    repeat, config might have changed``, among them ``die "VM $vmid is running - destroy
    failed\n" if PVE::QemuServer::check_running($vmid)``; the DELETE request makes them first). A
    stop waits for the same lock (QemuServer.pm vm_stop: ``lock_config`` around ``_do_vm_stop``).
    Either may also give up on the lock (``can't lock file ... got timeout``). Then the VM is
    stopped and destroyed again, ``attempts`` times in all; gone meanwhile is done."""
    for attempt in range(1, attempts + 1):
        if attempt > 1 and client.find_vm(vmid) is None:
            return
        try:
            client.wait_unlocked(node, vmid, lock_wait)
            if client.vm_status(node, vmid).get("status") != "stopped":
                client.wait_task(client.stop(node, vmid), timeout)
            client.wait_task(client.destroy(node, vmid), timeout)
            return
        except ProxmoxError as exc:
            # a task's own error line, not its log: a storage warning there may say "got timeout"
            why = exc.exitstatus if isinstance(exc, ProxmoxTaskError) else str(exc)
            if attempt == attempts or not (RUNNING_RE.search(why) or LOCK_TIMEOUT_RE.search(why)):
                raise


RUNNING_RE = re.compile(r"VM \d+ is running - destroy failed")


def settled_config(client: ProxmoxClient, node: str, vmid: int, timeout: float,
                   say: Callable[[str], None] = lambda s: None,
                   cancel: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """The config of ``vmid`` once no clone task writes it any more; None: no such VM.

    qemu-server src/PVE/API2/Qemu.pm clone_vm: the task, once it holds the locks, writes a temporary
    config (``file_set_contents($conffile, "# qmclone temporary file\nlock: clone\n")``: no name,
    no description, so no owner), then the VM's own, still locked, after each disk
    (``write_config($newid, $newconf)``), and at its end without the lock (``delete
    $newconf->{lock}``, ``write_config``). A clone task that fails removes the config (``unlink
    $conffile; # avoid races -> last thing before die``): gone, then, is None too. Waits at most
    ``timeout`` (a clone task's own bound: a full copy on slow storage takes long), or until ``cancel()``
    (then ProxmoxError)."""
    try:
        config = client.vm_config(node, vmid)
        if config.get("lock") != "clone":
            return config
        say(f"VM {vmid} is still being cloned (lock: clone): waiting for its clone task")
        return client.wait_unlocked(node, vmid, timeout, cancel=cancel)
    except ProxmoxError:
        if client.find_vm(vmid) is None:
            return None
        raise


#: How far PVE's clock may lag ours when a task's start time is compared with our request's.
CLOCK_SKEW = 300.0


def unanswered_clone_tasks(client: ProxmoxClient, job: CloneJob) -> list[str]:
    """After a clone POST whose answer never came (``job.requested``, not ``job.answered``) while
    ``job.vmid`` does not exist: the UPIDs of the running clone tasks of ``job.source`` by this client's user that started
    no earlier than the request (less :data:`CLOCK_SKEW`). One of them may be the lost one, which
    creates the VM later: until they are done, "no VM" does not mean "never made".

    qemu-server src/PVE/API2/Qemu.pm clone_vm forks the task before it has the locks or writes anything
    of the new VM: ``fork_worker('qmclone', $vmid, $authuser, $lock_source_vm)`` (the task's id is
    the SOURCE's vmid; the new one is not in the UPID), then ``lock_config_shared($vmid, 1, ...)``,
    ``lock_config_full($newid, 1, $clonefn)``, ``$load_and_check->()``, and only then
    ``file_set_contents($conffile, "# qmclone temporary file\nlock: clone\n")``. Tasks of the same
    source by this user are waited for too (another clone of this run): they end by themselves."""
    since = (job.requested_at or 0.0) - CLOCK_SKEW
    tasks = client.get(f"nodes/{job.node}/tasks", source="active", typefilter="qmclone", vmid=job.source,
                       userfilter=client.authid, limit=50) or []
    # pve-manager PVE/API2/Tasks.pm lists an active task's ``user`` as the UPID has it (user@realm!token
    # for a token); the archive splits it into ``user`` and ``tokenid``: either form is this client's
    return [str(t["upid"]) for t in tasks
            if client.authid in (t.get("user"), f"{t.get('user')}!{t.get('tokenid')}")
            and float(t.get("starttime") or 0) >= since and t.get("endtime") is None]


EXISTS_RE = re.compile(r"unable to create VM (\d+): config file already exists|already exists")

LOCKED_RE = re.compile(r"VM is locked \((\w[\w-]*)\)")

LOCK_TIMEOUT_RE = re.compile(r"can't lock file '[^']+' - got timeout|got lock request timeout")

LINKED_REFUSED_RE = re.compile(r"Linked clone feature is not supported|linked clone.*not (supported|possible)", re.I)

@dataclass
class CloneJob:
    """One clone request and where it stands; :func:`run_clone` updates it in place, so
    a cleanup running in another thread always knows which vmid and task to look at."""

    node: str
    source: int
    name: str
    full: bool | None = None  # None: PVE's default (linked for templates)
    description: str | None = None
    vmid: int | None = None  # the id being cloned to (changes when another client takes it)
    upid: str | None = None  # the clone task while it may still be running
    requested: bool = False  # a clone POST went out (the VM may exist even if we got an error)
    requested_at: float | None = None  # when the last clone POST went out (time.time())
    answered: bool = False  # the last clone POST got PVE's answer (a UPID or an error), not a lost one
    done: bool = False  # the clone task ended OK: the VM exists and is ours
    attempts: int = 0

    @property
    def mode(self) -> str:
        return "full" if self.full else "linked"




def run_clone(client: ProxmoxClient, job: CloneJob, *, timeout: float, allocate: Callable[[], int] | None = None,
              linked_fallback: bool = False, attempts: int = 5, lock_wait: float = 120.0,
              cancel: Callable[[], bool] | None = None, say: Callable[[str], None] = lambda s: None) -> CloneJob:
    """Clone ``job.source`` to a fresh vmid and wait for the task, handling what PVE throws at
    parallel clients:

    * the vmid is taken between ``cluster/nextid`` and the clone (``unable to create VM N: config
      file already exists`` at once, or a task error "... already exists"): allocate a new id;
    * the source is locked (``VM is locked (backup)``): wait for the lock, bounded by ``lock_wait``;
    * the clone task fails on a lock timeout (``can't lock file ... got timeout``): PVE cleaned up,
      so retry after a backoff, at most 3 times, then fail naming the lock;
    * ``linked_fallback``: PVE refuses a linked clone (storage without snapshots) -> full clone;
    * the clone inherits a protected template's ``protection`` flag: removed (a throwaway).

    Any other error (a 500 from the POST, a failed task) is raised as is: not retried blindly.
    """
    allocate = allocate or client.next_vmid
    if job.vmid is None:
        job.vmid = allocate()
    lock_timeouts = 0
    while True:
        job.attempts += 1
        if cancel is not None and cancel():
            raise ProxmoxError(f"clone to {job.vmid} cancelled")
        job.requested, job.requested_at, job.answered = True, time.time(), False
        try:
            job.upid = client.clone(job.node, job.source, job.vmid, name=job.name, full=job.full,
                                  description=job.description)
            job.answered = True
        except ProxmoxError as exc:
            job.answered = not isinstance(exc, OutcomeUnknown)
            message = str(exc)
            locked = LOCKED_RE.search(message)
            if job.attempts < attempts and EXISTS_RE.search(message):
                old, job.vmid = job.vmid, allocate()
                say(f"vmid {old} was taken by another client; cloning to {job.vmid} instead")
                continue
            if job.attempts < attempts and locked:
                say(f"VM {job.source} is locked ({locked.group(1)}); waiting up to {lock_wait:.0f}s")
                client.wait_unlocked(job.node, job.source, lock_wait, cancel=cancel)
                continue
            if job.attempts < attempts and linked_fallback and not job.full and LINKED_REFUSED_RE.search(message):
                job.full = True
                say(f"PVE refused a linked clone ({message.splitlines()[0]}); making a full clone")
                continue
            raise ProxmoxError(f"cloning {job.source} to {job.vmid} failed: {message}", exc.status) from None
        try:
            client.wait_task(job.upid, timeout, cancel=cancel)
        except ProxmoxTaskError as exc:
            if cancel is not None and cancel():
                raise
            job.upid = None
            if job.attempts < attempts and "already exists" in exc.exitstatus:
                old, job.vmid = job.vmid, allocate()
                say(f"vmid {old} was taken by another client while cloning; retrying as {job.vmid}")
                continue
            if LOCK_TIMEOUT_RE.search(exc.exitstatus):
                lock_timeouts += 1
                if lock_timeouts < 3 and job.attempts < attempts:
                    delay = client.retry.delay(lock_timeouts)
                    say(f"clone to {job.vmid} hit a lock timeout ({exc.exitstatus}); retrying in {delay:.1f}s")
                    client.sleep(delay)
                    continue
                raise ProxmoxError(
                    f"cloning {job.source} to {job.vmid} failed {lock_timeouts} times on a lock timeout: "
                    f"{exc.exitstatus}\n  another task keeps the template or the storage locked (backups, "
                    f"other clones); retry later or clone fewer at once (verify.clones)\n  last task: {exc.upid}"
                ) from None
            raise ProxmoxError(f"cloning {job.source} to {job.vmid} failed: {exc}") from None
        job.upid = None
        job.done = True
        # PVE copies a template's protection flag into its clones (qemu-server Qemu.pm clone_vm: "copy
        # everything else"); a clone nixgold makes is a throwaway that its cleanup must be able to destroy.
        if str(client.vm_config(job.node, job.vmid).get("protection") or "0") in ("1", "true"):
            client.set_config(job.node, job.vmid, delete="protection")
        return job
