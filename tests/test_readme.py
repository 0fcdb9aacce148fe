"""README's two commands stay true: CI runs the README's test command verbatim."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _sh_blocks()
    test_command = next(b for b in blocks if "pytest" in b)
    ci_lines = [line for line in (REPO / ".ci/run").read_text().splitlines()
                if line and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == [test_command]


def test_readme_main_command_runs_the_dry_run(tmp_path: Path) -> None:
    """The Quick start line, verbatim after its setup step, in a fresh directory that has what
    setup.sh and a checkout provide (.venv, tasks.py, nixgold.example.toml): the dry run prints
    the plan and renders into build/dry-run/ (offline, nothing touched)."""
    main_command = _sh_blocks()[0]
    setup, _, rest = main_command.partition(" && ")
    assert setup == "bash scripts/setup.sh" and (REPO / "scripts/setup.sh").is_file()
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "tasks.py").symlink_to(REPO / "tasks.py")
    shutil.copyfile(REPO / "nixgold.example.toml", tmp_path / "nixgold.example.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
    result = subprocess.run(["bash", "-c", rest], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nixgold.toml").read_text() == (REPO / "nixgold.example.toml").read_text()
    for fragment in ("vmid 9004", "build/dry-run/packer/nixgold.pkr.hcl", "build/dry-run/http/install.sh"):
        assert fragment in result.stdout, (fragment, result.stdout)
    assert (tmp_path / "build/dry-run/packer/nixgold.pkr.hcl").is_file()
