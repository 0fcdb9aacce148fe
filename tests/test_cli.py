"""The invoke tasks as a user runs them: real `invoke` processes, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixgold.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
INVOKE = [sys.executable, "-m", "invoke", "-r", str(REPO)]
SECRET = "5ecr3t-t0ken-value-0000"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
    full_env.update(env or {})
    return subprocess.run(INVOKE + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "nixgold.toml").write_text((REPO / "nixgold.example.toml").read_text())
    return tmp_path


def test_list_shows_every_task_with_help() -> None:
    result = run(["--list"], REPO)
    assert result.returncode == 0
    for name in ("build-template", "render", "config", "lock", "verify", "testbed.up", "testbed.import",
                 "testbed.down"):
        assert name in result.stdout
    helped = run(["--help", "build-template"], REPO)
    assert "--dry-run" in helped.stdout and "--set" in helped.stdout


def test_dry_run_prints_the_plan_offline_and_fast(workdir: Path) -> None:
    start = time.monotonic()
    result = run(["build-template", "--dry-run"], workdir, {
        "PROXMOX_URL": "https://pve.example.lan:8006/api2/json",
        "PROXMOX_TOKEN_ID": "nixgold@pve!build", "PROXMOX_TOKEN_SECRET": SECRET})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for fragment in ("node pve", "vmid 9004", "local-lvm", "vmbr0", "uefi", "26.05", "NOT PINNED",
                     "keys:", "s typing", "build/dry-run/packer/nixgold.pkr.hcl", "build/dry-run/http/install.sh"):
        assert fragment in out, fragment
    assert SECRET not in out + result.stderr
    assert (workdir / "build/dry-run/http/configuration.nix").is_file()
    assert elapsed < 20  # generous for a loaded CI box; benchmarks/dry_run.py tracks the < 2 s goal


def test_bad_config_exits_with_the_config_code_and_names_the_key(workdir: Path) -> None:
    result = run(["build-template", "--dry-run", "--set", "vm.disk_size=20GB"], workdir)
    assert result.returncode == ExitCode.CONFIG
    assert "vm.disk_size (from flag) = '20GB'" in result.stderr and "a size like 20G" in result.stderr
    assert not (workdir / "build").exists(), "nothing may be written for a bad config"


def test_flags_override_the_file(workdir: Path) -> None:
    result = run(["build-template", "--dry-run", "--vmid", "9100", "--node", "pve2", "--firmware", "bios"], workdir)
    assert result.returncode == 0, result.stderr
    assert "vmid 9100" in result.stdout and "node pve2" in result.stdout and "bios: SeaBIOS" in result.stdout


def test_missing_config_file_is_explained(tmp_path: Path) -> None:
    result = run(["build-template", "--dry-run"], tmp_path)
    assert result.returncode == ExitCode.CONFIG and "nixgold.example.toml" in result.stderr


def test_config_prints_effective_values_with_secrets_redacted(workdir: Path) -> None:
    env = {"PROXMOX_TOKEN_SECRET": SECRET, "PROXMOX_TOKEN_ID": "nixgold@pve!build"}
    text = run(["config", "--set", "vm.cores=6"], workdir, env)
    assert text.returncode == 0 and "cores = 6" in text.stdout and SECRET not in text.stdout
    as_json = run(["config", "--json"], workdir, env)
    data = json.loads(as_json.stdout)
    assert data["credentials"]["token_secret"] == "***" and data["credentials"]["token_id"] == "nixgold@pve!build"


def test_render_writes_packer_and_http(workdir: Path) -> None:
    result = run(["render"], workdir)
    assert result.returncode == 0, result.stderr
    for rel in ("packer/nixgold.pkr.hcl", "packer/cleanup.sh", "http/install.sh", "http/configuration.nix"):
        assert (workdir / rel).is_file(), rel
    assert os.access(workdir / "http/install.sh", os.X_OK)


def test_lock_offline_fails_clearly(workdir: Path) -> None:
    result = run(["lock"], workdir, {"NIXGOLD_CHANNELS_URL": "https://127.0.0.1:9"})
    assert result.returncode == ExitCode.CONFIG
    assert "unreachable" in result.stderr and "network access" in result.stderr
    assert not (workdir / "nixgold.lock").exists()


# --- the CLI's error path redacts with the environment's secrets (tasks._cli) -----------------------
def test_an_error_quoting_a_secret_shows_it_masked(workdir: Path) -> None:
    """A value given on the command line that happens to be the API secret (pasted into the wrong
    flag) comes back in the config error: the error path masks it before printing."""
    env = {"PROXMOX_TOKEN_SECRET": SECRET, "PROXMOX_PASSWORD": "pa55w0rd-in-the-env"}
    for flag in ([f"--set=vm.disk_size={SECRET}"], ["--set=vm.cores=pa55w0rd-in-the-env"]):
        result = run(["build-template", "--dry-run", *flag], workdir, env)
        assert result.returncode == ExitCode.CONFIG, result.stderr
        assert "(from flag) = '***'" in result.stderr, result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert "pa55w0rd-in-the-env" not in result.stdout + result.stderr
    # a value too short to mask is left alone (credentials loading refuses it), not a crash
    short = run(["build-template", "--dry-run", "--set=vm.cores=sh0rt"], workdir, {"PROXMOX_PASSWORD": "sh0rt"})
    assert short.returncode == ExitCode.CONFIG and "vm.cores (from flag) = 'sh0rt'" in short.stderr


def test_log_lines_and_a_bugs_traceback_are_masked_too(tmp_path: Path) -> None:
    """The same wrapper in a fresh process: a warning logged with the secret and a bug (not a nixgold
    error, so exit 1 with its traceback) that quotes it."""
    code = f"""
import logging, sys
import tasks

@tasks._cli
def body(c, verbose=False):
    logging.getLogger("nixgold.proxmox").warning("retrying with %s", {SECRET!r})
    raise RuntimeError("boom " + {SECRET!r})

try:
    body(None)
except tasks.Exit as exc:
    sys.exit(exc.code)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
    env.update(PROXMOX_TOKEN_SECRET=SECRET, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == ExitCode.INTERNAL, result.stderr
    assert "WARNING nixgold.proxmox: retrying with ***" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: boom ***" in result.stderr
    assert SECRET not in result.stderr + result.stdout
