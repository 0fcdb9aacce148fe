"""scripts/setup.sh --dev and packer-plugin-proxmox: the plugin comes from its Go module only. Where the
Go proxy refuses the module's source, a binary of the pinned version already in the tools cache is
used, else one line says the plugin-dialect tests cannot run, and setup goes on (exit 0).

The tests source setup.sh (it only defines its functions then) and run ``try_proxmox_plugin`` with
``build_go_module`` standing in for the proxy's answer and a fake Packer; nothing is downloaded."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"


def fake_binaries(tmp: Path, plugin_version: str | None) -> tuple[Path, Path]:
    """A fake Packer (records `plugins install` calls) and, if ``plugin_version``, a cached plugin whose
    ``describe`` says that version."""
    packer = tmp / "packer"
    packer.write_text(f'#!/bin/sh\necho "$@" >> {tmp}/packer-calls\n[ "$1 $2" = "plugins installed" ] && exit 0\nexit 0\n')
    packer.chmod(0o755)
    plugin = tmp / "cache" / "packer-plugin-proxmox-1.2.4" / "packer-plugin-proxmox"
    if plugin_version:
        plugin.parent.mkdir(parents=True)
        plugin.write_text(f"#!/bin/sh\necho '{{\"version\":\"{plugin_version}\",\"api_version\":\"x5.0\"}}'\n")
        plugin.chmod(0o755)
    return packer, plugin


def try_plugin(tmp: Path, packer: Path, plugin: Path, proxy_rc: int) -> subprocess.CompletedProcess[str]:
    script = ('source "$1"; packer_cached=$2; plugin_cached=$3; gocmd=true; '
              f'build_go_module() {{ echo "go mod download: 403 Forbidden" >>"$4"; return {proxy_rc}; }}; '
              'go_proxy() { echo https://proxy.example; }; try_proxmox_plugin')
    return subprocess.run(["bash", "-c", script, "test", str(SETUP), str(packer), str(plugin), str(tmp / "log")],
                          capture_output=True, text=True, timeout=60)


def test_a_refused_module_without_a_cached_binary_is_one_line_and_setup_goes_on(tmp_path: Path) -> None:
    packer, plugin = fake_binaries(tmp_path, None)
    result = try_plugin(tmp_path, packer, plugin, 3)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if "cannot be built here" in ln]
    assert lines == [f"[setup] packer-plugin-proxmox v1.2.4 cannot be built here: the Go proxy (https://proxy.example) "
                     f"does not serve its source (log: {plugin.parent}/build.log) and {plugin.parent} holds no binary "
                     "that describes itself as v1.2.4; the plugin-dialect tests cannot run; continuing"]
    assert not plugin.exists() and not (tmp_path / "packer-calls").exists()  # nothing installed


def test_a_cached_binary_of_the_pinned_version_is_used_and_installed(tmp_path: Path) -> None:
    packer, plugin = fake_binaries(tmp_path, "1.2.4")
    result = try_plugin(tmp_path, packer, plugin, 3)
    assert result.returncode == 0, result.stderr
    assert f"[setup] packer-plugin-proxmox v1.2.4 already built (source unrecorded): {plugin}" in result.stdout
    calls = (tmp_path / "packer-calls").read_text().splitlines()
    assert f"plugins install --path {plugin} github.com/hashicorp/proxmox" in calls


def test_a_cached_binary_of_another_version_is_not_used(tmp_path: Path) -> None:
    packer, plugin = fake_binaries(tmp_path, "1.1.8")
    result = try_plugin(tmp_path, packer, plugin, 3)
    assert result.returncode == 0 and "cannot be built here" in result.stdout, result.stdout
    assert "already built" not in result.stdout and not (tmp_path / "packer-calls").exists()
