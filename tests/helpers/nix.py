"""nix-instantiate (Debian's nix-bin, no nixpkgs) for the tests: parse and evaluate rendered Nix.

``nix_env`` (a session fixture in tests/conftest.py) points every Nix state/store/config dir at a
temporary directory; ``nix_eval_modules`` calls rendered NixOS modules with stub arguments
(tests/nix/eval-module.nix) and returns their attribute sets as data.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

EVAL_HARNESS = Path(__file__).resolve().parents[1] / "nix" / "eval-module.nix"


def make_nix_env(root: Path) -> dict[str, str]:
    """nix-bin 2.8 without a daemon or /nix: every state/store/config dir below ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX")}
    env.update(
        HOME=str(root / "home"),
        XDG_CACHE_HOME=str(root / "cache"),
        NIX_STATE_DIR=str(root / "state"),
        NIX_STORE_DIR=str(root / "store"),
        NIX_LOG_DIR=str(root / "log"),
        NIX_CONF_DIR=str(root / "conf"),  # no /etc/nix/nix.conf surprises
        NIX_REMOTE="",  # never talk to a daemon
        NIX_PATH="",
    )
    return env


def nix(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix-instantiate", *args], env=env, capture_output=True, text=True, timeout=60)


def nix_parse(env: dict[str, str], files: Iterable[Path]) -> None:
    proc = nix(env, "--parse", *map(str, files))
    assert proc.returncode == 0, proc.stderr


def nix_eval_modules(env: dict[str, str], specs: list[tuple[Path, Iterable[str]]]) -> list[dict[str, Any]]:
    """Evaluate many rendered modules in ONE nix-instantiate run; ``packages`` are the stub
    packages each module may use (dotted attribute paths)."""
    spec = [{"file": str(path), "packages": [p.split(".") for p in packages]} for path, packages in specs]
    proc = nix(env, "--eval", "--strict", "--json", str(EVAL_HARNESS), "--argstr", "specJson", json.dumps(spec))
    if proc.returncode != 0:
        raise AssertionError(f"nix-instantiate --eval failed: {proc.stderr}")
    return json.loads(proc.stdout)


def nix_eval_expr(env: dict[str, str], expr: str, tmp: Path) -> Any:
    path = tmp / "expr.nix"
    path.write_text(expr, encoding="utf-8")
    proc = nix(env, "--eval", "--strict", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
