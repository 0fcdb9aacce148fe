"""Stand-in cloud images (Debian 12 + cloud-init) for the nixgold test bed.

    from tests.testbed.images import build_image, VARIANTS
    info = build_image("good")          # cached under ~/.cache/nixgold-testbed/images
    qemu ... -kernel info.kernel -initrd info.initrd -append info.cmdline \\
             -drive file=<overlay backed by info.disk>,if=virtio

Names are loaded lazily so that ``python -m tests.testbed.images.build`` does
not import the builder twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CHECK_VARIANTS": "build",
    "CMDLINE": "build",
    "DISK_SIZE": "build",
    "ROOT_LABEL": "build",
    "TYPED_LINES_LOG": "build",
    "VARIANTS": "build",
    "ImageInfo": "build",
    "Variant": "build",
    "build_image": "build",
    "load_image": "build",
    "prune_cache": "build",
    "recipe_hash": "build",
    "ImageBuildError": "base",
    "debian_mirror": "base",
    "default_cache_dir": "base",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .base import ImageBuildError, debian_mirror, default_cache_dir
    from .build import (
        CHECK_VARIANTS,
        CMDLINE,
        DISK_SIZE,
        ROOT_LABEL,
        TYPED_LINES_LOG,
        VARIANTS,
        ImageInfo,
        Variant,
        build_image,
        load_image,
        prune_cache,
        recipe_hash,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
