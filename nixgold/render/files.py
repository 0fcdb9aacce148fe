"""Assemble every rendered file (HCL, cleanup.sh, install.sh, configuration.nix) and write them.

Rendering is pure (:func:`render_files`); only :func:`write_files` touches the disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nixgold.config.model import Config
from nixgold.config.validate import check_dialect_fits
from nixgold.errors import LockError, PreflightError
from nixgold.lock import IsoLock, iso_source
from nixgold.render.boot_command import boot_command
from nixgold.render.guest_files import render_cleanup_sh, render_configuration_nix, render_install_sh
from nixgold.render.inputs import (
    CLEANUP_SCRIPT,
    CONFIGURATION_NIX,
    HCL_FILE,
    HTTP_DIR,
    INSTALL_SCRIPT,
    PACKER_DIR,
    RenderInputs,
)
from nixgold.render.manifest import static_manifest
from nixgold.render.packer_template import render_hcl

#: A test hook: a directory whose files replace rendered files of the same relative path.
OVERLAY_ENV = "NIXGOLD_RENDER_OVERLAY"


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the render root, '/'-separated
    content: str
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


def prepare_inputs(config: Config, *, dialect: str, lock: IsoLock | None, require_iso: bool) -> RenderInputs:
    """Decide everything the renderers need. ``require_iso`` makes a missing lock an error."""
    check_dialect_fits(config, dialect)
    try:
        iso = iso_source(config, lock)
    except LockError:
        if require_iso:
            raise
        iso = None
    return RenderInputs(config=config, dialect=dialect, boot_command=tuple(boot_command(config)),
                        manifest=static_manifest(config, dialect), iso=iso)


def render_files(inputs: RenderInputs) -> list[RenderedFile]:
    configuration_nix = render_configuration_nix(inputs)
    nix_sha256 = hashlib.sha256(configuration_nix.encode()).hexdigest()
    return [
        RenderedFile(f"{PACKER_DIR}/{HCL_FILE}", render_hcl(inputs)),
        RenderedFile(f"{PACKER_DIR}/{CLEANUP_SCRIPT}", render_cleanup_sh(inputs), 0o755),
        RenderedFile(f"{HTTP_DIR}/{INSTALL_SCRIPT}", render_install_sh(inputs, nix_sha256), 0o755),
        RenderedFile(f"{HTTP_DIR}/{CONFIGURATION_NIX}", configuration_nix),
    ]


def write_files(root: Path, files: list[RenderedFile]) -> list[Path]:
    """Write each file atomically (temp file + rename) with its mode; returns the paths."""
    written = []
    for file in files:
        path = root / file.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(file.content, encoding="utf-8")
        tmp.chmod(file.mode)
        tmp.replace(path)
        written.append(path)
    return written


def apply_overlay(root: Path, overlay: Path) -> list[str]:
    """Copy every file of ``overlay`` over ``root`` (same relative path, mode kept); the paths."""
    if not overlay.is_dir():
        raise PreflightError(f"{OVERLAY_ENV}={overlay}: not a directory")
    replaced = []
    for path in sorted(p for p in overlay.rglob("*") if p.is_file()):
        rel = path.relative_to(overlay)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(path.stat().st_mode & 0o777)
        replaced.append(rel.as_posix())
    return replaced
