"""Which template to verify.

``--vmid``, ``--name`` (unique among templates) or ``--tag`` (the newest nixgold template with it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from nixgold.errors import ExitCode, NixgoldError
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import split_tags
from nixgold.render.manifest import Manifest, ManifestError, parse_manifest


class TemplateSelectionError(NixgoldError):
    """--vmid/--name/--tag does not name exactly one template (a flag error: nothing was touched)."""

    exit_code = ExitCode.CONFIG

@dataclass
class Template:
    vmid: int
    node: str
    name: str
    config: dict[str, Any]
    description: str | None
    manifest: Manifest | None
    selected_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"vmid": self.vmid, "node": self.node, "name": self.name, "selected_by": self.selected_by,
                "manifest": dataclasses.asdict(self.manifest) if self.manifest else None}

# --- template resolution -----------------------------------------------------------------------
def resolve_template(client: ProxmoxClient, *, vmid: int | None, name: str | None, tag: str | None,
                     default_vmid: int, say: Callable[[str], None] = lambda s: None) -> Template:
    """Find the template to verify; TemplateSelectionError unless exactly one matches."""
    given = [f for f, v in (("--vmid", vmid), ("--name", name), ("--tag", tag)) if v is not None]
    if len(given) > 1:
        raise TemplateSelectionError(f"use only one of --vmid, --name, --tag (got {', '.join(given)})")
    resources = client.vm_resources()
    templates = [r for r in resources if int(r.get("template") or 0) == 1]

    def load(res: dict[str, Any], selected_by: str) -> Template:
        node, rid = str(res["node"]), int(res["vmid"])
        config = client.vm_config(node, rid)
        description = config.get("description")
        try:
            manifest = parse_manifest(description)
        except ManifestError:
            manifest = None
        return Template(rid, node, str(config.get("name") or res.get("name") or f"vm{rid}"), config,
                        description, manifest, selected_by)

    if name is not None:
        matches = [r for r in templates if r.get("name") == name]
        if not matches:
            known = ", ".join(f"{r.get('name')} ({r['vmid']})" for r in sorted(templates, key=lambda r: int(r["vmid"])))
            raise TemplateSelectionError(f"no template named {name!r} (templates: {known or 'none'})")
        if len(matches) > 1:
            ids = ", ".join(str(r["vmid"]) for r in sorted(matches, key=lambda r: int(r["vmid"])))
            raise TemplateSelectionError(f"template name {name!r} is ambiguous: vmids {ids}; pick one with --vmid")
        return load(matches[0], f"--name {name}")
    if tag is not None:
        wanted = tag.lower()
        tagged = [r for r in templates if wanted in split_tags(r.get("tags"))]
        loaded = [load(r, f"--tag {tag}") for r in tagged]
        ours = [t for t in loaded if t.manifest is not None]
        if not ours:
            extra = (f" ({', '.join(str(t.vmid) for t in loaded)} carry the tag but no nixgold build manifest)"
                     if loaded else "")
            raise TemplateSelectionError(f"no nixgold template tagged {tag!r}{extra}")
        dated = [t for t in ours if t.manifest and t.manifest.build_time]
        if dated:
            chosen = max(dated, key=lambda t: (_build_time(t.manifest.build_time), t.vmid))  # type: ignore[union-attr]
            why = f"newest by manifest build_time ({chosen.manifest.build_time})"  # type: ignore[union-attr]
        else:
            chosen = max(ours, key=lambda t: t.vmid)
            why = "highest vmid (no manifest has a build_time)"
        others = sorted(t.vmid for t in ours if t.vmid != chosen.vmid)
        say(f"--tag {tag}: chose template {chosen.vmid} ({chosen.name}), {why}"
            + (f"; also tagged: {', '.join(map(str, others))}" if others else ""))
        return chosen
    target = vmid if vmid is not None else default_vmid
    res = next((r for r in resources if int(r["vmid"]) == int(target)), None)
    if res is None:
        raise TemplateSelectionError(f"no VM {target} in the cluster (cluster/resources); check "
                                     f"{'--vmid' if vmid is not None else 'template.vmid'}")
    return load(res, f"--vmid {target}" if vmid is not None else f"template.vmid = {target}")

def _build_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
