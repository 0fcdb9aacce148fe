"""The package layout shows the pipeline and keeps its shape: arrows point down, no cycles, no
sibling's private names, and every module says its one job on its first line.

    commands
      -> refresh -> build, verify, packer, proxmox, render, lock, bootcmd, config, base
      -> build  -> packer, proxmox, render, lock, bootcmd, config, base
      -> verify -> proxmox, render, config, base
    packer -> render (file and variable names), config, base
    proxmox -> render (the manifest: ownership), config, base
    render -> bootcmd, lock, config, base
    lock -> config, base;  bootcmd -> base;  config -> base
    base = errors, units, text, secrets, signals, progress (no nixgold imports but each other)

Imports inside functions count as much as those at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nixgold"
BASE = {"errors", "units", "text", "secrets", "signals", "progress"}
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "config": {"base"},
    "lock": {"config", "base"},
    "bootcmd": {"base"},
    "render": {"bootcmd", "lock", "config", "base"},
    "packer": {"render", "config", "base"},
    "proxmox": {"render", "config", "base"},
    "build": {"packer", "proxmox", "render", "lock", "bootcmd", "config", "base"},
    "verify": {"proxmox", "render", "config", "base"},
    "refresh": {"build", "verify", "packer", "proxmox", "render", "lock", "bootcmd", "config", "base"},
    "commands": {"refresh", "build", "verify", "packer", "proxmox", "render", "lock", "bootcmd", "config", "base"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the nixgold package itself (__version__)
    return "base" if parts[1] in BASE else parts[1]


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every nixgold import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nixgold":
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            names = [a.name for a in node.names]
            # `from nixgold.render import templating` imports a module
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            if submodules:
                found += [(m, [], node.lineno) for m in submodules]
            else:
                found.append((node.module, names, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}:{node.lineno}: relative import (nixgold imports are absolute)")
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "nixgold"]
    return found


def test_every_import_points_down_the_pipeline():
    wrong = []
    for name, path in MODULES.items():
        mine = group(name)
        for target, _, line in imports(path):
            theirs = group(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name}:{line} imports {target} ({mine} -> {theirs})")
    assert wrong == []


def test_no_import_cycle_between_modules():
    graph = {name: {t for t, _, _ in imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    for name in graph:  # a module's package __init__ is imported with it: that edge is not a cycle of ours
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_imports_another_modules_private_name():
    private = [f"{name}:{line} imports {n} from {target}" for name, path in MODULES.items()
               for target, names, line in imports(path) for n in names
               if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_every_module_says_its_one_job_first():
    missing = []
    for name, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        first = (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
        if len(first) < 12 or len(first) > 140 or first == ".":
            missing.append(f"{name}: {first!r}")
    assert missing == []


def test_the_checker_can_fail(tmp_path, monkeypatch):
    """An upward import and a cycle are caught (the tests above are not vacuous)."""
    fake = {"nixgold.config.x": tmp_path / "x.py", "nixgold.config.y": tmp_path / "y.py"}
    fake["nixgold.config.x"].write_text('"""X does one thing well enough."""\nfrom nixgold.build.builder import Builder\n'
                                        "from nixgold.config.y import z\n")
    fake["nixgold.config.y"].write_text('"""Y does another thing."""\nfrom nixgold.config.x import _w\n')
    globals()["MODULES"], saved = fake, MODULES
    try:
        with pytest.raises(AssertionError, match="config -> build"):
            test_every_import_points_down_the_pipeline()
        with pytest.raises(AssertionError, match="nixgold.config"):
            test_no_import_cycle_between_modules()
        with pytest.raises(AssertionError, match="imports _w"):
            test_no_module_imports_another_modules_private_name()
    finally:
        globals()["MODULES"] = saved
