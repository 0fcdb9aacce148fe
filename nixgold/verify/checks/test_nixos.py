"""NixOS profile: the clone is the NixOS system the template was built from."""

from __future__ import annotations

import re

import pytest

from nixgold.verify.checks.helpers import failure, first_line, run, sudo


@pytest.fixture(autouse=True)
def _nixos_profile_only(ctx):
    if ctx.profile != "nixos":
        pytest.skip(f"profile {ctx.profile}")


@pytest.mark.check("nixos.marker", "the clone runs NixOS (/etc/NIXOS exists)")
def test_etc_nixos_marker(host):
    assert host.file("/etc/NIXOS").exists, "/etc/NIXOS is missing: this is not a NixOS system"


@pytest.mark.check("nixos.release", "nixos-version is the release in the build manifest")
def test_nixos_release(host, ctx):
    result = run(host, "nixos-version")
    assert result.rc == 0, f"nixos-version failed ({failure(result)})"
    version = first_line(result.stdout)
    if ctx.nixos_release:
        assert version.startswith(ctx.nixos_release), \
            f"nixos-version says {version!r}, the build manifest says {ctx.nixos_release}"
    else:
        assert re.match(r"^\d{2}\.\d{2}", version), f"nixos-version says {version!r}, not a release"


@pytest.mark.check("nixos.configuration", "/etc/nixos/configuration.nix is present")
def test_configuration_nix_present(host):
    assert host.file("/etc/nixos/configuration.nix").is_file, \
        "/etc/nixos/configuration.nix is missing: nixos-rebuild on the clone has nothing to build"


@pytest.mark.check("nixos.nix", "nix works (nix-instantiate evaluates 1 + 1)")
def test_nix_evaluates(host):
    command = "nix-instantiate --eval -E '1 + 1'"
    result = run(host, command, timeout=120)
    if result.stdout.strip() != "2":  # a store without a daemon is root's only
        result = sudo(host, command, timeout=120)
    assert result.stdout.strip() == "2", f"`{command}` did not print 2 ({failure(result)})"
