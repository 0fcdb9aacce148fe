"""`invoke testbed.up / testbed.import / testbed.down` as a developer runs them (real invoke
processes, a namespace of their own): the bed comes up, writes its env file, imports an image as
a template, and goes down leaving no namespace, simulator or guest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INVOKE = [sys.executable, "-m", "invoke", "-r", str(REPO)]

pytestmark = pytest.mark.vm


def invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
    return subprocess.run([*INVOKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_up_import_down(tmp_path):
    root, netns = tmp_path / "bed", f"ngtask-{os.getpid()}"
    where = ("--root", str(root), "--netns", netns)
    try:
        up = invoke("testbed.up", *where, "--no-template", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        assert f"ip netns exec {netns} invoke verify --vmid 9004 --profile generic" in up.stdout
        env = dict(line.split("=", 1) for line in (root / "env").read_text().splitlines() if "=" in line)
        assert {"PROXMOX_URL", "PROXMOX_TOKEN_ID", "PROXMOX_TOKEN_SECRET", "PROXMOX_CA_BUNDLE",
                "NIXGOLD_CONFIG"} <= set(env)
        assert (root / "env").stat().st_mode & 0o077 == 0
        assert env["PROXMOX_TOKEN_SECRET"] not in up.stdout + up.stderr

        bad = invoke("testbed.import", *where, "--image", "good", "--vmid", "nine", cwd=tmp_path)
        assert bad.returncode == 1 and "testbed: --vmid 'nine' is not a whole number" in bad.stderr
        missing = invoke("testbed.import", *where, "--image", "no-such-image", "--vmid", "9020", cwd=tmp_path)
        assert missing.returncode == 1
        assert "testbed: no-such-image is neither a file nor an image variant (good, " in missing.stderr

        imported = invoke("testbed.import", *where, "--image", "good", "--vmid", "9020", "--name", "from-task",
                          cwd=tmp_path)
        assert imported.returncode == 0, imported.stderr
        assert "imported as 9020" in imported.stdout
        from tests.testbed.bed import Testbed

        bed = Testbed(root=root, netns=netns, log_fn=lambda msg: None)
        with bed.enter():
            conf = bed.proxmoxer().nodes(bed.node).qemu(9020).config.get()
        assert conf["template"] == 1 and conf["name"] == "from-task"
    finally:
        down = invoke("testbed.down", *where, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "test bed down" in down.stdout
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not (root / "pvesim.pid").exists() or not Path(f"/proc/{(root / 'pvesim.pid').read_text().strip()}").exists()
