"""nixgold.build.provenance: the build id and the commit recorded in the manifest. git_commit runs the
real git on a scratch repository, and a fake `git` first on PATH for a git that hangs."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from nixgold.build.provenance import git_commit, new_build_id


def test_build_ids_are_sortable_and_unique():
    a, b = new_build_id(), new_build_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", a) and a != b


def test_commit_clean_dirty_and_not_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "nixgold.toml").write_text("[template]\nvmid = 9004\n")
    subprocess.run([*git, "add", "nixgold.toml"], check=True)
    subprocess.run([*git, "commit", "-qm", "config"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "untracked.txt").write_text("not part of the config\n")
    assert git_commit(repo) == head  # untracked files do not count
    (repo / "nixgold.toml").write_text("[template]\nvmid = 9005\n")
    assert git_commit(repo) == f"{head}-dirty"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) == "unknown"


def fake_git(bin_dir: Path, *, rev_parse: str, status: str) -> None:
    """A `git` whose rev-parse and status run the given shell snippets. The sleeps run in a child
    of the script (not exec'd): the timeout must also get rid of what git itself started."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "git"
    script.write_text(f"""#!/bin/sh
for arg in "$@"; do
  case "$arg" in
    rev-parse) {rev_parse}; exit $? ;;
    status) {status}; exit $? ;;
  esac
done
exit 2
""")
    script.chmod(0o755)


@pytest.mark.parametrize("hangs, expected", [("status", "0123456789ab"), ("rev-parse", "unknown")])
def test_a_hanging_git_is_bounded(tmp_path, monkeypatch, hangs, expected):
    answers = {"rev_parse": "echo 0123456789ab", "status": "echo ' M nixgold.toml'"}
    answers[hangs.replace("-", "_")] = "sleep 60"
    fake_git(tmp_path / "bin", **answers)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    t0 = time.monotonic()
    assert git_commit(tmp_path, timeout=1.0) == expected  # a dirty check that never answers: no "-dirty"
    assert time.monotonic() - t0 < 5
    # and with both answering, the fake is believed (the test's control)
    fake_git(tmp_path / "bin", rev_parse="echo 0123456789ab", status="echo ' M nixgold.toml'")
    assert git_commit(tmp_path, timeout=1.0) == "0123456789ab-dirty"


def test_a_failing_dirty_check_gives_the_commit_alone(tmp_path, monkeypatch):
    fake_git(tmp_path / "bin", rev_parse="echo 0123456789ab", status="echo 'fatal: index locked' >&2; exit 128")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert git_commit(tmp_path) == "0123456789ab"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert git_commit(tmp_path) == "unknown"
