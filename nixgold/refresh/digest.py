"""The input digest: everything a template is built from, as one sha256 (equal digest = nothing to build).

    digest = input_digest(config, env=os.environ)      # Digest(sha256, parts)

What goes in:

* the **configuration**, minus what does not change the image: how nixgold reaches Proxmox
  (``proxmox.url``, ``token_id``, ``username``, ``ca_bundle``, ``timeout``; ``proxmox.node`` stays:
  the template lives there), how the build runs (``[build]`` timeouts, waits, ports, paths; only
  ``build.dialect`` stays), how it is checked (``[verify]``) and the refresh settings themselves;
* ``nixgold.lock`` as it is on disk (a new pinned ISO is a new image), or nothing when there is none;
* the nixgold version;
* the build dialect the build would use (``build.dialect``, or for ``auto`` the one the installed
  Packer gives), and the sha256 of every rendered ``packer/`` and ``http/`` file for it, plus the
  files of ``$NIXGOLD_RENDER_OVERLAY`` (the test hook that replaces rendered files) when it is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nixgold import __version__
from nixgold.config.model import BuildSettings, Config, ProxmoxSettings, RefreshSettings, VerifySettings
from nixgold.lock import lock_path, read_lock
from nixgold.packer.dialect import choose_dialect, detect_packer
from nixgold.render.files import OVERLAY_ENV, prepare_inputs, render_files


@dataclass(frozen=True)
class Digest:
    sha256: str
    parts: dict[str, Any]  # what was hashed (files as their sha256), for --json and for finding the change

    @property
    def short(self) -> str:
        return self.sha256[:12]


def image_config(config: Config) -> Config:
    """The configuration with everything that does not change the built image set to its default."""
    return dataclasses.replace(
        config,
        proxmox=ProxmoxSettings(node=config.proxmox.node),
        build=BuildSettings(dialect=config.build.dialect),
        verify=VerifySettings(),
        refresh=RefreshSettings(),
        source=None,
        origin_hash=None,
    )


def build_dialect(config: Config) -> str:
    """The dialect `build-template` would use now (``auto``: from the installed Packer's version)."""
    if config.build.dialect != "auto":
        return config.build.dialect
    return choose_dialect(config, detect_packer(config.build.packer))[0]


def input_digest(config: Config, env: Mapping[str, str] | None = None, dialect: str | None = None) -> Digest:
    env = os.environ if env is None else env
    dialect = dialect or build_dialect(config)
    image = image_config(config)
    path = lock_path(config)
    lock_text = path.read_text(encoding="utf-8") if path.is_file() else ""
    inputs = prepare_inputs(image, dialect=dialect, lock=read_lock(path), require_iso=False)
    files = {f.path: f.sha256 for f in render_files(inputs)}
    overlay = env.get(OVERLAY_ENV)
    if overlay and Path(overlay).is_dir():
        for file in sorted(p for p in Path(overlay).rglob("*") if p.is_file()):
            files[file.relative_to(overlay).as_posix()] = "overlay:" + hashlib.sha256(file.read_bytes()).hexdigest()
    parts = {
        "nixgold_version": __version__,
        "config": image.to_dict(),
        "lock_sha256": hashlib.sha256(lock_text.encode()).hexdigest() if lock_text else None,
        "dialect": dialect,
        "files": dict(sorted(files.items())),
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return Digest(hashlib.sha256(blob.encode()).hexdigest(), parts)
