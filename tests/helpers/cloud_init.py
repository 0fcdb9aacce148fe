"""cloud-init's effective settings on a NixOS template: nixpkgs' module defaults + configuration.nix.

nixos/modules/services/system/cloud-init.nix defines every default of
``services.cloud-init.settings`` with ``mkDefault`` (tests/fixtures/nixos-cloud-init-module.json,
with the source), so a key that configuration.nix sets replaces the module's value for that key as
a whole; the rest stay the module's. ``cloud.cfg`` is that attribute set as YAML.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODULE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "nixos-cloud-init-module.json").read_text())


def effective_settings(configured: dict[str, Any]) -> dict[str, Any]:
    """``settings`` from the evaluated configuration.nix over the module's mkDefault values."""
    return {**MODULE["settings_defaults"], **configured}


def configured_settings(module: dict[str, Any]) -> dict[str, Any]:
    """``services.cloud-init.settings`` of an evaluated configuration.nix (tests/nix/eval-module.nix)."""
    return module["services"]["cloud-init"].get("settings", {})
