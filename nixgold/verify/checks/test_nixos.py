"""NixOS profile: the clone is the NixOS system the template was built from."""

from __future__ import annotations

import re

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import failure, first_line, run, sudo

MARKER = "test -e /etc/NIXOS"
VERSION = "nixos-version"
CONFIGURATION = "test -f /etc/nixos/configuration.nix"
EVALUATE = "nix-instantiate --eval -E '1 + 1'"
EVALUATE_TIMEOUT = 120


def probes(ctx):
    if ctx.profile != "nixos":
        return []
    return [Probe(MARKER), Probe(VERSION), Probe(CONFIGURATION), Probe(EVALUATE, timeout=EVALUATE_TIMEOUT)]


@pytest.fixture(autouse=True)
def _nixos_profile_only(ctx):
    if ctx.profile != "nixos":
        pytest.skip(f"profile {ctx.profile}")


@pytest.mark.check("nixos.marker", "the clone runs NixOS (/etc/NIXOS exists)")
def test_etc_nixos_marker(host):
    assert run(host, MARKER).rc == 0, "/etc/NIXOS is missing: this is not a NixOS system"


@pytest.mark.check("nixos.release", "nixos-version is the release in the build manifest")
def test_nixos_release(host, ctx):
    result = run(host, VERSION)
    assert result.rc == 0, f"nixos-version failed ({failure(result)})"
    version = first_line(result.stdout)
    if ctx.nixos_release:
        assert version.startswith(ctx.nixos_release), \
            f"nixos-version says {version!r}, the build manifest says {ctx.nixos_release}"
    else:
        assert re.match(r"^\d{2}\.\d{2}", version), f"nixos-version says {version!r}, not a release"


@pytest.mark.check("nixos.configuration", "/etc/nixos/configuration.nix is present")
def test_configuration_nix_present(host):
    assert run(host, CONFIGURATION).rc == 0, \
        "/etc/nixos/configuration.nix is missing: nixos-rebuild on the clone has nothing to build"


@pytest.mark.check("nixos.nix", "nix works (nix-instantiate evaluates 1 + 1)")
def test_nix_evaluates(host):
    result = run(host, EVALUATE, timeout=EVALUATE_TIMEOUT)
    if result.stdout.strip() != "2":  # a store without a daemon is root's only
        result = sudo(host, EVALUATE, timeout=EVALUATE_TIMEOUT)
    assert result.stdout.strip() == "2", f"`{EVALUATE}` did not print 2 ({failure(result)})"
