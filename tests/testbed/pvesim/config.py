"""Simulator configuration (one JSON file, written by tests/testbed/bed.py).

Example::

    {
      "node": "pve", "listen": "10.99.0.1", "port": 8006, "hostnames": ["pve"],
      "state_dir": "/work/main/.testbed/pvesim",
      "storages": [{"id": "local", "path": ".../storage/local",
                    "content": ["images", "iso", "snippets", "import"]}],
      "bridges": ["vmbr0"],
      "access": {
        "users": {"root@pam": {"password": "..."}, "nixgold@pve": {"password": "..."}},
        "tokens": {"nixgold@pve!testbed": {"secret": "<uuid>", "privsep": true}},
        "roles": {"NoClone": ["VM.Audit"]},
        "acl": [{"path": "/", "ugid": "nixgold@pve", "roleid": "Administrator"},
                {"path": "/", "ugid": "nixgold@pve!testbed", "roleid": "Administrator"}]
      },
      "sim_admin_secret": "...",
      "unauth_delay": 3.0,
      "dns": {"nameservers": ["10.99.0.1"], "search": ["testbed"]}
    }
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONTENT = ["images", "iso", "snippets", "vztmpl", "backup", "rootdir", "import"]


@dataclass
class SimConfig:
    state_dir: Path
    node: str = "pve"
    listen: str = "127.0.0.1"
    port: int = 8006
    hostnames: list[str] = field(default_factory=lambda: ["pve", "localhost"])
    storages: list[dict[str, Any]] = field(default_factory=list)
    bridges: list[str] = field(default_factory=lambda: ["vmbr0"])
    access: dict[str, Any] = field(default_factory=dict)
    sim_admin_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    unauth_delay: float = 3.0
    qemu_binary: str = "qemu-system-x86_64"
    accel: str = "tcg"
    dns: dict[str, list[str]] | None = None
    mac_prefix: str = "BC:24:11"
    cluster_name: str | None = None
    pve_version: str = "9.1.1"
    repoid: str = "42d19e2c6f1b0ab4"
    nextid_lower: int = 100
    nextid_upper: int = 1000000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimConfig":
        data = dict(data)
        data["state_dir"] = Path(data["state_dir"])
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown simulator config keys: {sorted(unknown)}")
        cfg = cls(**data)
        if not cfg.storages:
            cfg.storages = [{"id": "local", "path": str(cfg.state_dir / "storage" / "local"), "content": DEFAULT_CONTENT}]
        return cfg

    @classmethod
    def load(cls, path: Path) -> "SimConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["state_dir"] = str(self.state_dir)
        return out

    @property
    def url(self) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"https://{host}:{self.port}/api2/json"
