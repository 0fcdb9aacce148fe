"""The plugin dialect's real Packer, built by ``scripts/setup.sh --dev`` from its Go module.

setup.sh pins the version (``PACKER_VERSION``), builds it into
``~/.cache/nixgold-tools/packer-<version>/packer`` and links it as ``.venv/bin/plugin-dialect-packer``
(``packer`` on PATH stays Debian's 1.6.6, the bundled dialect's). Every plugin-dialect variant that
tests/test_hcl.py renders passes that Packer's ``packer validate -syntax-only`` (the proxmox plugin
itself cannot be built where its module's source is not served, so a full validate is not possible).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from nixgold.packer.dialect import dialect_for_version, parse_packer_version
from nixgold.render.packer_template import render_hcl
from nixgold.render.inputs import HCL_FILE, PACKER_DIR
from tests.test_hcl import CASES, case_inputs, packer_env, run_packer, write_tree

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"
LINK = REPO / ".venv" / "bin" / "plugin-dialect-packer"
PLUGIN_CASES = [case for case, (dialect, *_rest) in CASES.items() if dialect == "plugin"]


def pinned_version() -> str:
    match = re.search(r"^PACKER_VERSION=(\d+\.\d+\.\d+)\b", SETUP.read_text(), flags=re.M)
    assert match, f"{SETUP} pins no PACKER_VERSION=x.y.z"
    return match.group(1)


def built_packer() -> Path:
    """The Packer setup.sh --dev built; fails (never skips) when it is missing or not that version."""
    version = pinned_version()
    hint = "run `bash scripts/setup.sh --dev`"
    if not LINK.is_symlink() and not LINK.exists():
        pytest.fail(f"Packer {version} for the plugin dialect is not set up ({LINK} is missing): {hint}")
    binary = LINK.resolve()
    if not binary.is_file():
        pytest.fail(f"{LINK} points to {binary}, which does not exist: {hint}")
    if binary.parent.name != f"packer-{version}" or binary.parent.parent.name != "nixgold-tools":
        pytest.fail(f"{LINK} points to {binary}, not the cached nixgold-tools/packer-{version}/packer: {hint}")
    result = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60,
                            env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if result.returncode != 0 or first != f"Packer v{version}":
        pytest.fail(f"`{binary} version` printed {first or result.stderr.strip()!r} (exit {result.returncode}), "
                    f"expected 'Packer v{version}': {hint}")
    return binary


def test_the_dev_setup_built_the_pinned_packer() -> None:
    binary = built_packer()
    version = parse_packer_version(f"Packer v{pinned_version()}")
    assert version >= (1, 10, 0) and dialect_for_version(version) == "plugin"
    assert REPO not in binary.parents, "Packer's build must live outside the repository"


@pytest.mark.parametrize("case", PLUGIN_CASES)
def test_packer_validate_syntax_only_accepts_the_plugin_template(case: str, tmp_path: Path) -> None:
    packer = str(built_packer())
    env = packer_env(tmp_path) | write_tree(tmp_path, render_hcl(case_inputs(*CASES[case])))
    result = run_packer(packer, ["validate", "-syntax-only", f"{PACKER_DIR}/"], tmp_path, env)
    assert result.returncode == 0, f"packer validate -syntax-only failed:\n{result.stdout}{result.stderr}"
    assert "Syntax-only check passed" in result.stdout


def test_packer_validate_syntax_only_rejects_broken_hcl(tmp_path: Path) -> None:
    """The check above is not vacuous: the same Packer refuses a template with a syntax error."""
    packer = str(built_packer())
    text = render_hcl(case_inputs(*CASES[PLUGIN_CASES[0]]))
    broken = text.replace("boot_iso {", "boot_iso {{", 1)
    assert broken != text
    env = packer_env(tmp_path) | write_tree(tmp_path, broken)
    result = run_packer(packer, ["validate", "-syntax-only", f"{PACKER_DIR}/"], tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and HCL_FILE in output, output
