"""The one refresh with a real build, and the one real build with Debian's Packer 1.6.6 (bundled
dialect, password login, BIOS): `invoke refresh` on an empty cluster with the stand-in installer ISO
and the stand-in install.sh/cleanup.sh overlay (the setup of tests/test_build_e2e.py), then `invoke
verify --vmid <template>` on the result, then the nightly no-op. Every other refresh scenario uses the
build seam (tests/test_refresh_e2e.py).

The refresh's build phase is `invoke build-template`'s own build (nixgold.refresh.producer.packer_producer
calls nixgold.build.builder.run_build with the candidate's config), so this run also holds what a
bundled stand-in build must show: Packer creates the VM, types the boot_command via sendkey, serves
install.sh (which reports each step to nixgold's install status endpoint), waits for the installed
system's guest agent, SSHes in with the per-build key, runs cleanup, converts to a template; the
verify (generic profile) passes on it; no secret in any output or file of the build. The command's
own wrapper around that build (flags, ``--verify``) is covered by tests/test_build_paths.py (bundled,
a stand-in Packer) and tests/test_build_plugin_e2e.py (the plugin dialect's real builds).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nixgold.errors import ExitCode
from tests.test_build_e2e import assert_no_secret, build_dir_of, build_env, standin_overlay, upload_iso, write_config

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = 9500
OURS = range(9500, 9507)
REFRESH = """
[refresh]
lock_vmid = 9501
staging_vmids = "9502-9503"
archive_vmids = "9504-9506"
keep = 1
"""


def argv(testbed: Any, *args: str) -> list[str]:
    invoke = REPO / ".venv" / "bin" / "invoke"
    cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
    return ["ip", "netns", "exec", testbed.netns, *cmd, "-r", str(REPO), *args]


@pytest.fixture(scope="module")
def standin_iso(testbed) -> str:
    from tests.testbed.images.installer_iso import build_installer_iso

    name = "nixgold-standin-installer.iso"
    upload_iso(testbed, Path(build_installer_iso()), name)
    return name


def ours(testbed: Any) -> dict[int, dict[str, Any]]:
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        return {int(v["vmid"]): node.qemu(int(v["vmid"])).config.get() for v in testbed.all_vms()
                if int(v["vmid"]) in OURS}


def test_first_refresh_builds_with_packer_verifies_and_promotes(testbed, standin_iso, tmp_path):
    # install_report_wait far below the install's minutes: the reports keep the no-report warning away
    config = write_config(tmp_path, testbed, iso=standin_iso, vmid=TEMPLATE, extra=REFRESH,
                          build_extra='install_report_wait = "30s"')
    overlay = standin_overlay(config, tmp_path / "standin")
    env = build_env(testbed, config, overlay)
    report = tmp_path / "refresh.json"
    assert ours(testbed) == {}
    try:
        t0 = time.monotonic()
        result = subprocess.run(argv(testbed, "refresh", "--json", str(report)), env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        out, err = result.stdout, result.stderr
        assert result.returncode == ExitCode.PROMOTED, f"stdout:\n{out}\nstderr:\n{err}"
        assert "WARNING: NIXGOLD_RENDER_OVERLAY=" in err and "NIXGOLD_REFRESH_PRODUCER" not in err
        for stage in ("creating the VM", "boot wait", "typing the boot command", "waiting for install/SSH",
                      "provisioning", "converting to template"):
            assert re.search(rf"\[\s*\d+\.\ds\] packer: {re.escape(stage)}", err), stage
        # install.sh reported every step live under "waiting for install/SSH"
        steps = re.findall(r"\] install: (.+) \((\d+)/(\d+)\) \d+m\d\ds$", err, re.M)
        assert steps and [int(n) for _, n, _ in steps] == list(range(1, len(steps) + 1)), err
        assert re.search(r"\] install: finished \((\d+)/\1\) after ", err), err
        assert "no report from install.sh" not in err and "never reported" not in err, err
        # the build phase is build-template's build, for the candidate
        candidate = f"nixgold-e2e-candidate-{json.loads(report.read_text())['refresh_id'].lower()}"
        assert re.search(rf"template 9502 '{candidate}' on {testbed.node} built \(bundled dialect", out), out
        build_dir = build_dir_of(err)
        built = json.loads((build_dir / "manifest.json").read_text())
        assert (built["overlay"], built["template_vmid"], built["dialect"]) == (True, 9502, "bundled")
        build_report = json.loads((build_dir / "build.json").read_text())
        assert build_report["outcome"] == "built" and build_report["overlay"] is True
        # the candidate's verify: the NixOS defects 2 and 3 are fixed end to end (cleanup forgot the
        # build VM's hostname, root has no key)
        assert re.search(r"checks: \d+ passed, 0 failed", out), out
        for check in ("hostname.clone-name", "sshd.root-key-login", "cloud-init.done"):
            assert re.search(rf"^{re.escape(check)} +\S+ +passed ", out, re.M), (check, out)
        data = json.loads(report.read_text())
        assert [p["name"] for p in data["phases"]] == ["decide", "lock", "recover", "build", "verify", "promote"]
        assert all(p["ok"] for p in data["phases"]) and data["outcome"] == "promoted" and data["exit_code"] == 10
        assert data["candidate_vmid"] == 9502 and data["promoted_vmid"] == TEMPLATE and data["archive_vmid"] is None
        assert data["verification"]["outcome"] == "passed" and data["verify_report"]["outcome"] == "passed"
        assert 0 <= data["swap_window_seconds"] and data["test_producer"] is None
        vms = ours(testbed)
        assert set(vms) == {TEMPLATE}, sorted(vms)  # no candidate, no lock marker, nothing else
        t = vms[TEMPLATE]
        manifest = json.loads(t["description"])
        record = manifest["refresh"]
        assert (t["template"], t["protection"], t["name"]) == (1, 1, "nixgold-e2e")
        assert manifest["build_id"] == data["refresh_id"] and manifest["dialect"] == "bundled" and manifest["overlay"]
        assert manifest["template_vmid"] == TEMPLATE and manifest["template_name"] == "nixgold-e2e"
        assert (record["role"], record["step"], record["input_digest"]) == ("promoted", "done", data["input_digest"])
        assert record["verification"]["outcome"] == "passed" and record["verification"]["report_sha256"]
        assert set(t["tags"].split(";")) == {"nixgold", "nixos", "golden"} and t["serial0"] == "socket"
        assert t["ide2"].startswith("none,media=cdrom") and "cloudinit" in "".join(str(v) for v in t.values())
        # the build's manifest, as the promotion copies it (nixgold.refresh.swap.promoted_manifest: the
        # template's vmid and name, the refresh record)
        swapped = ("template_vmid", "template_name", "refresh")
        assert {k: v for k, v in manifest.items() if k not in swapped} == \
            {k: v for k, v in built.items() if k not in swapped}
        print(f"first refresh with Packer: {wall:.0f}s; phases: "
              + ", ".join(f"{p['name']} {p['seconds']:.0f}s" for p in data["phases"]))

        # The promoted template is a full clone of the candidate that passed with two clones (the checks
        # across clones ran there): one clone of it proves the copy boots and passes every check.
        verify = subprocess.run(argv(testbed, "verify", "--vmid", str(TEMPLATE), "--clones", "1"), env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=1800)
        assert verify.returncode == 0, f"stdout:\n{verify.stdout}\nstderr:\n{verify.stderr}"
        assert re.search(r"checks: \d+ passed, 0 failed.*PASSED \(exit 0\)", verify.stdout)
        assert_no_secret(testbed, [out, err, report.read_text(), verify.stdout, verify.stderr], build_dir)

        t0 = time.monotonic()
        noop = subprocess.run(argv(testbed, "refresh"), env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        seconds = time.monotonic() - t0
        assert noop.returncode == ExitCode.UP_TO_DATE, noop.stderr
        # a no-op: no lock taken, nothing built (how fast it is: benchmarks/refresh.py, goal < 5 s)
        assert "UP-TO-DATE (exit 0)" in noop.stdout and "lock:" not in noop.stderr, noop.stderr
        assert "packer:" not in noop.stderr and "verify:" not in noop.stderr, noop.stderr
        print(f"no-op refresh after it: {seconds:.1f}s")
    finally:
        with testbed.enter():
            prox = testbed.root_api()
            for vmid in sorted(ours(testbed), reverse=True):
                prox.nodes(testbed.node).qemu(vmid).config.put(delete="protection")
                testbed.destroy_vm(vmid)
