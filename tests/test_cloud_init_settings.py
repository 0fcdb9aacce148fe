"""The cloud-init settings a NixOS template depends on, read from the rendered configuration.nix.

configuration.nix is evaluated with ``nix-instantiate --eval`` (tests/nix/eval-module.nix) and its
``services.cloud-init.settings`` laid over nixpkgs' module defaults (tests/helpers/cloud_init.py).
Each assertion names the cloud-init or nixpkgs source that makes the setting necessary.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from nixgold.config.load import parse_config
from nixgold.render.guest_files import TEMPLATE_PACKAGES, render_cleanup_sh, render_configuration_nix
from nixgold.render.inputs import RenderInputs
from tests.helpers.cloud_init import MODULE, configured_settings, effective_settings
from tests.helpers.nix import nix_eval_modules


def evaluated(raw: dict[str, Any], nix_env: dict[str, str], tmp: Path) -> dict[str, Any]:
    config = parse_config(raw)
    inputs = RenderInputs(config=config, dialect="plugin", boot_command=(), manifest={}, iso=None)
    path = tmp / "configuration.nix"
    path.write_text(render_configuration_nix(inputs))
    (module,) = nix_eval_modules(nix_env, [(path, (*TEMPLATE_PACKAGES, *config.nixos.packages))])
    return module


@pytest.fixture(scope="module", params=["uefi", "bios"])
def module(request: pytest.FixtureRequest, nix_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    return evaluated({"vm": {"firmware": request.param}}, nix_env, tmp_path_factory.mktemp("cfg"))


def test_hostname_is_left_to_cloud_init_on_every_clone(module: dict[str, Any]) -> None:
    settings = effective_settings(configured_settings(module))
    # networking.hostName = "" makes NixOS skip /etc/hostname (networking module:
    # `environment.etc.hostname = mkIf (config.networking.hostName != "") { ... }`), so cloud-init owns it.
    assert module["networking"]["hostName"] == ""
    assert settings["preserve_hostname"] is False
    # The module's init stage runs update_hostname but not set_hostname (cloud-init.nix cloud_init_modules).
    # Distro.update_hostname (cloudinit/distros/__init__.py) rewrites /etc/hostname only if it is empty, or
    # equals data/previous-hostname: "if (not sys_hostname) or (sys_hostname == prev_hostname and
    # sys_hostname != hostname)". The build VM's first boot (no datasource) wrote the os-release default
    # "nixos" there, and `cloud-init clean` removes previous-hostname but not /etc/hostname: cleanup.sh
    # must delete /etc/hostname, or every clone keeps "nixos".
    assert "update_hostname" in settings["cloud_init_modules"] and "set_hostname" not in settings["cloud_init_modules"]
    cleanup = render_cleanup_sh(RenderInputs(config=parse_config({}), dialect="plugin", boot_command=(), manifest={},
                                             iso=None))
    assert re.search(r'^  rm -f "\$\{TEST_ROOT\}/etc/hostname"$', cleanup, re.M)


def test_root_never_gets_the_clones_keys(module: dict[str, Any]) -> None:
    # cloud-init.nix: `disable_root = mkDefault false`; cc_ssh then writes the instance's keys to root's
    # authorized_keys unprefixed (apply_credentials(keys, "root", disable_root, disable_root_opts)), and
    # with PermitRootLogin prohibit-password every clone's PVE key logs in as root.
    assert MODULE["settings_defaults"]["disable_root"] is False
    assert effective_settings(configured_settings(module))["disable_root"] is True


def test_datasources_are_the_ones_pve_provides(module: dict[str, Any]) -> None:
    # PVE's cloud-init drive is NoCloud (or ConfigDrive, citype configdrive2); None ends the search at once
    # on the build VM, which has no drive: without a list, ds-identify/cloud-init probe EC2, CloudStack,
    # OpenStack, ... metadata services for minutes before sshd starts.
    assert effective_settings(configured_settings(module))["datasource_list"] == ["NoCloud", "ConfigDrive", "None"]


def test_host_keys_are_not_replaced_after_sshd_started(module: dict[str, Any]) -> None:
    settings = effective_settings(configured_settings(module))
    # cc_ssh ("ssh") runs in the config stage (cloud-config.service, after sshd and sshd-keygen); its
    # `if cfg.get("ssh_deletekeys", True)` deletes /etc/ssh/ssh_host_*key* and makes new ones, so the
    # first client sees the host key change. cleanup.sh deleted the build VM's keys already and
    # sshd-keygen makes services.openssh.hostKeys on each clone's first boot.
    assert "ssh" in settings["cloud_config_modules"] and "ssh" not in settings["cloud_init_modules"]
    assert settings["ssh_deletekeys"] is False
    assert settings["ssh_genkeytypes"] == []  # sshd-keygen, not cloud-init, makes the host keys


def test_cloud_init_runs_where_nixos_needs_it(module: dict[str, Any]) -> None:
    settings = effective_settings(configured_settings(module))
    # cloud-init.nix: system_info is one mkDefault value, so restating it keeps distro and renderers.
    assert settings["system_info"]["distro"] == "nixos"
    assert settings["system_info"]["network"]["renderers"] == ["networkd"]
    assert module["services"]["cloud-init"]["network"]["enable"] is True
    assert module["networking"]["useNetworkd"] is True
    # cleanup.sh runs `cloud-init clean`: cloud-init.nix puts the package only on its units' path.
    assert {p["_stubPackage"] for p in module["environment"]["systemPackages"]} >= {"cloud-init"}
