"""The benchmarks stay runnable: everything they import from nixgold and tests exists, and every
ProxmoxClient method they call is one the client has (they run for minutes on the test bed, so a
renamed function would otherwise show only when someone measures). No guest."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from nixgold.proxmox.client import ProxmoxClient

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_a_benchmark_uses_only_what_exists(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("nixgold", "tests"):
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                        and not _is_module(f"{node.module}.{a.name}")]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "client"):
            if not hasattr(ProxmoxClient, node.func.attr):
                missing.append(f"ProxmoxClient.{node.func.attr} (line {node.lineno})")
    assert missing == []


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_the_suite_benchmark_finds_each_tests_file():
    """benchmarks/suite.py sums pytest's JUnit times per test file: ``classname`` is the dotted module
    (``tests.test_x``) for a test function and module + class for a method."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite", Path(__file__).resolve().parents[1] / "benchmarks/suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert suite.module_of("tests.test_config") == "tests/test_config.py"
    assert suite.module_of("tests.test_config.TestSomething") == "tests/test_config.py"
    assert suite.module_of("tests.no_such_file") == "tests/no_such_file.py"
