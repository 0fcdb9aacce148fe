"""Which Packer dialect to render: chosen from `packer version`.

* ``plugin``  — Packer >= 1.10 with packer-plugin-proxmox >= 1.2 (``proxmox-iso``, API token,
  UEFI, ``boot_iso {}``). What HashiCorp's packages install.
* ``bundled`` — Packer 1.6.x as shipped by Debian 12 / Ubuntu 22.04 (`apt install packer`):
  the builder compiled into Packer, password login, SeaBIOS only.

Packer 1.7 – 1.9 are refused: they neither bundle the 1.6 builder semantics nor are they a
version the proxmox plugin 1.2 documents support for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from nixgold.config.model import Config
from nixgold.config.validate import check_dialect_fits
from nixgold.errors import ConfigError, ConfigIssue, PreflightError
from nixgold.packer.env import tool_environment

PLUGIN_MIN = (1, 10, 0)
BUNDLED_SERIES = (1, 6)
_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class PackerInfo:
    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def parse_packer_version(output: str) -> tuple[int, int, int]:
    """``Packer v1.6.6`` / ``1.11.2`` (first line of `packer version`) -> (1, 6, 6)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    match = _VERSION_RE.search(first)
    if not match:
        raise PreflightError(f"cannot read a version from `packer version` output: {first[:100]!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def detect_packer(binary: str = "packer", timeout: float = 20.0) -> PackerInfo | None:
    """Run `packer version`; None when the binary is not installed."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        result = subprocess.run([path, "version"], capture_output=True, text=True, timeout=timeout,
                                env=tool_environment(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"`{path} version` did not run: {exc}") from exc
    if result.returncode != 0:
        raise PreflightError(f"`{path} version` failed (exit {result.returncode}): {result.stderr.strip()[:200]}")
    return PackerInfo(path=path, version=parse_packer_version(result.stdout))


def dialect_for_version(version: tuple[int, int, int]) -> str:
    if version >= PLUGIN_MIN:
        return "plugin"
    if version[:2] == BUNDLED_SERIES:
        return "bundled"
    shown = ".".join(map(str, version))
    raise PreflightError(
        f"Packer {shown} is not supported: use Packer >= 1.10 (plugin dialect, HashiCorp's packages) "
        "or Debian/Ubuntu's Packer 1.6 (bundled dialect)")


def choose_dialect(config: Config, packer: PackerInfo | None) -> tuple[str, str]:
    """The dialect to render and a one-line reason for the plan."""
    wanted = config.build.dialect
    if wanted != "auto":
        reason = f"build.dialect = {wanted}"
        if packer is not None:
            have = dialect_for_version(packer.version)
            if have != wanted:
                raise ConfigError(ConfigIssue(
                    "build.dialect", wanted,
                    f"{have} or auto: the installed {packer.path} is Packer {packer.version_text}"))
            reason += f" (Packer {packer.version_text})"
        check_dialect_fits(config, wanted)
        return wanted, reason
    if packer is None:
        check_dialect_fits(config, "plugin")
        return "plugin", "build.dialect = auto; packer not found, assuming Packer >= 1.10 (install it to build)"
    dialect = dialect_for_version(packer.version)
    check_dialect_fits(config, dialect)
    return dialect, f"build.dialect = auto; {packer.path} is Packer {packer.version_text}"
