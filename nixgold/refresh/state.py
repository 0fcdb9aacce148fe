"""What the cluster says about a template's refresh: every step is written down on the VMs themselves.

Each VM a refresh makes carries a record in its manifest (the JSON description), under ``"refresh"``:

* a **candidate** (staging vmid): ``{"role": "candidate", "id": <refresh id>, "of": <template.vmid>,
  "step": "built" | "verifying" | "verified" | "failed", "input_digest": ..., "verification": {...}}``;
* an **archive** (a replaced template, full-copied into the archive range, or renamed in place when
  linked clones pin it): ``{"role": "archive", "id": <refresh that archived it>, "of": ..., "step":
  "copying" | "archived", "archived_at": ..., "input_digest": ..., "verification": {...}}``;
* the **promoted** template (``template.vmid``, or with promote-by-name wherever its name is):
  ``{"role": "promoted", "id": <refresh that promoted it>, "of": ..., "step": "placing" | "done",
  "input_digest": ..., "verification": {...}, "replaced": {...}, "promoted_at": ...}``.

Every record names the vmid it was written for (``"vmid"``): PVE copies a description into clones, so a
record naming another vmid is a copy's and the VM is not the refresh's.

A promotion in flight is written on its *source* (the candidate, or the archive ``invoke rollback``
restores) before each step is taken: ``"promotion": {"step": "archiving" | "swapping" | "placed",
"mode": "swap" | "by-name", "by": <refresh id>, "target": <vmid>, "old": {...}, "archive_vmid": ...}``.
The next run reads it back (:func:`scan`) and finishes the promotion from the step it names.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from nixgold.config.model import Config
from nixgold.errors import ProxmoxError
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import Owner, dns_label, owner_of, split_tags
from nixgold.render.manifest import REFRESH_KEY, ManifestError, lock_marker_data, manifest_data

CANDIDATE, ARCHIVE, PROMOTED = "candidate", "archive", "promoted"
# candidate steps
BUILT, VERIFYING, VERIFIED, FAILED = "built", "verifying", "verified", "failed"
# archive steps
COPYING, ARCHIVED = "copying", "archived"
# promoted steps
PLACING, DONE = "placing", "done"
# promotion steps (on the source)
ARCHIVING, SWAPPING, PLACED = "archiving", "swapping", "placed"

CANDIDATE_TAG = "nixgold-candidate"
ARCHIVE_TAG = "nixgold-archive"
LOCK_TAG = "nixgold-refresh-lock"

#: PVE's description limit (schema maxLength 8192): our records stay well below it.
DESCRIPTION_LIMIT = 8192


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def candidate_name(template_name: str, refresh_id: str) -> str:
    return f"{dns_label(template_name, 29)}-candidate-{refresh_id.lower()}"  # 29 + 11 + 23 = 63


def archive_name(template_name: str, build_id: str | None) -> str:
    return dns_label(f"{template_name}-{build_id or 'unknown'}")


def lock_name(template_name: str) -> str:
    return f"{dns_label(template_name, 30)}-refresh-lock"


@dataclass
class VmState:
    """One VM as the API shows it, with its manifest and refresh record (if any)."""

    vmid: int
    node: str
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or f"vm{self.vmid}")

    @property
    def manifest(self) -> dict[str, Any] | None:
        try:
            return manifest_data(self.config.get("description"))
        except ManifestError:
            return None

    @property
    def lock_marker(self) -> dict[str, Any] | None:
        return lock_marker_data(self.config.get("description"))

    @property
    def owner(self) -> Owner | None:
        return owner_of(self.config, vmid=self.vmid)

    @property
    def record(self) -> dict[str, Any]:
        """The refresh record, if it was written for this VM: PVE copies the description into clones, so a
        record naming another vmid is a copy's (a consumer's clone of ours) and means nothing here."""
        rec = (self.manifest or {}).get(REFRESH_KEY)
        return rec if isinstance(rec, dict) and rec.get("vmid") == self.vmid else {}

    @property
    def role(self) -> str | None:
        return self.record.get("role")

    @property
    def step(self) -> str | None:
        return self.record.get("step")

    @property
    def refresh_id(self) -> str:
        return str(self.record.get("id") or "").lower()

    @property
    def digest(self) -> str | None:
        return self.record.get("input_digest")

    @property
    def build_id(self) -> str | None:
        value = (self.manifest or {}).get("build_id")
        return value if isinstance(value, str) and value not in ("", "unknown") else None

    @property
    def verification(self) -> dict[str, Any]:
        value = self.record.get("verification")
        return value if isinstance(value, dict) else {}

    @property
    def verified(self) -> bool:
        return self.verification.get("outcome") == "passed"

    @property
    def promotion(self) -> dict[str, Any] | None:
        value = self.record.get("promotion")
        return value if isinstance(value, dict) and value.get("step") != PLACED else None

    @property
    def is_template(self) -> bool:
        return str(self.config.get("template") or "0") in ("1", "true")

    @property
    def protected(self) -> bool:
        return str(self.config.get("protection") or "0") in ("1", "true")

    @property
    def locked(self) -> str | None:
        return self.config.get("lock") or None

    @property
    def tags(self) -> list[str]:
        return split_tags(self.config.get("tags"))

    def describe(self) -> str:
        what = self.role or ("template" if self.is_template else "VM")
        build = f", build {self.build_id}" if self.build_id else ""
        return f"{what} {self.vmid} '{self.name}'{build}"

    def description_with(self, **changes: Any) -> str:
        """This VM's manifest with the refresh record updated (None values remove keys), as JSON."""
        manifest = dict(self.manifest or {})
        record = dict(self.record)
        for key, value in changes.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
        manifest[REFRESH_KEY] = record
        return dump_description(manifest)


def dump_description(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) > DESCRIPTION_LIMIT - 200:
        raise ProxmoxError(f"the manifest would be {len(text)} characters, too long for a PVE description "
                           f"({DESCRIPTION_LIMIT})")
    return text


@dataclass
class View:
    """The VMs that matter for one template's refresh: ``template.vmid``, the lock vmid, the staging and
    archive ranges. Nothing outside them is ever read as a candidate or touched."""

    config: Config
    vms: dict[int, VmState] = field(default_factory=dict)  # read in full (config)
    taken: set[int] = field(default_factory=set)  # every vmid that exists in the cluster

    @property
    def target(self) -> int:
        return self.config.template.vmid

    def at(self, vmid: int) -> VmState | None:
        return self.vms.get(vmid)

    @property
    def lock(self) -> VmState | None:
        return self.vms.get(self.config.refresh.lock_vmid)

    def ours(self, role: str) -> list[VmState]:
        return [vm for vm in self.vms.values() if vm.role == role and vm.record.get("of") == self.target]

    @property
    def candidates(self) -> list[VmState]:
        return [vm for vm in self.ours(CANDIDATE) if vm.vmid in self.config.refresh.staging]

    @property
    def archives(self) -> list[VmState]:
        """Archives of this template, newest first (``archived_at``, then vmid)."""
        return sorted(self.ours(ARCHIVE), key=lambda vm: (str(vm.record.get("archived_at") or ""), vm.vmid),
                      reverse=True)

    @property
    def promoted(self) -> VmState | None:
        """The template consumers clone: at ``template.vmid`` (a nixgold template there, with or without a
        refresh record), else (promote-by-name) the one with the promoted record in the staging range."""
        at_target = self.vms.get(self.target)
        if at_target is not None and at_target.is_template and at_target.role in (None, PROMOTED) \
                and at_target.manifest is not None:
            return at_target
        elsewhere = [vm for vm in self.ours(PROMOTED) if vm.vmid != self.target and vm.is_template]
        return max(elsewhere, key=lambda vm: str(vm.record.get("promoted_at") or "")) if elsewhere else None

    @property
    def in_flight(self) -> VmState | None:
        """A source whose promotion was started and not finished (at most one: the lock sees to that)."""
        sources = [vm for vm in self.vms.values() if vm.promotion is not None
                   and vm.promotion.get("target") == self.target]
        return sources[0] if sources else None

    def free(self, ids: range, also_taken: set[int] = frozenset()) -> int | None:  # type: ignore[assignment]
        return next((v for v in ids if v not in self.taken and v not in also_taken), None)


def scan(client: ProxmoxClient, config: Config) -> View:
    """One read of the cluster: which vmids exist, and the full config of those refresh may own."""
    view = View(config)
    r = config.refresh
    interesting = {config.template.vmid, r.lock_vmid, *r.staging, *r.archives}
    for res in client.vm_resources():
        vmid = int(res["vmid"])
        view.taken.add(vmid)
        if vmid not in interesting:
            continue
        try:
            cfg = client.vm_config(str(res.get("node") or config.proxmox.node), vmid)
        except ProxmoxError as exc:
            if exc.status == 500 and "does not exist" in str(exc):
                view.taken.discard(vmid)
                continue
            raise
        view.vms[vmid] = VmState(vmid, str(res.get("node") or config.proxmox.node), cfg)
    return view


def reread(client: ProxmoxClient, vm: VmState) -> VmState | None:
    """The VM's current config (None when it is gone)."""
    res = client.find_vm(vm.vmid)
    if res is None:
        return None
    return VmState(vm.vmid, str(res.get("node") or vm.node), client.vm_config(str(res.get("node") or vm.node), vm.vmid))


def read_vm(client: ProxmoxClient, vmid: int, node: str) -> VmState | None:
    res = client.find_vm(vmid)
    if res is None:
        return None
    node = str(res.get("node") or node)
    return VmState(vmid, node, client.vm_config(node, vmid))
