"""Dialect choice from `packer version` (the real Debian packer 1.6.6 is installed in CI)."""

from __future__ import annotations

import shutil

import pytest

from nixgold.config.load import parse_config
from nixgold.packer.dialect import (
    PackerInfo,
    choose_dialect,
    detect_packer,
    dialect_for_version,
    parse_packer_version,
)
from nixgold.errors import ConfigError, PreflightError


@pytest.mark.parametrize(("output", "version"), [
    ("Packer v1.6.6\n", (1, 6, 6)),
    ("Packer v1.11.2\n\nYour version of Packer is out of date!\n", (1, 11, 2)),
    ("1.10.0\n", (1, 10, 0)),
])
def test_parse_packer_version(output: str, version: tuple[int, int, int]) -> None:
    assert parse_packer_version(output) == version


def test_unreadable_version_is_a_preflight_error() -> None:
    with pytest.raises(PreflightError, match="cannot read a version"):
        parse_packer_version("hello")


def test_dialect_per_version() -> None:
    assert dialect_for_version((1, 6, 6)) == "bundled"
    assert dialect_for_version((1, 10, 0)) == "plugin"
    assert dialect_for_version((1, 12, 1)) == "plugin"
    with pytest.raises(PreflightError, match="1.8.7 is not supported"):
        dialect_for_version((1, 8, 7))


def test_real_debian_packer_is_detected_as_bundled() -> None:
    info = detect_packer("packer")
    assert info is not None, "Debian's packer must be installed (scripts/setup.sh)"
    assert info.path == shutil.which("packer")
    assert dialect_for_version(info.version) == "bundled"
    assert detect_packer("packer-does-not-exist") is None


def test_auto_uses_the_installed_packer_and_checks_firmware() -> None:
    bundled = PackerInfo("/usr/bin/packer", (1, 6, 6))
    assert choose_dialect(parse_config({"vm": {"firmware": "bios"}}), bundled)[0] == "bundled"
    with pytest.raises(ConfigError, match="vm.firmware.*no UEFI support"):
        choose_dialect(parse_config({}), bundled)
    assert choose_dialect(parse_config({}), PackerInfo("/x/packer", (1, 11, 0)))[0] == "plugin"
    dialect, reason = choose_dialect(parse_config({}), None)
    assert dialect == "plugin" and "packer not found" in reason


def test_explicit_dialect_must_match_the_installed_packer() -> None:
    with pytest.raises(ConfigError, match="build.dialect.*Packer 1.6.6"):
        choose_dialect(parse_config({"build": {"dialect": "plugin"}}), PackerInfo("/usr/bin/packer", (1, 6, 6)))
    assert choose_dialect(parse_config({"build": {"dialect": "plugin"}}), None)[0] == "plugin"
