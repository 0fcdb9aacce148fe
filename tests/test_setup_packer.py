"""The plugin dialect's real tools, built by ``scripts/setup.sh --dev``: Packer and packer-plugin-proxmox.

setup.sh pins the versions (``PACKER_VERSION``, ``PROXMOX_PLUGIN_VERSION``), builds Packer into
``~/.cache/nixgold-tools/packer-<version>/packer``, linked as ``.venv/bin/plugin-dialect-packer``
(``packer`` on PATH stays Debian's 1.6.6, the bundled dialect's), and installs the plugin for it
(``packer plugins install --path``). Every plugin-dialect variant that tests/test_hcl.py renders
passes that Packer's full ``packer validate`` with the real plugin (firmware, disk types, ISO
source, http bind/interface/port, pool, vlan, storages); tests/test_hcl.py checks the same variants
against the plugin's published spec as a second opinion. A missing tool fails these tests, naming
the setup command; nothing is skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import hcl2
import pytest

from nixgold.packer.dialect import dialect_for_version, parse_packer_version
from nixgold.render.hcl import format_hcl, hcl_string
from nixgold.render.inputs import BUILD_KEY_PUB, HCL_FILE, HTTP_DIR, PACKER_DIR
from nixgold.render.packer_template import packer_template, render_hcl
from tests.helpers import packer_tools
from tests.test_hcl import CASES, ISO_VARS, case_inputs, packer_env, run_packer, write_tree

REPO = Path(__file__).resolve().parents[1]
PLUGIN_CASES = [case for case, (dialect, *_rest) in CASES.items() if dialect == "plugin"]


def built_packer() -> Path:
    """The Packer setup.sh --dev built; fails (never skips) when it is missing or not that version."""
    try:
        return packer_tools.plugin_dialect_packer()
    except packer_tools.ToolMissing as exc:
        pytest.fail(str(exc))


def installed_plugin() -> Path:
    """packer-plugin-proxmox as setup.sh installed it for that Packer; fails (never skips) when missing."""
    try:
        return packer_tools.installed_proxmox_plugin()
    except packer_tools.ToolMissing as exc:
        pytest.fail(str(exc))


def installed_plugin_dir() -> Path:
    """The plugin directory (``PACKER_PLUGIN_PATH``) setup.sh installed packer-plugin-proxmox into."""
    return packer_tools.plugin_dir(installed_plugin())


def test_the_dev_setup_built_the_pinned_packer() -> None:
    binary = built_packer()
    version = parse_packer_version(f"Packer v{packer_tools.pinned('PACKER_VERSION')}")
    assert version >= (1, 10, 0) and dialect_for_version(version) == "plugin"
    assert REPO not in binary.parents, "Packer's build must live outside the repository"


def plugin_env(tmp: Path, text: str) -> dict[str, str]:
    """Environment and render tree for validating ``text`` with the real plugin: the variables a
    plugin-dialect build passes (token auth, the per-build key pair), the installed plugin."""
    env = packer_env(tmp) | write_tree(tmp, text)
    del env["PKR_VAR_proxmox_password"]
    public = (tmp / HTTP_DIR / BUILD_KEY_PUB).read_text().strip()
    return env | {"PACKER_PLUGIN_PATH": str(installed_plugin_dir()), "PKR_VAR_proxmox_username": "nixgold@pve!build",
                  "PKR_VAR_proxmox_token": "dummy-token-for-validate", "PKR_VAR_build_public_key": public}


def test_the_dev_setup_installed_the_pinned_plugin() -> None:
    """The plugin Packer loads reports the pinned version itself, the version of the spec fixture."""
    plugin = installed_plugin()
    described = json.loads(subprocess.run([str(plugin), "describe"], capture_output=True, text=True, timeout=60,
                                          check=True).stdout)
    assert described["version"] == packer_tools.plugin_version(plugin) == packer_tools.pinned("PROXMOX_PLUGIN_VERSION")
    assert "iso" in described["builders"]
    spec = json.loads((REPO / "tests" / "fixtures" / "proxmox-iso-1.2.4.json").read_text())
    assert spec["_source"]["plugin_version"] == described["version"]
    assert REPO not in plugin.resolve().parents


@pytest.mark.parametrize("case", PLUGIN_CASES)
def test_packer_validate_accepts_the_plugin_template(case: str, tmp_path: Path) -> None:
    """Full ``packer validate`` (Packer and the plugin's Prepare) run the way a user runs it on
    ``invoke render``'s output: ``packer validate packer/`` from the render root."""
    packer = str(built_packer())
    inputs = case_inputs(*CASES[case])
    env = plugin_env(tmp_path, render_hcl(inputs))
    if inputs.iso is None:
        result = run_packer(packer, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
        assert result.returncode != 0 and 'Unset variable "iso_url"' in result.stdout + result.stderr
    if inputs.iso is None or inputs.iso.volume is None:
        env |= ISO_VARS  # what nixgold passes once the ISO is pinned
    result = run_packer(packer, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"packer validate failed:\n{output}"
    assert output.strip() == "The configuration is valid."
    assert "dummy-token-for-validate" not in output


@pytest.mark.parametrize(("breakage", "message"), [
    # each refused by the plugin's Prepare (packer-plugin-proxmox v1.2.4, builder/proxmox/common/config.go
    # and builder/proxmox/iso/config.go), which Packer's HCL layer accepts
    ("ssd on a virtio disk", "SSD emulation is not supported on virtio disks"),
    ("efi_config without storage", "efi_storage_pool not set for efi_config"),
    ("boot_iso without an ISO", "one of iso_file, iso_url, or a combination of cd_files and cd_content "
                                "must be specified for boot_iso"),
])
def test_packer_validate_with_the_plugin_rejects_a_broken_template(breakage: str, message: str,
                                                                   tmp_path: Path) -> None:
    """The check above is not vacuous: the plugin's own rules refuse what the HCL layer accepts."""
    packer = str(built_packer())
    data = packer_template(case_inputs(*CASES[PLUGIN_CASES[0]]))
    src = data["source"][0]['"proxmox-iso"']['"nixos"']
    if breakage == "ssd on a virtio disk":
        src["disks"][0] |= {"type": hcl_string("virtio"), "ssd": True}
        src["disks"][0].pop("io_thread", None)
    elif breakage == "efi_config without storage":
        del src["efi_config"][0]["efi_storage_pool"]
    else:
        for key in ("iso_url", "iso_checksum", "iso_file", "iso_download_pve"):
            src["boot_iso"][0].pop(key, None)
    env = plugin_env(tmp_path, format_hcl(hcl2.dumps(data))) | ISO_VARS
    result = run_packer(packer, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and message in output, output


def test_packer_validate_rejects_broken_hcl(tmp_path: Path) -> None:
    """The same Packer refuses a template with a syntax error."""
    packer = str(built_packer())
    text = render_hcl(case_inputs(*CASES[PLUGIN_CASES[0]]))
    broken = text.replace("boot_iso {", "boot_iso {{", 1)
    assert broken != text
    env = plugin_env(tmp_path, broken) | ISO_VARS
    result = run_packer(packer, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and HCL_FILE in output, output
