"""The swap: archive the promoted template, put the source (a verified candidate, or an archive on
rollback) in its place, and finish or undo a swap a crashed run left half done.

PVE cannot renumber a VM, so the swap is made of copies (full clones: a linked clone would tie the
new template to the source's disks for its whole life):

1. ``archiving``: the promoted template ``old`` is full-cloned to a free archive vmid ``A`` with the
   record ``{role: archive, step: copying}`` in the clone request, converted to a template, renamed
   ``<name>-<build id>``, tagged ``nixgold-archive``, its protection removed, then ``step: archived``;
2. ``swapping``: ``old``'s protection is removed, ``old`` destroyed, the source full-cloned into
   ``template.vmid`` (record ``{role: promoted, step: placing}``), converted, named, tagged and
   protected, checked against the source, then ``step: done``. The **swap window** (nothing answers
   as a template at ``template.vmid``) runs from the destroy request to that point;
3. ``placed``: the source is destroyed (candidate) or, on rollback, the restored archive is.

Before each step the source's record says which step comes next (``promotion``); a run that dies
anywhere leaves enough on the VMs for the next one (:func:`resume`) to finish the swap. A step
that is already done is recognised (a finished archive, a placed template) and not repeated.

When linked clones pin the promoted template (PVE cannot destroy a template whose base volumes
back linked clones), ``refresh.on_linked_clones`` decides: ``fail`` raises
:class:`~nixgold.errors.NotPromoted` before anything changed (the candidate stays staged and
verified; the next refresh promotes it without building), ``promote-by-name`` renames the old
template in place into an archive and the source in place into the promoted template (its vmid
then differs from ``template.vmid`` until a later promotion finds that id free again).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nixgold.config.model import Config
from nixgold.errors import NotPromoted, ProxmoxError, ProxmoxTaskError
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import destroy_vm, linked_clone_map, settled_config
from nixgold.refresh.state import (
    ARCHIVE,
    ARCHIVE_TAG,
    ARCHIVED,
    ARCHIVING,
    COPYING,
    DONE,
    PLACED,
    PLACING,
    PROMOTED,
    SWAPPING,
    View,
    VmState,
    archive_name,
    dump_description,
    now_iso,
    read_vm,
)
from nixgold.render.manifest import NIXGOLD_TAG, REFRESH_KEY
from nixgold.text import one_line

PINNED_RE = re.compile(r"still in use by linked clone")
ATTEMPTS = 4  # a copy or a destroy is tried this often (each retry only after looking at the vmid)
LOCK_WAIT = 120.0


class Pinned(ProxmoxError):
    """PVE refused to destroy a template: linked clones still use its base volumes."""


@dataclass
class SwapContext:
    client: ProxmoxClient
    config: Config
    refresh_id: str
    say: Callable[[str], None]
    task_timeout: float
    timings: dict[str, float] = field(default_factory=dict)
    adopted: set[str] = field(default_factory=set)  # ids of stopped runs whose promotion this run finishes

    def ours(self, vm: VmState) -> bool:
        """Made by this run, or by the stopped run whose promotion it finishes."""
        return bool(vm.refresh_id) and vm.refresh_id in {self.refresh_id.lower(), *self.adopted}

    @property
    def node(self) -> str:
        return self.config.proxmox.node

    @property
    def target(self) -> int:
        return self.config.template.vmid

    def promoted_tags(self) -> str:
        return ";".join(dict.fromkeys([*self.config.template.tags, NIXGOLD_TAG]))


@dataclass
class Promotion:
    """What a promotion did (for the report)."""

    mode: str  # swap | by-name
    source: int
    target: int
    archive_vmid: int | None
    old: dict[str, Any] | None
    swap_window_seconds: float | None = None
    resumed_from: str | None = None  # the step a crashed run had reached
    steps: dict[str, float] = field(default_factory=dict)


# --- small steps ------------------------------------------------------------------------------
def retry(ctx: SwapContext, what: str, attempt: int, exc: BaseException) -> None:
    delay = ctx.client.retry.delay(attempt)
    ctx.say(f"{what} failed ({one_line(str(exc), 200)}); looking again and retrying in {delay:.1f}s "
            f"(attempt {attempt + 1} of {ATTEMPTS})")
    ctx.client.sleep(delay)


def write(ctx: SwapContext, vm: VmState, *, record: dict[str, Any] | None = None, manifest: dict[str, Any] | None = None,
          **values: Any) -> VmState:
    """One config write (atomic in PVE): the refresh record (merged) and any other values; re-read after."""
    if record is not None or manifest is not None:
        data = dict(manifest if manifest is not None else (vm.manifest or {}))
        merged = dict(vm.record if manifest is None else data.get(REFRESH_KEY) or {})
        for key, value in (record or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        data[REFRESH_KEY] = merged
        values["description"] = dump_description(data)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            ctx.client.set_config(vm.node, vm.vmid, **values)  # idempotent: retried by the client on 5xx too
            break
        except ProxmoxError as exc:
            if attempt == ATTEMPTS or exc.status in (400, 401, 403):
                raise
            retry(ctx, f"updating {vm.vmid}", attempt, exc)
    fresh = read_vm(ctx.client, vm.vmid, vm.node)
    if fresh is None:
        raise ProxmoxError(f"VM {vm.vmid} disappeared while nixgold updated it")
    return fresh


def unprotect(ctx: SwapContext, vm: VmState) -> VmState:
    return write(ctx, vm, delete="protection") if vm.protected else vm


def destroy(ctx: SwapContext, vm: VmState) -> None:
    """Remove a VM the caller has proven is ours: protection off, stop, destroy (with its disks).
    :class:`Pinned` when linked clones still use it (PVE keeps it; nothing is lost)."""
    for attempt in range(1, ATTEMPTS + 1):
        current = read_vm(ctx.client, vm.vmid, vm.node)
        if current is None:
            return
        try:
            current = unprotect(ctx, current)
            destroy_vm(ctx.client, current.node, current.vmid, timeout=ctx.task_timeout, lock_wait=LOCK_WAIT)
            return
        except ProxmoxTaskError as exc:
            if PINNED_RE.search(exc.exitstatus):
                raise Pinned(f"PVE keeps {vm.describe()}: {exc.exitstatus} (linked clones use its disks)") from None
            if attempt == ATTEMPTS:
                raise
            retry(ctx, f"destroying {vm.vmid}", attempt, exc)
        except ProxmoxError as exc:
            if attempt == ATTEMPTS or exc.status in (400, 401, 403):
                raise
            retry(ctx, f"destroying {vm.vmid}", attempt, exc)


def copy_into(ctx: SwapContext, source: VmState, vmid: int, *, name: str, manifest: dict[str, Any],
              role: str) -> VmState:
    """Full clone ``source`` -> ``vmid`` carrying ``manifest`` (with our record) from its first moment.

    A failed attempt (an API error, a lock timeout, a failed task) is retried only after looking
    at ``vmid`` once no clone task writes it (:func:`settle`): absent -> clone again; present with
    this run's record -> the clone went through (wait for any other lock of it to go); anything
    else there -> stop.
    """
    description = dump_description(manifest)
    for attempt in range(1, ATTEMPTS + 1):
        there = settle(ctx, vmid)  # an earlier attempt's clone task may still run: its config has no record yet
        if there is not None:
            if there.role == role and ctx.ours(there):
                ctx.client.wait_unlocked(there.node, vmid, LOCK_WAIT)
                done = read_vm(ctx.client, vmid, ctx.node)
                if done is not None:
                    return done
                continue  # removed while another lock of it went: clone again
            raise ProxmoxError(f"vmid {vmid} was taken by {there.describe()} meanwhile; nothing was copied there")
        try:
            upid = ctx.client.clone(source.node, source.vmid, vmid, name=name, full=True, description=description)
            ctx.client.wait_task(upid, ctx.task_timeout)
        except ProxmoxError as exc:
            if attempt == ATTEMPTS or exc.status in (400, 401, 403):
                raise ProxmoxError(f"copying {source.describe()} to {vmid} failed: {exc}", exc.status) from None
            retry(ctx, f"copying {source.vmid} to {vmid}", attempt, exc)
            continue
        done = read_vm(ctx.client, vmid, ctx.node)
        if done is not None:
            return done
    raise ProxmoxError(f"copying {source.describe()} to {vmid} failed {ATTEMPTS} times")


def make_template(ctx: SwapContext, vm: VmState) -> VmState:
    if vm.is_template:
        return vm
    for attempt in range(1, ATTEMPTS + 1):
        try:
            ctx.client.wait_unlocked(vm.node, vm.vmid, LOCK_WAIT)
            ctx.client.wait_task(str(ctx.client.post(f"nodes/{vm.node}/qemu/{vm.vmid}/template")), ctx.task_timeout)
            break
        except ProxmoxError as exc:
            fresh = read_vm(ctx.client, vm.vmid, vm.node)
            if fresh is not None and fresh.is_template:
                return fresh  # it went through although we did not hear so
            if attempt == ATTEMPTS or exc.status in (400, 401, 403):
                raise
            retry(ctx, f"converting {vm.vmid} to a template", attempt, exc)
    fresh = read_vm(ctx.client, vm.vmid, vm.node)
    if fresh is None:
        raise ProxmoxError(f"VM {vm.vmid} disappeared while it was converted to a template")
    return fresh


def copy_problems(source: dict[str, Any], copy: dict[str, Any]) -> list[str]:
    """Differences between a template and its full copy beyond what a copy changes (the pre-check)."""
    ignored = {"name", "tags", "description", "protection", "digest", "smbios1", "vmgenid", "meta", "lock",
               "template"}
    problems = []

    def shape(key: str, value: Any) -> str:
        text = str(value)
        if re.match(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$", key):
            return ",".join(p for p in text.split(",")[1:] if not p.startswith("size=") or "cloudinit" not in text)
        if re.match(r"^net\d+$", key):
            return re.sub(r"=([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", "=<mac>", text)
        return text

    for key in sorted((set(source) | set(copy)) - ignored):
        if key.startswith("unused"):
            continue
        if shape(key, source.get(key)) != shape(key, copy.get(key)):
            problems.append(f"{key}: {source.get(key)!r} -> {copy.get(key)!r}")
    if str(copy.get("template") or 0) != "1":
        problems.append("not a template")
    return problems


# --- archive ------------------------------------------------------------------------------------
def archive_record(ctx: SwapContext, old: VmState, *, vmid: int, step: str, in_place: bool = False) -> dict[str, Any]:
    carried = {k: old.record[k] for k in ("input_digest", "verification", "promoted_at", "replaced") if k in old.record}
    return {**carried, "role": ARCHIVE, "id": ctx.refresh_id.lower(), "of": ctx.target, "vmid": vmid, "step": step,
            "archived_at": now_iso(), "from_vmid": old.vmid, "in_place": in_place or None, "promotion": None}


def ensure_archive(ctx: SwapContext, old: VmState, vmid: int) -> VmState:
    """A finished archive copy of ``old`` at ``vmid`` (made now, or finished/redone after a crash)."""
    there = settle(ctx, vmid)
    if there is not None and there.role == ARCHIVE and ctx.ours(there):
        if there.step == ARCHIVED and there.build_id == old.build_id:
            return there
        ctx.say(f"archive {vmid} of an earlier attempt is incomplete ({there.step}): removing it and copying again")
        destroy(ctx, there)
    t0 = time.monotonic()
    ctx.say(f"archiving {old.describe()} as {vmid} (a full copy)")
    manifest = {**(old.manifest or {}), REFRESH_KEY: archive_record(ctx, old, vmid=vmid, step=COPYING)}
    copy = copy_into(ctx, old, vmid, name=archive_name(ctx.config.template.name, old.build_id), manifest=manifest,
                     role=ARCHIVE)
    copy = make_template(ctx, copy)
    copy = write(ctx, copy, record={"step": ARCHIVED, "archived_at": now_iso()}, tags=f"{NIXGOLD_TAG};{ARCHIVE_TAG}",
                 delete="protection")
    ctx.timings["archive"] = time.monotonic() - t0
    ctx.say(f"archived {old.describe()} as template {vmid} '{copy.name}' ({ctx.timings['archive']:.1f}s)")
    return copy


# --- planning -----------------------------------------------------------------------------------
def plan_promotion(ctx: SwapContext, view: View, source: VmState, *, extra: dict[str, Any] | None = None,
                   pins: dict[int, list[int]] | None = None) -> dict[str, Any]:
    """Decide how ``source`` gets promoted (``swap`` into template.vmid, or ``by-name``) or raise
    NotPromoted; nothing is changed here."""
    old = view.promoted
    at_target = view.at(ctx.target)
    pins = linked_clone_map(ctx.client) if pins is None else pins
    old_pins = pins.get(old.vmid, []) if old is not None else []
    blocker = None
    if old_pins:
        blocker = (f"the promoted template {old.vmid} has {len(old_pins)} linked clone"
                   f"{'s' if len(old_pins) > 1 else ''} ({', '.join(map(str, old_pins))}): PVE cannot destroy a "
                   f"template whose disks back linked clones")
    elif at_target is not None and (old is None or at_target.vmid != old.vmid):
        at_pins = pins.get(at_target.vmid, [])
        blocker = (f"template.vmid {ctx.target} holds {at_target.describe()}"
                   + (f", which {len(at_pins)} linked clone(s) use ({', '.join(map(str, at_pins))})" if at_pins else "")
                   + ": it is not the promoted template, so the swap cannot replace it")
    record_old = None
    if old is not None:
        record_old = {"vmid": old.vmid, "name": old.name, "build_id": old.build_id, "input_digest": old.digest,
                      "verification": old.verification or None}
    plan: dict[str, Any] = {"step": ARCHIVING, "by": ctx.refresh_id.lower(), "target": ctx.target, "old": record_old,
                            "started": now_iso(), "promoted_extra": extra or {}}
    if blocker is None:
        plan["mode"] = "swap"
        if old is not None:
            archive_vmid = view.free(ctx.config.refresh.archives)
            if archive_vmid is None:
                raise ProxmoxError(f"no free vmid in refresh.archive_vmids {ctx.config.refresh.archive_vmids} for the "
                                   f"archive of {old.describe()} (retention keeps {ctx.config.refresh.keep}; archives "
                                   f"that linked clones use are kept too): widen the range")
            plan["archive_vmid"] = archive_vmid
        return plan
    if ctx.config.refresh.on_linked_clones != "promote-by-name":
        unpin = "(`qm destroy` or full-clone the linked clones: `qm clone <vmid> <new> --full`)"
        then = (f"The verified candidate stays staged as {source.describe()}; once nothing pins the template "
                f"{unpin}, `invoke refresh` promotes it without building again" if source.role != ARCHIVE else
                f"Nothing was changed; once nothing pins the template {unpin}, run `invoke rollback` again")
        raise NotPromoted(
            f"not promoted: {blocker}. {then}. Or set refresh.on_linked_clones = \"promote-by-name\": the old "
            f"template stays where it is, renamed into an archive, and {source.vmid} takes the name "
            f"'{ctx.config.template.name}' and its tags")
    ctx.say(f"{blocker}; refresh.on_linked_clones = promote-by-name: renaming in place instead")
    plan["mode"] = "by-name"
    plan["step"] = SWAPPING
    return plan


def promoted_manifest(ctx: SwapContext, source: VmState, plan: dict[str, Any], *, vmid: int, step: str,
                      window: float | None = None) -> dict[str, Any]:
    manifest = {**(source.manifest or {}), "template_vmid": vmid, "template_name": ctx.config.template.name}
    old = plan.get("old")
    record: dict[str, Any] = {
        "role": PROMOTED, "id": ctx.refresh_id.lower(), "of": ctx.target, "vmid": vmid, "step": step,
        "input_digest": source.digest, "verification": source.verification or None,
        "promoted_at": now_iso(), "from_vmid": source.vmid,
        "replaced": ({"build_id": old.get("build_id"), "vmid": old.get("vmid"), "archive_vmid": plan.get("archive_vmid"),
                      "input_digest": old.get("input_digest")} if old else None),
        **(plan.get("promoted_extra") or {}),
    }
    if window is not None:
        record["swap_window_seconds"] = round(window, 2)
    manifest[REFRESH_KEY] = {k: v for k, v in record.items() if v is not None}
    return manifest


# --- the swap --------------------------------------------------------------------------------------
def settle(ctx: SwapContext, vmid: int) -> VmState | None:
    """The VM at ``vmid`` once no clone task writes it any more (PVE's clone target is a bare
    ``lock: clone`` config until the copy is done; a crashed run's clone task may still run)."""
    res = ctx.client.find_vm(vmid)
    if res is None:
        return None
    node = str(res.get("node") or ctx.node)
    config = settled_config(ctx.client, node, vmid, ctx.task_timeout, say=ctx.say)
    return None if config is None else VmState(vmid, node, config)


def promote(ctx: SwapContext, view: View, source: VmState, plan: dict[str, Any]) -> Promotion:
    """Write the plan on the source, then carry it out."""
    source = write(ctx, source, record={"promotion": plan})
    return resume(ctx, source, resumed=False)


def resume(ctx: SwapContext, source: VmState, *, resumed: bool = True) -> Promotion:
    """Carry out (``resumed``: finish, after a crash) the promotion written on ``source``."""
    plan = dict(source.record.get("promotion") or {})
    if plan.get("by"):
        ctx.adopted.add(str(plan["by"]).lower())
    if resumed:
        ctx.say(f"finishing the promotion of {source.describe()} that refresh {plan.get('by')} started "
                f"(it got to '{plan.get('step')}')")
    result = Promotion(mode=str(plan.get("mode")), source=source.vmid, target=int(plan["target"]),
                       archive_vmid=plan.get("archive_vmid"), old=plan.get("old"),
                       resumed_from=str(plan.get("step")) if resumed else None)
    if plan.get("mode") == "by-name":
        return _by_name(ctx, source, plan, result)
    old_rec = plan.get("old")
    if plan["step"] == ARCHIVING:
        old = settle(ctx, old_rec["vmid"]) if old_rec else None
        if old is not None and old.build_id == old_rec.get("build_id") and old.role != ARCHIVE:
            ensure_archive(ctx, old, int(plan["archive_vmid"]))
        elif old_rec:
            ctx.say(f"the old template {old_rec['vmid']} is not there any more; nothing to archive")
        plan["step"] = SWAPPING
        plan["swapping_at"] = round(time.time(), 2)  # a resumed run counts the swap window from here
        source = write(ctx, source, record={"promotion": plan})
    if plan["step"] == SWAPPING:
        result.swap_window_seconds = _swap(ctx, source, plan, old_rec)
        plan["step"] = PLACED
        source = write(ctx, source, record={"promotion": plan})
    # placed: the source's content lives at the target now
    t0 = time.monotonic()
    try:
        destroy(ctx, source)
        ctx.say(f"removed {source.describe()} (its copy is {result.target})")
    except Pinned as exc:
        ctx.say(f"{exc}: it stays, its promotion done")
    ctx.timings["remove source"] = time.monotonic() - t0
    result.steps = dict(ctx.timings)
    return result


def _swap(ctx: SwapContext, source: VmState, plan: dict[str, Any], old_rec: dict[str, Any] | None) -> float:
    """Old out, source in; returns the swap window (seconds without a template at the target)."""
    target = int(plan["target"])

    def is_copy(vm: VmState) -> bool:
        return vm.role == PROMOTED and vm.record.get("from_vmid") == source.vmid and vm.build_id == source.build_id

    def is_old(vm: VmState) -> bool:
        return (old_rec is not None and vm.vmid == old_rec["vmid"] and vm.build_id == old_rec.get("build_id")
                and vm.role != ARCHIVE and not is_copy(vm))

    if old_rec and old_rec["vmid"] != target:  # promoted by name earlier: it lived elsewhere, its archive is made
        elsewhere = settle(ctx, old_rec["vmid"])
        if elsewhere is not None and is_old(elsewhere):
            ctx.say(f"swap: removing {elsewhere.describe()} (archived as {plan.get('archive_vmid')})")
            destroy(ctx, elsewhere)
    there = settle(ctx, target)
    window_start: float | None = None
    if there is not None and is_old(there):
        window_start = time.monotonic()
        ctx.say(f"swap: removing the protection of {there.describe()} and destroying it (archived as "
                f"{plan.get('archive_vmid')})")
        try:
            destroy(ctx, there)
        except Pinned:  # a linked clone appeared since the plan: it stays, protected again
            again = read_vm(ctx.client, target, ctx.node)
            if again is not None and not again.protected:
                write(ctx, again, protection=1)
            raise
        there = None
    elif there is not None and is_copy(there):
        ctx.say(f"swap: {target} already holds the copy of {source.vmid} ({there.step}); finishing it")
    elif there is not None:
        raise ProxmoxError(f"swap stopped: template.vmid {target} holds {there.describe()}, which is neither the "
                           f"template being replaced nor the copy of {source.describe()}; nothing was changed there")
    if window_start is None:  # the old template was gone already (a stopped run destroyed it, or none)
        since = time.time() - float(plan.get("swapping_at") or time.time())
        window_start = time.monotonic() - max(0.0, since)
    if there is None:
        ctx.say(f"swap: copying {source.describe()} to {target}")
        manifest = promoted_manifest(ctx, source, plan, vmid=target, step=PLACING)
        there = copy_into(ctx, source, target, name=ctx.config.template.name, manifest=manifest, role=PROMOTED)
    there = make_template(ctx, there)
    manifest = promoted_manifest(ctx, source, plan, vmid=target, step=DONE, window=time.monotonic() - window_start)
    there = write(ctx, there, manifest=manifest, name=ctx.config.template.name, tags=ctx.promoted_tags(),
                  protection=1)
    window = time.monotonic() - window_start
    problems = copy_problems(source.config, there.config)
    if problems:
        raise ProxmoxError(f"the copy at {target} differs from {source.describe()}: " + "; ".join(problems))
    ctx.timings["swap window"] = window
    ctx.say(f"swap: {target} '{there.name}' is the promoted template (build {there.build_id}); swap window "
            f"{window:.1f}s")
    return window


def _by_name(ctx: SwapContext, source: VmState, plan: dict[str, Any], result: Promotion) -> Promotion:
    """Rename in place: the old template becomes an archive where it is, the source takes the name."""
    old_rec = plan.get("old")
    t0 = time.monotonic()
    if old_rec:
        old = read_vm(ctx.client, old_rec["vmid"], ctx.node)
        if old is not None and old.build_id == old_rec.get("build_id") and old.role != ARCHIVE:
            write(ctx, old, record=archive_record(ctx, old, vmid=old.vmid, step=ARCHIVED, in_place=True),
                  name=archive_name(ctx.config.template.name, old.build_id), tags=f"{NIXGOLD_TAG};{ARCHIVE_TAG}",
                  delete="protection")
            ctx.say(f"renamed {old_rec['vmid']} in place into an archive ('{archive_name(ctx.config.template.name, old.build_id)}')")
    manifest = promoted_manifest(ctx, source, {**plan, "step": PLACED}, vmid=source.vmid, step=DONE)
    manifest[REFRESH_KEY]["promotion"] = {**plan, "step": PLACED}
    write(ctx, source, manifest=manifest, name=ctx.config.template.name, tags=ctx.promoted_tags(), protection=1)
    window = time.monotonic() - t0
    ctx.timings["swap window"] = window
    ctx.say(f"{source.vmid} is now '{ctx.config.template.name}' (promoted by name; template.vmid "
            f"{ctx.target} keeps what linked clones need); name swap window {window:.2f}s")
    result.swap_window_seconds = window
    result.steps = dict(ctx.timings)
    return result
