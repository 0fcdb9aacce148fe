"""Sizes and durations as users write them (``20G``, ``+1G``, ``1m30s``) and as nixgold shows them."""

from __future__ import annotations

import re

#: Go's time.ParseDuration units (what Packer accepts for its durations).
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_DURATION_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
#: Binary size suffixes as PVE reads them (``size=20G``, ``resize +1G``); no suffix: bytes.
_SIZE_SCALE = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)")
GIB = 1024 ** 3


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration string like ``1m30s`` (already validated)."""
    return sum(float(n) * _DURATION_SCALE[u] for n, u in _DURATION_PART_RE.findall(text))


def parse_size(text: str) -> int:
    """Bytes in a PVE size like ``20G``, ``512M`` or ``1.5T``; ValueError for anything else."""
    m = SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a disk size: {text!r}")
    return int(float(m.group(1)) * _SIZE_SCALE[m.group(2)])


def size_gib(text: str) -> float:
    return parse_size(text) / GIB


def fmt_duration(seconds: float) -> str:
    """``90`` -> ``1m30s``, ``120`` -> ``2m``, ``7.5`` -> ``7.5s`` (as a user would write it)."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:g}s"
