"""Which archives stay: the newest ``refresh.keep`` that passed verification, and everything PVE
or the rules say must stay; the rest is destroyed.

Archives of the template (role ``archive`` in their refresh record, any vmid) are ranked newest
first (``archived_at``). Kept, with the reason shown:

* the newest ``keep`` archives whose record says verification passed (the newest is always kept);
* when no archive passed verification (templates from before the refresh existed), the newest one;
* an archive that linked clones still use: PVE refuses to destroy it (``base volume ... is still in
  use by linked cloned``), so it is named with its clones instead of failing the run;
* an archive someone protected by hand (PVE's ``protection`` flag): nixgold removes protection only
  inside the swap, never to delete an archive;
* an archive a promotion is still working with (a crashed run's, finished first by the next run).

The promoted template, candidates and VMs without our record are never archives, so never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nixgold.errors import ProxmoxError
from nixgold.refresh.state import ARCHIVED, VmState
from nixgold.refresh.swap import Pinned, SwapContext, destroy


@dataclass
class RetentionPlan:
    keep: list[tuple[VmState, str]] = field(default_factory=list)  # (archive, why it stays)
    delete: list[VmState] = field(default_factory=list)


@dataclass
class RetentionResult:
    kept: list[dict[str, object]] = field(default_factory=list)
    deleted: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan_retention(archives: list[VmState], keep: int, pins: dict[int, list[int]]) -> RetentionPlan:
    """``archives`` newest first (:attr:`View.archives`)."""
    plan = RetentionPlan()
    complete = [a for a in archives if a.step == ARCHIVED]
    verified = [a for a in complete if a.verified]
    kept_verified = verified[:keep]
    fallback = complete[0] if not verified and complete else None
    for archive in complete:
        if archive in kept_verified:
            why = "the newest verified archive" if archive is verified[0] else f"one of the {keep} newest verified"
            plan.keep.append((archive, why))
        elif archive is fallback:
            plan.keep.append((archive, "the newest archive (none passed verification yet)"))
        elif pins.get(archive.vmid):
            clones = pins[archive.vmid]
            plan.keep.append((archive, f"linked clones use it ({', '.join(map(str, clones))}): PVE cannot destroy "
                                       f"it until they are gone"))
        elif archive.protected:
            plan.keep.append((archive, "protected by hand (PVE protection flag): remove the flag to let retention "
                                       "delete it"))
        elif archive.promotion is not None:
            plan.keep.append((archive, "a promotion is using it"))
        else:
            plan.delete.append(archive)
    return plan


def apply_retention(ctx: SwapContext, plan: RetentionPlan) -> RetentionResult:
    result = RetentionResult()
    for archive, why in plan.keep:
        result.kept.append({"vmid": archive.vmid, "name": archive.name, "build_id": archive.build_id, "why": why})
    for archive in plan.delete:
        try:
            destroy(ctx, archive)
        except Pinned as exc:  # a linked clone appeared meanwhile
            result.kept.append({"vmid": archive.vmid, "name": archive.name, "build_id": archive.build_id,
                                "why": str(exc)})
            continue
        except ProxmoxError as exc:
            result.problems.append(f"could not delete archive {archive.describe()}: {exc}")
            continue
        ctx.say(f"retention: deleted archive {archive.describe()}")
        result.deleted.append({"vmid": archive.vmid, "name": archive.name, "build_id": archive.build_id})
    return result
