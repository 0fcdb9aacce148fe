"""UPIDs exactly as pve-common ``PVE::UPID`` encodes and decodes them."""
from __future__ import annotations

import re
from dataclasses import dataclass

UPID_RE = re.compile(
    r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):"
    r"([^:\s/]+):([^:\s/]*):([^:\s/]+):$"
)


@dataclass(frozen=True)
class Upid:
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str  # user@realm or user@realm!token

    def __str__(self) -> str:
        return (
            f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
            f"{self.type}:{self.id}:{self.user}:"
        )


def encode(upid: Upid) -> str:
    return str(upid)


def decode(text: str) -> Upid | None:
    m = UPID_RE.match(text)
    if not m:
        return None
    return Upid(
        node=m.group(1),
        pid=int(m.group(3), 16),
        pstart=int(m.group(4), 16),
        starttime=int(m.group(5), 16),
        type=m.group(6),
        id=m.group(7),
        user=m.group(8),
    )
