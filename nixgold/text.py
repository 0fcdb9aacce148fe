"""Text for messages: whatever came in, as one line (optionally cut to a limit)."""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """Whitespace (newlines included) collapsed to single spaces; cut with "…" beyond ``limit``."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"
