"""The build manifest stored in the template description is read back exactly."""

from __future__ import annotations

import json

import pytest

from nixgold import __version__
from nixgold.config.model import Config
from nixgold.config.load import parse_config
from nixgold.render.manifest import MARKER_KEY, ManifestError, parse_manifest, static_manifest


def test_static_manifest_round_trips_through_a_description() -> None:
    config = parse_config({"template": {"description": 'golden "base" ${x}'}})
    data = static_manifest(config, "plugin")
    data.update(build_id="20261122-1", git_commit="abc123", build_time="2026-11-22T01:02:03Z",
                iso={"url": "https://x/y.iso", "sha256": "0" * 64})
    manifest = parse_manifest(json.dumps(data, sort_keys=True))
    assert manifest.nixgold_version == __version__
    assert manifest.config_sha256 == config.config_hash()
    assert manifest.template_vmid == 9004 and manifest.dialect == "plugin" and manifest.firmware == "uefi"
    assert manifest.note == 'golden "base" ${x}'
    assert manifest.build_id == "20261122-1" and manifest.iso["sha256"] == "0" * 64


def test_unknown_build_fields_become_none() -> None:
    data = static_manifest(Config(), "bundled")
    data.update(build_id="manual", git_commit="unknown", build_time="")
    manifest = parse_manifest(json.dumps(data))
    assert manifest.git_commit is None and manifest.build_time is None and manifest.build_id == "manual"


@pytest.mark.parametrize(("description", "fragment"), [
    (None, "no description"),
    ("   ", "no description"),
    ("hand-made template", "holds no JSON"),
    ("{not json", "not a JSON manifest"),
    (json.dumps({"hello": 1}), f'"{MARKER_KEY}": 1'),
    (json.dumps({MARKER_KEY: 1, "nixgold_version": "0.1.0"}), "lacks config_sha256"),
])
def test_unreadable_descriptions_say_why(description: str | None, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(description)
    assert fragment in str(info.value)
