"""What a NixOS template does that a Debian one does not, for the stand-ins to do the same.

Each rule here is a NixOS behaviour the template's clones depend on, with its source; the stand-in
installer (templates/install.sh.j2) and the stand-in images (tests/testbed/images/build.py) both
apply it, so a template whose rendered files break one of them fails `invoke verify` on the test
bed the way it would on a real cluster.

* cloud-init's settings are the effective ones of the rendered configuration.nix: nixpkgs'
  module defaults (cloud-init.nix, all mkDefault: ``cloud_init_modules`` with ``update_hostname``
  but no ``set_hostname``, ``disable_root: false``, ``ssh`` in the config stage) with the
  template's own settings over them (tests/helpers/cloud_init.py), evaluated by nix-instantiate.
  Two values do not exist on Debian and are translated: ``system_info.distro`` nixos -> debian
  (Debian's cloud-init has no nixos distro; nixpkgs adds it in 0001-add-nixos-support.patch, whose
  hostname handling - /etc/hostname through HostnameConf - is Debian's too) and the default
  user's shell /run/current-system/sw/bin/bash -> /bin/bash.
* cloud-init always runs: NixOS starts it from plain units (cloud-init.nix systemd.services.*),
  without Debian's ds-identify generator, which would switch cloud-init off on a build VM that
  has no datasource (``/etc/cloud/ds-identify.cfg`` ``policy: enabled``).
* no /etc/hostname until cloud-init writes one: with ``networking.hostName = ""`` NixOS does not
  create it (``environment.etc.hostname = mkIf (config.networking.hostName != "")``) and systemd
  falls back to os-release's ``DEFAULT_HOSTNAME = config.system.nixos.distroId`` ("nixos";
  nixos/modules/misc/version.nix).
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from nixgold.config.model import Config
from nixgold.render.guest_files import TEMPLATE_PACKAGES, render_configuration_nix
from nixgold.render.inputs import RenderInputs
from tests.helpers.cloud_init import configured_settings, effective_settings
from tests.helpers.nix import make_nix_env, nix_eval_modules

DEFAULT_HOSTNAME = "nixos"  # os-release DEFAULT_HOSTNAME = config.system.nixos.distroId
CLOUD_CFG = "etc/cloud/cloud.cfg.d/95_nixgold_nixos.cfg"  # after the image's own 90_* file
DS_IDENTIFY_CFG = "etc/cloud/ds-identify.cfg"
DS_IDENTIFY = "# nixgold stand-in: NixOS runs cloud-init without ds-identify\npolicy: enabled\n"
OS_RELEASE_LINE = f"DEFAULT_HOSTNAME={DEFAULT_HOSTNAME}\n"
#: Values that name NixOS paths or code, and what they are on the Debian stand-in.
DEBIAN = {("system_info", "distro"): "debian",
          ("system_info", "default_user", "shell"): "/bin/bash"}


def evaluated_settings(config: Config) -> dict[str, Any]:
    """``services.cloud-init.settings`` of the configuration.nix nixgold renders for ``config``."""
    return _evaluated(render_configuration_nix(RenderInputs(config=config, dialect="plugin", boot_command=(),
                                                            manifest={}, iso=None)),
                      (*TEMPLATE_PACKAGES, *config.nixos.packages))


@functools.lru_cache(maxsize=8)
def _evaluated(nixcfg: str, packages: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nixgold-standin-nix-") as tmp:
        path = Path(tmp) / "configuration.nix"
        path.write_text(nixcfg)
        (module,) = nix_eval_modules(make_nix_env(Path(tmp) / "nix"), [(path, packages)])
    return configured_settings(module)


def debian_settings(configured: dict[str, Any]) -> dict[str, Any]:
    """The effective cloud-init settings, with the NixOS-only values translated for Debian."""
    settings = json.loads(json.dumps(effective_settings(configured)))  # a deep copy
    for path, value in DEBIAN.items():
        node = settings
        for key in path[:-1]:
            node = node.get(key, {})
        if path[-1] in node:
            node[path[-1]] = value
    return settings


def cloud_cfg(configured: dict[str, Any]) -> str:
    """The stand-in's cloud.cfg.d file (JSON is YAML): module lists, disable_root, datasources, keys."""
    return ("# nixgold stand-in: the NixOS template's effective cloud-init settings "
            "(nixpkgs module defaults + configuration.nix)\n"
            + json.dumps(debian_settings(configured), indent=1, sort_keys=True) + "\n")
