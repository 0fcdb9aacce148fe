"""`invoke build-template` with the plugin dialect, as most users run it: the REAL invoke + Packer 1.16.0 +
packer-plugin-proxmox 1.2.4 (both built by ``scripts/setup.sh --dev``) inside the test bed's namespace,
against the PVE simulator and QEMU/TCG, from the stand-in installer ISO with the Debian stand-in's
install.sh/cleanup.sh (``NIXGOLD_RENDER_OVERLAY``, as in tests/test_build_e2e.py).

Packer logs in with an API token (``PROXMOX_TOKEN_ID``/``_SECRET``) that holds exactly the privileges
nixgold's preflight demands for the build (``required_privileges``) plus those ``invoke verify`` needs,
so the simulator's permission checks prove that list is enough for the real plugin.

* UEFI (the default firmware; q35, OVMF, efidisk): ``boot_iso`` with ``iso_download_pve``: the
  simulator's ``download-url`` fetches the ISO from an HTTPS mirror inside the namespace (its CA
  trusted by the node) and checks its sha256; the plugin types the boot_command (``sendkey``), the
  install runs, Packer logs in with the per-build key, runs cleanup, converts the VM, deletes the ISO
  drive (``unmount``), adds its cloud-init drive; nixgold's tags and manifest are on the template;
  ``--verify`` passes on it.
* BIOS (``vm.firmware = "bios"``, SeaBIOS on q35) from an ISO volume already on storage; ``--verify``
  passes on it.
* A failing install stops the build at once; a Ctrl-C while the boot command is typed: in both cases
  no VM is left (counted through the API). Both stop as early as their point is proven.
"""
from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nixgold.build.preflight import required_privileges
from nixgold.config.load import load_config
from nixgold.errors import ExitCode
from nixgold.packer.output import STAGE_ISO
from tests.helpers import procs
from tests.helpers.background import BackgroundRun
from tests.test_build_e2e import INSTALL_FAILED_OR_SILENT, fail_if_install_was_silent, invoke_argv, standin_overlay, \
    upload_iso, vms
from tests.test_build_e2e import before  # noqa: F401 - autouse: every VM a test made is removed after it
from tests.test_build_e2e import write_config as build_e2e_config
from tests.test_setup_packer import built_packer, installed_plugin

pytestmark = pytest.mark.vm

ISO_VOLUME_NAME = "nixgold-standin-installer.iso"
TOKEN_NAME = "plugin-build"
# What `invoke verify` needs beyond the build's privileges (README, invoke verify).
VERIFY_PRIVS = ("VM.Clone", "VM.Allocate", "VM.Config.Disk", "VM.Config.Cloudinit", "VM.Config.Options",
                "VM.PowerMgmt", "VM.Audit", "VM.GuestAgent.Audit", "Datastore.AllocateSpace")
BUILD_STAGES = ("creating the VM", "boot wait", "typing the boot command", "waiting for install/SSH", "provisioning",
                "converting to template")


def write_config(directory: Path, testbed: Any, *, vmid: int, firmware: str, iso: str, ssh_timeout: str = "20m") -> Path:
    """A plugin-dialect config for the bed; ``iso``: the TOML lines of the [iso] section."""
    return build_e2e_config(directory, testbed, iso="", iso_section=iso, vmid=vmid, firmware=firmware,
                            ssh_timeout=ssh_timeout, name="nixgold-plugin-e2e", dialect="plugin", packer=built_packer())


@pytest.fixture(scope="module")
def plugin_packer() -> Path:
    """Packer 1.16.0 with packer-plugin-proxmox installed; fails (never skips) naming setup.sh --dev."""
    installed_plugin()
    return built_packer()


@pytest.fixture(scope="module")
def build_token(testbed, tmp_path_factory) -> tuple[str, str]:
    """(token id, secret) with the privileges preflight names for a download build, plus verify's."""
    config = load_config(write_config(tmp_path_factory.mktemp("privs"), testbed, vmid=9310, firmware="uefi",
                                      iso=f'url = "https://{testbed.host}/x.iso"\nsha256 = "{"0" * 64}"'), env={})
    needs = required_privileges(config, "plugin", 9, iso_volume=None, iso_download_on_pve=True)
    needs += required_privileges(config, "plugin", 9, iso_volume=f"{testbed.storage}:iso/x.iso",
                                 iso_download_on_pve=False)
    privs = sorted({p for need in needs for p in need.privs} | set(VERIFY_PRIVS))
    with testbed.enter():
        secret = testbed.sim_admin.add_token(f"{testbed.token_user}!{TOKEN_NAME}", privs=privs)
    return f"{testbed.token_user}!{TOKEN_NAME}", secret


def plugin_env(testbed: Any, config: Path, overlay: Path, token: tuple[str, str]) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA", "PKR_VAR_", "PACKER_"))}
    env.update(testbed.env())
    env.pop("REQUESTS_CA_BUNDLE", None)
    env.update({"NIXGOLD_CONFIG": str(config), "NIXGOLD_RENDER_OVERLAY": str(overlay),
                "PROXMOX_TOKEN_ID": token[0], "PROXMOX_TOKEN_SECRET": token[1]})
    return env


@pytest.fixture(scope="module")
def standin_iso_file() -> Path:
    from tests.testbed.images.installer_iso import build_installer_iso

    return Path(build_installer_iso())


@pytest.fixture(scope="module")
def standin_volume(testbed, standin_iso_file) -> str:
    upload_iso(testbed, standin_iso_file, ISO_VOLUME_NAME)
    return f"{testbed.storage}:iso/{ISO_VOLUME_NAME}"


def build_dir_of(text: str) -> Path:
    m = re.search(r"build (\S+) in (\S+) \(plugin dialect\)", text)
    assert m, text
    return Path(m.group(2))


def assert_no_secret(secrets: list[str], texts: list[str], build_dir: Path) -> None:
    key_file = build_dir / "build_key"
    key_lines = [ln for ln in key_file.read_text().splitlines() if ln and not ln.startswith("-----")]
    assert key_file.stat().st_mode & 0o777 == 0o600
    for needle in secrets + key_lines:
        for text in texts:
            assert needle not in text
        for path in build_dir.rglob("*"):
            if path.is_file() and path != key_file:
                assert needle not in path.read_text(errors="replace"), f"a secret is in {path}"


def template_config(testbed: Any, vmid: int) -> dict[str, Any]:
    with testbed.enter():
        return testbed.proxmoxer().nodes(testbed.node).qemu(vmid).config.get()


def assert_plugin_template(cfg: dict[str, Any], manifest: dict[str, Any], *, vmid: int, firmware: str) -> None:
    """What packer-plugin-proxmox leaves after a nixgold build: a template, its ISO drive gone (unmount:
    deleted, and out of the boot order), its cloud-init drive added, nixgold's tags and manifest."""
    assert cfg["template"] == 1 and cfg["name"] == "nixgold-plugin-e2e"
    assert json.loads(cfg["description"]) == manifest
    assert manifest["dialect"] == "plugin" and manifest["firmware"] == firmware and manifest["template_vmid"] == vmid
    assert "nixgold" in cfg["tags"].split(";") and cfg["serial0"] == "socket" and cfg["machine"] == "q35"
    assert "ide2" not in cfg and cfg["boot"] == "order=scsi0"
    (cloudinit,) = [k for k, v in cfg.items() if isinstance(v, str) and f"vm-{vmid}-cloudinit" in v]
    assert cloudinit.startswith("scsi") and cfg[cloudinit].endswith(",media=cdrom")
    if firmware == "uefi":
        assert cfg["bios"] == "ovmf" and "efitype=4m" in cfg["efidisk0"] and f"base-{vmid}-disk-" in cfg["efidisk0"]
    else:
        assert cfg["bios"] == "seabios" and "efidisk0" not in cfg


def assert_built_and_verified(result: subprocess.CompletedProcess[str], *, vmid: int, first_stage: str | None,
                              firmware: str) -> Path:
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    stages = re.findall(r"^\[\s*\d+\.\ds\] packer: (?!still )(.+?)(?: \([^()]*\))? \.\.\.(?: \(.+ took [\d.]+s\))?$",
                        err, re.M)
    expected = [*([first_stage] if first_stage else ["starting Packer"]), *BUILD_STAGES]
    assert stages == expected, err
    assert re.search(rf"template {vmid} 'nixgold-plugin-e2e' on \S+ built \(plugin dialect", out), out
    assert re.search(r"checks: \d+ passed, 0 failed.*PASSED \(exit 0\)", out), out
    for check in ("hostname.clone-name", "sshd.root-key-login", "cloud-init.done"):
        assert re.search(rf"^{re.escape(check)} +\S+ +(passed|skipped) ", out, re.M), (check, out)
    # UEFI: the EFI disk is there (passed); SeaBIOS: none needed (skipped, saying so)
    efi = "passed" if firmware == "uefi" else "skipped"
    assert re.search(rf"^template\.efi-disk +\S+ +{efi} ", out, re.M), out
    steps = re.findall(r"\] install: (.+) \((\d+)/(\d+)\) \d+m\d\ds$", err, re.M)
    assert steps and [int(n) for _, n, _ in steps] == list(range(1, len(steps) + 1)), err
    return build_dir_of(err)


# ------------------------------------------------------------------------------------------- UEFI
def test_uefi_build_with_the_iso_downloaded_by_pve_then_verify(testbed, before, plugin_packer, build_token,
                                                               standin_iso_file, tmp_path):
    from tests.testbed.https_files import HttpsFiles

    vmid = 9310
    name = f"nixgold-standin-download-{standin_iso_file.parent.name}.iso"
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).symlink_to(standin_iso_file)
    sha256 = hashlib.sha256(standin_iso_file.read_bytes()).hexdigest()
    with testbed.enter():
        storage = testbed.proxmoxer().nodes(testbed.node).storage(testbed.storage)
        assert not any(i["volid"].endswith(f"/{name}") for i in storage.content.get(content="iso"))
    with HttpsFiles(testbed, tmp_path / "mirror") as mirror:
        with testbed.enter():
            testbed.sim_admin.trust_ca(mirror.ca_pem)  # the node trusts the mirror (update-ca-certificates)
        url = mirror.url(name)
        config = write_config(tmp_path, testbed, vmid=vmid, firmware="uefi",
                              iso=f'url = "{url}"\nsha256 = "{sha256}"\nstorage = "{testbed.storage}"')
        overlay = standin_overlay(config, tmp_path / "standin")
        t0 = time.monotonic()
        argv = invoke_argv(testbed, "--verify")
        proc = subprocess.Popen(argv, env=plugin_env(testbed, config, overlay, build_token), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = procs.ArgvSampler(proc.pid)  # Packer 1.16, the plugin and its provisioner processes
        try:
            out, err = proc.communicate(timeout=3600)
        finally:
            if proc.poll() is None:
                proc.kill()
            argvs = sampler.stop()
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        wall = time.monotonic() - t0
        fetched = [r for r in mirror.requests if r[0] == "GET"]
    build_dir = assert_built_and_verified(result, vmid=vmid, first_stage=STAGE_ISO, firmware="uefi")
    assert any("packer-plugin-proxmox" in a for a in argvs), sorted(argvs)  # the sampler saw the plugin run
    for secret in (build_token[1], testbed.token_secret):
        assert not [a for a in argvs if secret in a], "a secret is in a process's command line"
    assert fetched == [("GET", f"/{name}", 200)]  # PVE fetched it, once; Packer never did
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        (task,) = [t for t in node.tasks.get(typefilter="download") if t["id"] == name]
        log = [line["t"] for line in node.tasks(task["upid"]).log.get()]
        assert task["user"] == build_token[0] and task["status"] == "OK"
        assert "calculating checksum...OK, checksum verified" in log
        assert f"{testbed.storage}:iso/{name}" in {i["volid"] for i in node.storage(testbed.storage).content.get()}
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["iso"]["url"] == url and manifest["iso"]["sha256"] == sha256, manifest["iso"]
    assert_plugin_template(template_config(testbed, vmid), manifest, vmid=vmid, firmware="uefi")
    assert_no_secret([build_token[1], testbed.token_secret], [result.stdout, result.stderr], build_dir)
    report = json.loads((build_dir / "build.json").read_text())
    print(f"plugin UEFI build (PVE downloads the ISO) + verify: {wall:.0f}s; stages: {report['stages']}")


# ------------------------------------------------------------------------------------------- BIOS
def test_bios_build_from_an_iso_volume_then_verify(testbed, before, plugin_packer, build_token, standin_volume,
                                                   tmp_path):
    vmid = 9311
    config = write_config(tmp_path, testbed, vmid=vmid, firmware="bios", iso=f'volume = "{standin_volume}"')
    overlay = standin_overlay(config, tmp_path / "standin")
    t0 = time.monotonic()
    result = subprocess.run(invoke_argv(testbed, "--verify"), env=plugin_env(testbed, config, overlay, build_token),
                            cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    build_dir = assert_built_and_verified(result, vmid=vmid, first_stage=None, firmware="bios")
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["iso"]["volume"] == standin_volume
    assert_plugin_template(template_config(testbed, vmid), manifest, vmid=vmid, firmware="bios")
    assert_no_secret([build_token[1], testbed.token_secret], [result.stdout, result.stderr], build_dir)
    report = json.loads((build_dir / "build.json").read_text())
    print(f"plugin BIOS build (ISO volume) + verify: {wall:.0f}s; stages: {report['stages']}")


# ---------------------------------------------------------------------------------- failure paths
def test_failing_install_stops_the_build_at_once_and_leaves_no_vm(testbed, before, plugin_packer, build_token,
                                                                  standin_volume, tmp_path):
    """install.sh's second step fails (configuration.nix's sha256): nixgold hears it on its status
    endpoint, stops Packer, whose cleanup destroys the VM; the earliest failing step after a live boot."""
    config = write_config(tmp_path, testbed, vmid=9312, firmware="uefi", iso=f'volume = "{standin_volume}"')
    overlay = standin_overlay(config, tmp_path / "standin")
    script = overlay / "http" / "install.sh"
    text = script.read_text()
    broken = re.sub(r"^readonly CONFIG_SHA256=.*$", "readonly CONFIG_SHA256=" + "0" * 64, text, count=1, flags=re.M)
    assert broken != text
    script.write_text(broken)
    run = BackgroundRun(invoke_argv(testbed), plugin_env(testbed, config, overlay, build_token), tmp_path)
    rc, took = run.end_after(INSTALL_FAILED_OR_SILENT, timeout=900, then=lambda: fail_if_install_was_silent(run))
    err = run.err
    assert rc == ExitCode.BUILD, err
    assert took < 60, f"the build ended {took:.0f}s after install.sh reported its failure"
    assert re.search(r"build failed during 'waiting for install/SSH': install\.sh failed in step 2/\d+ \(fetch "
                     r"configuration\.nix and check its sha256\) with exit code", err), err
    assert "sha256 mismatch for configuration.nix" in err.split("last lines of the install log:\n", 1)[1]
    assert [v for v in vms(testbed) if int(v["vmid"]) not in before] == []
    log = (build_dir_of(err) / "packer.log").read_text()
    assert "Deleting VM" in log  # Packer's own cleanup destroyed it
    assert_no_secret([build_token[1]], [run.out, err], build_dir_of(err))
    print(f"plugin install failure -> exit {rc}: {took:.1f}s after the report")


def test_ctrl_c_while_typing_the_boot_command_leaves_no_vm(testbed, before, plugin_packer, build_token,
                                                          standin_volume, tmp_path):
    config = write_config(tmp_path, testbed, vmid=9313, firmware="uefi", iso=f'volume = "{standin_volume}"')
    overlay = standin_overlay(config, tmp_path / "standin")
    run = BackgroundRun(invoke_argv(testbed), plugin_env(testbed, config, overlay, build_token), tmp_path)
    running: list[bool] = []

    def interrupt() -> None:
        running.append(any(int(v["vmid"]) == 9313 for v in vms(testbed)))  # the build VM exists and runs
        run.proc.send_signal(signal.SIGINT)

    rc, took = run.end_after(r"packer: typing the boot command", timeout=300, then=interrupt)
    assert running == [True]
    err = run.err
    assert rc == ExitCode.INTERRUPTED, err
    assert re.search(r"interrupted by SIGINT during 'typing the boot command'; Packer cleaned up; no VM of build", err)
    assert [v for v in vms(testbed) if int(v["vmid"]) not in before] == []
    log = (build_dir_of(err) / "packer.log").read_text()
    assert "Cancelling build after receiving interrupt" in log and "Deleting VM" in log
    print(f"plugin Ctrl-C while typing: exit {rc} {took:.1f}s after the signal")
