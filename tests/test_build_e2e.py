"""`invoke build-template` as a user runs it: the REAL invoke + Debian's Packer 1.6.6 (bundled
dialect, password login) inside the test bed's namespace, against the PVE simulator and QEMU/TCG.

* without an installer (a non-booting ISO): SIGINT during "waiting for install/SSH" is forwarded to
  Packer, which destroys the VM; nothing of the build is left and no secret is in any output, any
  file under ``build/<id>/`` or the packer process's argv;
* with the stand-in installer ISO (``tests/testbed/images/installer_iso.py``) and the Debian
  stand-in's install.sh/cleanup.sh rendered from nixgold's own templates for the test's config
  (``tests/testbed/standin/render.py``, served through ``NIXGOLD_RENDER_OVERLAY``): a failing
  install.sh step stops the build at once (exit 4, the step named, the install log's last lines),
  no VM left.

The whole bundled stand-in build (Packer types the boot_command, install.sh reports each step,
cleanup, template) is the build phase of the one real Packer refresh, whose verify phase then passes
on it (``tests/test_refresh_packer_e2e.py``): that phase is this command's own build (``run_build``),
so the suite runs it once.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nixgold.errors import ExitCode
from nixgold.proxmox.vms import build_vm_name
from tests.helpers import procs
from tests.helpers.background import BackgroundRun

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
DUMMY_ISO = "nixgold-noboot.iso"
VMID = 9200


def standin_overlay(config: Path, out: Path) -> Path:
    """The stand-in's install.sh/cleanup.sh for this config, rendered from nixgold's templates."""
    from nixgold.config.load import load_config
    from tests.testbed.standin.render import render_overlay

    return render_overlay(load_config(config, env={}), out)


def invoke_argv(testbed: Any, *args: str) -> list[str]:
    invoke = REPO / ".venv" / "bin" / "invoke"
    cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
    return ["ip", "netns", "exec", testbed.netns, *cmd, "-r", str(REPO), "build-template", *args]


def build_env(testbed: Any, config: Path, overlay: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA", "PKR_VAR_", "PACKER_"))}
    env.update(testbed.env())
    env.pop("REQUESTS_CA_BUNDLE", None)
    env["NIXGOLD_CONFIG"] = str(config)
    env["PROXMOX_USERNAME"] = testbed.token_user  # Packer 1.6 logs in with a password
    env["PROXMOX_PASSWORD"] = testbed.user_password
    if overlay is not None:
        env["NIXGOLD_RENDER_OVERLAY"] = str(overlay)
    return env


# The stand-in live system reaches its root shell ~35 s after Enter under TCG on an idle 2-core
# box and ~55 s with a second live boot and a busy loop beside it (kernel + live-boot from
# squashfs; 45 s and 66 s before its kernel stopped zeroing every page it allocates:
# installer_iso.LIVE_CMDLINE); agetty flushes what is typed earlier. Two workers put up to four
# guests on the two cores (~75 s, reckoned from the ~37 s of CPU the live boot takes, not
# measured): hence the margin.
LIVE_BOOT_WAIT = "100s"


#: What a failing-install test waits for: the failure, or nixgold's word that install.sh never reported
#: (the boot command was lost: typed before the live shell was ready), which ends the test at once.
INSTALL_FAILED_OR_SILENT = r"install: FAILED in step|install: WARNING: no report from install\.sh"


def fail_if_install_was_silent(run: Any) -> None:
    """For ``end_after(..., then=...)``: the build went on without any install report."""
    if "install: WARNING: no report from install.sh" in run.err:
        raise AssertionError("install.sh never reported (the boot command was typed before the live shell was "
                             f"ready? LIVE_BOOT_WAIT={LIVE_BOOT_WAIT} under this machine's load):\n{run.err}")


def write_config(directory: Path, testbed: Any, *, iso: str, vmid: int = VMID, ssh_timeout: str = "20m",
                 boot_wait: str = "5s", live_boot_wait: str = LIVE_BOOT_WAIT, extra: str = "",
                 firmware: str = "bios", name: str = "nixgold-e2e", iso_section: str | None = None,
                 dialect: str = "bundled", packer: Path | None = None, build_extra: str = "") -> Path:
    """A config for the bed. ``iso``: an ISO volume's name on the bed's storage, or ``iso_section``:
    the TOML lines of the [iso] section; ``packer``: [build] packer (the plugin dialect's binary)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nixgold.toml"
    iso_lines = iso_section if iso_section is not None else f'volume = "{testbed.storage}:iso/{iso}"'
    packer_line = f'packer = "{packer}"' if packer else ""
    path.write_text(f"""
[proxmox]
node = "{testbed.node}"
url = "{testbed.url}"
[template]
vmid = {vmid}
name = "{name}"
[vm]
firmware = "{firmware}"
storage = "{testbed.storage}"
disk_format = "qcow2"
disk_size = "8G"
bridge = "{testbed.bridge}"
memory = 1024
cores = 1
cpu_type = "host"
[iso]
{iso_lines}
[build]
dialect = "{dialect}"
{packer_line}
boot_wait = "{boot_wait}"
live_boot_wait = "{live_boot_wait}"
key_interval = "10ms"
ssh_timeout = "{ssh_timeout}"
output_dir = "{directory / 'build'}"
{build_extra}
[verify]
profile = "generic"
clones = 1
agent_timeout = "12m"
ssh_timeout = "5m"
{extra}
""")
    return path


def upload_iso(testbed: Any, path: Path, name: str) -> None:
    """Register an ISO in the bed's `local` storage through the upload API (as a user would)."""
    with testbed.enter():
        node = testbed.root_api().nodes(testbed.node)
        if any(v["volid"] == f"{testbed.storage}:iso/{name}" for v in node.storage(testbed.storage).content.get(content="iso")):
            return
        named = path
        if path.name != name:  # the multipart file name is the volume name
            named = testbed.root / "upload" / name
            named.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, named)
        with named.open("rb") as fh:
            upid = node.storage(testbed.storage).upload.post(content="iso", filename=fh)
        testbed._wait(testbed.root_api(), upid)


def vms(testbed: Any) -> list[dict[str, Any]]:
    with testbed.enter():
        return testbed.all_vms()


def remove_vm(testbed: Any, vmid: int) -> None:
    with testbed.enter():
        testbed.destroy_vm(vmid)


@pytest.fixture(autouse=True)
def before(testbed) -> Any:
    ids = {int(vm["vmid"]) for vm in vms(testbed)}
    yield ids
    for vm in vms(testbed):
        if int(vm["vmid"]) not in ids:
            remove_vm(testbed, int(vm["vmid"]))


def upload_dummy_iso(testbed: Any, tmp_path_factory: Any, name: str) -> str:
    """An ISO SeaBIOS cannot boot, uploaded as ``local:iso/<name>``: the VM sits in the firmware,
    the SSH wait never ends."""
    src = tmp_path_factory.mktemp("iso")
    (src / "README.txt").write_text("not an installer\n")
    iso = src.parent / name
    subprocess.run(["genisoimage", "-quiet", "-V", "NOBOOT", "-o", str(iso), str(src)], check=True)
    upload_iso(testbed, iso, name)
    return name


@pytest.fixture(scope="module")
def dummy_iso(testbed, tmp_path_factory) -> str:
    return upload_dummy_iso(testbed, tmp_path_factory, DUMMY_ISO)


def build_dir_of(text: str) -> Path:
    m = re.search(r"build (\S+) in (\S+) \(bundled dialect\)", text)
    assert m, text
    return Path(m.group(2)) if Path(m.group(2)).is_absolute() else Path(m.group(2))


def assert_no_secret(testbed: Any, texts: list[str], build_dir: Path) -> None:
    secrets = [testbed.token_secret, testbed.user_password]
    key_file = build_dir / "build_key"
    key_lines = [ln for ln in key_file.read_text().splitlines() if ln and not ln.startswith("-----")]
    assert key_file.stat().st_mode & 0o777 == 0o600
    for text in texts:
        for s in secrets + key_lines:
            assert s not in text
    for path in build_dir.rglob("*"):
        if path.is_file() and path != key_file:
            data = path.read_text(errors="replace")
            for s in secrets + key_lines:
                assert s not in data, f"a secret is in {path}"


# ----------------------------------------------------------------------------------- no installer
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_waiting_for_ssh_leaves_no_vm_and_no_secret(testbed, before, dummy_iso, tmp_path, sig):
    config = write_config(tmp_path, testbed, iso=dummy_iso, boot_wait="2s", live_boot_wait="2s", ssh_timeout="10m")
    run = BackgroundRun(invoke_argv(testbed), build_env(testbed, config), tmp_path)
    try:
        run.wait_for(r"packer: waiting for install/SSH", timeout=300)
        argvs = procs.argvs(procs.descendants(run.proc.pid))
        assert any("packer build -machine-readable" in a for a in argvs), argvs
        assert any(int(v["vmid"]) == VMID for v in vms(testbed))  # the build VM exists now
        time.sleep(2)
        run.proc.send_signal(sig)
        rc = run.finish(timeout=300)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == ExitCode.INTERRUPTED, run.err
    err = run.err
    assert f"{sig.name} received: asking Packer to stop" in err
    assert "packer: Packer cleanup" in err and "making sure no VM of build" in err
    assert re.search(rf"interrupted by {sig.name} during 'waiting for install/SSH'; Packer cleaned up; no VM of build", err)
    assert [v for v in vms(testbed) if int(v["vmid"]) not in before] == []
    build_dir = build_dir_of(err)
    log = (build_dir / "packer.log").read_text()
    assert "Cancelling build after receiving interrupt" in log and "Deleting VM" in log
    assert (build_dir / "packer.log").stat().st_mode & 0o777 == 0o600
    assert_no_secret(testbed, [err, run.out, *argvs], build_dir)


def test_keep_on_error_leaves_the_vm_and_says_how_to_inspect_it(testbed, before, dummy_iso, tmp_path):
    """Also: install.sh never reports (nothing boots), so nixgold says why that may be, once after
    build.install_report_wait and again in the failure."""
    config = write_config(tmp_path, testbed, iso=dummy_iso, boot_wait="2s", live_boot_wait="2s", ssh_timeout="40s",
                          build_extra='install_report_wait = "10s"')
    result = subprocess.run(invoke_argv(testbed, "--keep-on-error"), env=build_env(testbed, config), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    try:
        assert result.returncode == ExitCode.BUILD, result.stderr
        err = result.stderr
        assert "build failed during 'waiting for install/SSH': Timeout waiting for SSH." in err
        assert len(re.findall(r"install: WARNING: no report from install\.sh 10s after the boot command "
                              r"\(build\.install_report_wait\)\. Either it never started", err)) == 1, err
        assert "raise build.live_boot_wait, now 2s" in err and "port 8799 (build.status_port" in err
        assert "until build.ssh_timeout (40s)" in err
        assert "install.sh never reported. Either it never started" in err
        assert f"the VM was kept for debugging (--keep-on-error): VM {VMID} on {testbed.node}" in err
        assert f"qm terminal {VMID}" in err and f"qm destroy {VMID}" in err
        assert "Deleting VM" not in err and "making sure no VM" not in err
        (vm,) = [v for v in vms(testbed) if int(v["vmid"]) == VMID]
        build_id = re.search(r"build (\S+) in ", err).group(1)
        assert vm["name"] == build_vm_name("nixgold-e2e", build_id)  # the build id: the ownership proof
        log = (build_dir_of(err) / "packer.log").read_text()
        assert "-on-error=abort" in log
        # the next build refuses to touch it without --replace, and names it
        again = subprocess.run(invoke_argv(testbed), env=build_env(testbed, config), cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == ExitCode.PREFLIGHT
        assert (f"vmid {VMID} holds VM '{build_vm_name('nixgold-e2e', build_id)}' left by an earlier failed build "
                f"{build_id.lower()}") in again.stderr
    finally:
        remove_vm(testbed, VMID)


def test_preflight_failure_exits_3_before_touching_the_cluster(testbed, before, dummy_iso, tmp_path):
    """Every problem at once, exit 3, and nothing changed: the cluster's VMs (with their configs)
    are what they were, and no build/<id>/ was created."""
    config = write_config(tmp_path, testbed, iso="missing.iso", vmid=testbed.template_vmid)

    def cluster() -> dict[int, dict[str, Any]]:
        with testbed.enter():
            api = testbed.proxmoxer()
            return {int(vm["vmid"]): api.nodes(vm["node"]).qemu(vm["vmid"]).config.get() for vm in testbed.all_vms()}

    was = cluster()
    result = subprocess.run(invoke_argv(testbed), env=build_env(testbed, config), cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == ExitCode.PREFLIGHT, result.stderr
    assert "ISO local:iso/missing.iso (iso.volume) is not in storage local" in result.stderr
    assert f"vmid {testbed.template_vmid} holds nixgold template" in result.stderr
    assert testbed.user_password not in result.stderr + result.stdout
    assert cluster() == was
    assert not (tmp_path / "build").exists(), list((tmp_path / "build").rglob("*"))


# ------------------------------------------------------------------------------ the stand-in build
@pytest.fixture(scope="module")
def standin_iso(testbed) -> str:
    from tests.testbed.images.installer_iso import build_installer_iso

    iso = Path(build_installer_iso())
    name = "nixgold-standin-installer.iso"
    upload_iso(testbed, iso, name)
    return name


def test_failing_install_step_stops_the_build_at_once(testbed, before, standin_iso, tmp_path):
    """A step of the rendered install.sh fails: nixgold hears it on its status endpoint, stops Packer
    and fails the build naming the step, long before ssh_timeout (20m here)."""
    config = write_config(tmp_path, testbed, iso=standin_iso, ssh_timeout="20m")
    overlay = standin_overlay(config, tmp_path / "standin")
    script = overlay / "http" / "install.sh"
    text = script.read_text()
    broken = text.replace("  run rsync -aHAX --numeric-ids ", "  run rsync --no-such-option ")
    assert broken != text
    script.write_text(broken)
    run = BackgroundRun(invoke_argv(testbed), build_env(testbed, config, overlay), tmp_path)
    rc, took = run.end_after(INSTALL_FAILED_OR_SILENT, timeout=900, then=lambda: fail_if_install_was_silent(run))
    err = run.err
    assert rc == ExitCode.BUILD, err
    assert took < 60, f"the build ended {took:.0f}s after install.sh reported its failure"
    step = re.search(r"install: FAILED in step (\d+)/(\d+) \(copy the installed system from \S+\), exit code (\d+)",
                     err)
    assert step and int(step.group(3)) != 0, err
    assert re.search(r"build failed during 'waiting for install/SSH': install\.sh failed in step "
                     rf"{step.group(1)}/{step.group(2)} \(copy the installed system from \S+\) with exit code", err), err
    tail = err.split("last lines of the install log:\n", 1)[1]
    assert "rsync" in tail and "no-such-option" in tail and len(tail.strip().splitlines()) <= 20
    assert "Timeout waiting for SSH" not in err
    assert [v for v in vms(testbed) if int(v["vmid"]) not in before] == []
    assert_no_secret(testbed, [run.out, err], build_dir_of(err))
    print(f"install failure -> exit {rc}: {took:.1f}s")
