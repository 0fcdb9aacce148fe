"""The committed packer/ and http/ are exactly a fresh render of nixgold.example.toml.

Regenerate them with `invoke render --config nixgold.example.toml` (with no nixgold.lock
next to it, so the ISO stays a variable).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nixgold.config.load import load_config
from nixgold.render.files import prepare_inputs, render_files

REPO = Path(__file__).resolve().parents[1]


def _fresh() -> dict[str, str]:
    config = load_config(REPO / "nixgold.example.toml", env={})
    inputs = prepare_inputs(config, dialect="plugin", lock=None, require_iso=False)
    return {file.path: file.content for file in render_files(inputs)}


@pytest.mark.parametrize("rel", sorted(_fresh()))
def test_committed_file_matches_a_fresh_render(rel: str) -> None:
    committed = REPO / rel
    assert committed.is_file(), f"{rel} is missing: run `invoke render --config nixgold.example.toml`"
    assert committed.read_text() == _fresh()[rel], (
        f"{rel} is stale: run `invoke render --config nixgold.example.toml` and commit the result")


def test_no_stray_files_in_the_rendered_directories() -> None:
    expected = set(_fresh())
    present = {p.relative_to(REPO).as_posix() for d in ("packer", "http") for p in (REPO / d).rglob("*")
               if p.is_file()}
    assert present == expected
