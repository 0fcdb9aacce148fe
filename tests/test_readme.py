"""README's two commands stay true: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
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


def test_readme_main_command_runs_the_dry_run() -> None:
    main_command = _sh_blocks()[0]
    assert main_command.startswith("bash scripts/setup.sh ") and "build-template --dry-run" in main_command
    assert (REPO / "scripts/setup.sh").is_file() and (REPO / "nixgold.example.toml").is_file()
