"""The plugin dialect's tools as ``scripts/setup.sh --dev`` leaves them, and the versions they report.

    packer = plugin_dialect_packer()            # ~/.cache/nixgold-tools/packer-1.16.0/packer
    plugin = installed_proxmox_plugin()         # .../plugins/github.com/hashicorp/proxmox/packer-plugin-proxmox_v1.2.4_...
    packer_version(packer), plugin_version(plugin)   # "1.16.0", "1.2.4": what the binaries say

Anything missing or of another version raises :class:`ToolMissing`, whose message ends by naming
the setup command (tests turn it into a failure, never a skip).
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
LINK = REPO / ".venv" / "bin" / "plugin-dialect-packer"
HINT = "run `bash scripts/setup.sh --dev`"


class ToolMissing(RuntimeError):
    """A tool the plugin dialect's tests need is missing or not the pinned version."""


def pinned(name: str) -> str:
    """``PACKER_VERSION`` / ``PROXMOX_PLUGIN_VERSION`` as pinned at the top of setup.sh."""
    match = re.search(rf"^{name}=(\d+\.\d+\.\d+)\b", SETUP.read_text(), flags=re.M)
    if not match:
        raise ToolMissing(f"{SETUP} pins no {name}=x.y.z")
    return match.group(1)


def packer_version(binary: Path | str) -> str:
    """"1.16.0" from ``BINARY version`` (its first line, ``Packer v1.16.0``)."""
    result = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60,
                            env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    match = re.fullmatch(r"Packer v(\d+\.\d+\.\d+)", first)
    if result.returncode != 0 or not match:
        raise ToolMissing(f"`{binary} version` printed {first or result.stderr.strip()!r} (exit {result.returncode})")
    return match.group(1)


def plugin_version(binary: Path | str) -> str:
    """"1.2.4" from the plugin's own ``describe``."""
    result = subprocess.run([str(binary), "describe"], capture_output=True, text=True, timeout=60)
    try:
        return str(json.loads(result.stdout)["version"])
    except (ValueError, KeyError) as exc:
        raise ToolMissing(f"`{binary} describe` printed {result.stdout.strip() or result.stderr.strip()!r}") from exc


@functools.lru_cache(maxsize=None)
def plugin_dialect_packer() -> Path:
    """The Packer setup.sh --dev built (the pinned version, cached outside the repository)."""
    version = pinned("PACKER_VERSION")
    if not LINK.is_symlink() and not LINK.exists():
        raise ToolMissing(f"Packer {version} for the plugin dialect is not set up ({LINK} is missing): {HINT}")
    binary = LINK.resolve()
    if not binary.is_file():
        raise ToolMissing(f"{LINK} points to {binary}, which does not exist: {HINT}")
    if binary.parent.name != f"packer-{version}" or binary.parent.parent.name != "nixgold-tools":
        raise ToolMissing(f"{LINK} points to {binary}, not the cached nixgold-tools/packer-{version}/packer: {HINT}")
    try:
        found = packer_version(binary)
    except ToolMissing as exc:
        raise ToolMissing(f"{exc}, expected 'Packer v{version}': {HINT}") from None
    if found != version:
        raise ToolMissing(f"`{binary} version` says Packer v{found}, expected v{version}: {HINT}")
    return binary


@functools.lru_cache(maxsize=None)
def installed_proxmox_plugin() -> Path:
    """packer-plugin-proxmox as installed for that Packer (``packer plugins installed`` in the
    environment setup.sh ran in), the pinned version."""
    packer = plugin_dialect_packer()
    version = pinned("PROXMOX_PLUGIN_VERSION")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKR_", "PACKER_"))} | {"CHECKPOINT_DISABLE": "1"}
    result = subprocess.run([str(packer), "plugins", "installed"], capture_output=True, text=True, timeout=60, env=env)
    wanted = f"/github.com/hashicorp/proxmox/packer-plugin-proxmox_v{version}_x5.0_linux_amd64"
    for line in result.stdout.splitlines():
        if line.endswith(wanted):
            return Path(line)
    raise ToolMissing(f"packer-plugin-proxmox {version} is not installed for {packer} (`packer plugins installed`: "
                      f"{result.stdout.strip() or result.stderr.strip() or 'nothing'}): {HINT}")


def plugin_dir(plugin: Path) -> Path:
    """The plugin directory (``PACKER_PLUGIN_PATH``) holding ``plugin``."""
    return plugin.parents[3]
