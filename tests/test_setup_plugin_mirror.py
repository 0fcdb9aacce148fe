"""scripts/setup.sh builds packer-plugin-proxmox from a git mirror only when it is the published release.

Where the Go module proxy does not serve the plugin module's source, ``setup.sh --dev`` builds it
from a local git mirror (``$NIXGOLD_PLUGIN_MIRROR``), through ``stage_from_mirror``: the tag's
commit must be the one the proxy's ``.info`` names (``Origin.Hash``) and its ``go.mod`` the proxy's
``.mod``; then ``go mod download`` checks the staged source against the checksum database. These
tests source setup.sh (it only defines its functions then) and run ``stage_from_mirror`` against
a fake mirror and a ``file://`` module proxy, offline: every refusal names what did not match.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"
MODULE = "github.com/hashicorp/packer-plugin-proxmox"
GO_MOD = f"module {MODULE}\n\ngo 1.23\n"


def go() -> str:
    path = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if path is None:
        pytest.fail("Go is not installed: run `bash scripts/setup.sh --dev` (it needs Go to build Packer)")
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
                          ).stdout.strip()


def make_mirror(root: Path, go_mod: str = GO_MOD, tag: str | None = "v1.2.4") -> tuple[Path, str]:
    """A bare git mirror whose tag (if any) points to a commit holding go_mod; returns it and the commit."""
    work = root / "work"
    work.mkdir()
    git(work, "init", "-q")
    (work / "go.mod").write_text(go_mod)
    (work / "main.go").write_text("package main\n\nfunc main() {}\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "release")
    commit = git(work, "rev-parse", "HEAD")
    if tag:
        git(work, "tag", tag)
    mirror = root / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(work), str(mirror)], check=True, capture_output=True)
    return mirror, commit


def make_proxy(root: Path, commit: str, go_mod: str = GO_MOD) -> Path:
    """A file:// module proxy publishing v1.2.4 (.info with its Origin, .mod) and no source zip."""
    at = root / "proxy" / MODULE / "@v"
    at.mkdir(parents=True)
    info = {"Version": "v1.2.4", "Time": "2025-01-01T00:00:00Z",
            "Origin": {"VCS": "git", "URL": f"https://{MODULE}", "Hash": commit, "Ref": "refs/tags/v1.2.4"}}
    (at / "v1.2.4.info").write_text(json.dumps(info))
    (at / "v1.2.4.mod").write_text(go_mod)
    (at / "list").write_text("v1.2.4\n")
    return root / "proxy"


def stage(tmp: Path, mirror: Path, proxy: Path) -> subprocess.CompletedProcess[str]:
    staging = tmp / "stage"
    staging.mkdir(exist_ok=True)
    script = ('source "$1"; gocmd=$2; stage_from_mirror "$3" 1.2.4 "$4" "$5"')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "GOPROXY": f"file://{proxy}", "GOSUMDB": "off",
           "GOMODCACHE": str(tmp / "modcache"), "GOCACHE": str(tmp / "gocache"), "GOTELEMETRY": "off"}
    result = subprocess.run(["bash", "-c", script, "test", str(SETUP), go(), MODULE, str(mirror), str(staging)],
                            capture_output=True, text=True, env=env, timeout=120)
    subprocess.run(["chmod", "-R", "u+w", str(tmp / "modcache")], capture_output=True)  # go's cache is read-only
    return result


def test_no_mirror_is_refused(tmp_path: Path) -> None:
    result = stage(tmp_path, tmp_path / "missing", make_proxy(tmp_path, "0" * 40))
    assert result.returncode == 1
    assert result.stdout.strip() == (f"there is no git mirror of {MODULE} at {tmp_path / 'missing'} "
                                     "(set NIXGOLD_PLUGIN_MIRROR to one)")


def test_a_mirror_without_the_tag_is_refused(tmp_path: Path) -> None:
    mirror, commit = make_mirror(tmp_path, tag=None)
    result = stage(tmp_path, mirror, make_proxy(tmp_path, commit))
    assert result.returncode == 1
    assert result.stdout.strip() == f"the git mirror {mirror} has no tag v1.2.4"


def test_a_tag_on_another_commit_than_the_proxy_names_is_refused(tmp_path: Path) -> None:
    mirror, commit = make_mirror(tmp_path)
    published = "1253775" + "0" * 33
    result = stage(tmp_path, mirror, make_proxy(tmp_path, published))
    assert result.returncode == 1
    assert result.stdout.strip() == (f"refusing the git mirror {mirror}: its tag v1.2.4 is commit {commit}, "
                                     f"but the Go proxy's v1.2.4.info names commit {published} (refs/tags/v1.2.4)")
    assert not list((tmp_path / "stage").iterdir()), "nothing is staged for a refused mirror"


def test_a_tag_whose_go_mod_differs_from_the_proxy_is_refused(tmp_path: Path) -> None:
    mirror, commit = make_mirror(tmp_path)
    result = stage(tmp_path, mirror, make_proxy(tmp_path, commit, go_mod=GO_MOD + "\nrequire example.com/x v1.0.0\n"))
    assert result.returncode == 1
    assert result.stdout.strip() == (f"refusing the git mirror {mirror}: go.mod at its tag v1.2.4 ({commit}) "
                                     "differs from the Go proxy's v1.2.4.mod")


def test_a_matching_mirror_still_needs_the_checksum_database(tmp_path: Path) -> None:
    """Commit and go.mod match: the one check left is the go command's against the checksum database."""
    mirror, commit = make_mirror(tmp_path)
    result = stage(tmp_path, mirror, make_proxy(tmp_path, commit))
    assert result.returncode == 1
    assert result.stdout.strip() == ("GOSUMDB is off, so the go command would not check the mirror's source "
                                     "against the checksum database")
