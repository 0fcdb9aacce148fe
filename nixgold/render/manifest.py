"""The build manifest: a JSON object stored as the template's description (PVE "Notes").

Packer writes it at build time (``template_description = jsonencode(local.manifest)``);
``invoke verify`` and ``invoke build-template`` read it back to know what a template is.
Fields known when rendering come from :func:`static_manifest`; per-build fields
(``build_id``, ``git_commit``, ``build_time``, the pinned ISO) arrive as Packer variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nixgold import __version__
from nixgold.config.model import Config
from nixgold.errors import NixgoldError

#: Every template nixgold builds carries this tag (how `invoke verify --tag` and refresh find them).
NIXGOLD_TAG = "nixgold"
MANIFEST_SCHEMA = 1
MARKER_KEY = "nixgold_manifest"  # value = schema version; identifies our descriptions
#: The nightly refresh's record inside a manifest: {"role": candidate|archive|promoted, "id": <refresh id>, ...}
REFRESH_KEY = "refresh"
#: The description of the refresh's lock marker VM (not a manifest): {"nixgold_refresh_lock": 1, "id": ...}
LOCK_MARKER_KEY = "nixgold_refresh_lock"


class ManifestError(NixgoldError):
    """A template's description does not hold a readable nixgold manifest."""


@dataclass(frozen=True)
class Manifest:
    nixgold_version: str
    config_sha256: str
    nixos_release: str
    template_vmid: int
    template_name: str
    dialect: str
    firmware: str
    iso: dict[str, Any] = field(default_factory=dict)
    build_id: str | None = None
    git_commit: str | None = None
    build_time: str | None = None
    note: str = ""


def static_manifest(config: Config, dialect: str) -> dict[str, Any]:
    """Manifest fields fixed at render time, as plain data for the HCL ``locals`` block."""
    return {
        MARKER_KEY: MANIFEST_SCHEMA,
        "nixgold_version": __version__,
        "config_sha256": config.config_hash(),
        "nixos_release": config.nixos.release,
        "template_vmid": config.template.vmid,
        "template_name": config.template.name,
        "dialect": dialect,
        "firmware": config.vm.firmware,
        "note": config.template.description,
    }


def parse_manifest(description: str | None) -> Manifest:
    """Read a manifest back from a template description; ManifestError says what is wrong."""
    data = manifest_data(description)
    known = set(Manifest.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known}
    if isinstance(values.get("template_vmid"), str) and values["template_vmid"].isdigit():
        values["template_vmid"] = int(values["template_vmid"])
    for key in ("build_id", "git_commit", "build_time"):
        if values.get(key) in ("", "unknown"):
            values[key] = None
    return Manifest(**values)


def manifest_data(description: str | None) -> dict[str, Any]:
    """The manifest in a description as plain JSON data (every key, also the refresh record)."""
    if not description or not description.strip():
        raise ManifestError("the template has no description, so no nixgold build manifest "
                            "(was it built by nixgold?)")
    text = description.strip()
    start = text.find("{")
    if start < 0:
        raise ManifestError(f"the template description holds no JSON manifest: {text[:80]!r}")
    try:
        data = json.loads(text[start:])
    except ValueError as exc:
        raise ManifestError(f"the template description is not a JSON manifest ({exc}): {text[:80]!r}") from exc
    if not isinstance(data, dict) or data.get(MARKER_KEY) != MANIFEST_SCHEMA:
        raise ManifestError(f"the template description is JSON but not a nixgold manifest "
                            f"(expected \"{MARKER_KEY}\": {MANIFEST_SCHEMA})")
    missing = [k for k in ("nixgold_version", "config_sha256", "nixos_release", "template_vmid",
                           "template_name", "dialect", "firmware") if k not in data]
    if missing:
        raise ManifestError(f"the nixgold manifest lacks {', '.join(missing)}")
    return data


def lock_marker_data(description: str | None) -> dict[str, Any] | None:
    """The refresh lock marker's data, or None when the description is not one."""
    text = (description or "").strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get(LOCK_MARKER_KEY) == 1 else None
