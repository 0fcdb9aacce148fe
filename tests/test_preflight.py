"""Every preflight error with its message: the privilege list per dialect/PVE version (pure), and
the checks against the PVE simulator (API only, no guest boots), plus packer presence/version and
`packer init` for the plugin dialect with a stand-in `packer` script."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from nixgold.config.model import Config
from nixgold.config.credentials import Credentials
from nixgold.config.load import load_config
from nixgold.errors import ConfigError, PreflightError
from nixgold.packer.runner import PackerRunner
from nixgold.secrets import Redactor
from nixgold.build.preflight import (
    VM_CONFIG_PRIVS,
    check_packer,
    missing_privileges,
    required_privileges,
    run_preflight,
)
from nixgold.proxmox.client import ProxmoxClient

ISO = "local:iso/preflight-test.iso"


def cfg(**overrides: Any) -> Config:
    base = {"template.vmid": 9150, "template.name": "nixos-pf", "vm.firmware": "bios", "vm.storage": "local",
            "vm.disk_format": "qcow2", "vm.bridge": "vmbr0", "iso.volume": ISO, "proxmox.node": "pve",
            "build.dialect": "auto"}
    base.update(overrides)
    return load_config(None, overrides=base, env={}, require_file=False)


def privs_of(needs, path: str) -> set[str]:
    return {p for n in needs if n.path == path for p in n.privs}


# --- the privilege list (pure) ---------------------------------------------------------------------
def test_required_privileges_pve9_bundled_volume():
    needs = required_privileges(cfg(), "bundled", 9, iso_volume=ISO, iso_download_on_pve=True)
    vm = privs_of(needs, "/vms/9150")
    assert vm == {"VM.Allocate", *VM_CONFIG_PRIVS, "VM.PowerMgmt", "VM.Console", "VM.Audit", "VM.GuestAgent.Audit"}
    assert "VM.Monitor" not in vm
    assert privs_of(needs, "/storage/local") == {"Datastore.AllocateSpace", "Datastore.Audit"}
    assert privs_of(needs, "/sdn/zones/localnetwork/vmbr0") == {"SDN.Use"}
    assert not any(n.path.startswith("/pool") for n in needs)


def test_required_privileges_pve8_plugin_url_vlan_pool_uefi():
    config = cfg(**{"iso.volume": None, "iso.url": "https://example.org/nixos.iso", "iso.sha256": "a" * 64,
                    "vm.vlan": 20, "template.pool": "golden", "vm.firmware": "uefi", "vm.efi_storage": "efi-store",
                    "iso.storage": "isos"})
    needs = required_privileges(config, "plugin", 8, iso_volume=None, iso_download_on_pve=True)
    assert "VM.Monitor" in privs_of(needs, "/vms/9150") and "VM.GuestAgent.Audit" not in privs_of(needs, "/vms/9150")
    assert privs_of(needs, "/storage/isos") == {"Datastore.AllocateTemplate"}
    assert privs_of(needs, "/storage/efi-store") == {"Datastore.AllocateSpace", "Datastore.Audit"}
    assert privs_of(needs, "/sdn/zones/localnetwork/vmbr0/20") == {"SDN.Use"}
    assert privs_of(needs, "/pool/golden") == {"Pool.Allocate"}
    download = next(n for n in needs if n.path == "/")
    assert download.privs == ("Sys.Audit", "Sys.Modify") and download.alternatives == (("/nodes/pve", ("Sys.AccessNetwork",)),)
    # the alternative satisfies it
    have = {"/": set(), "/nodes/pve": {"Sys.AccessNetwork"}}
    assert not [m for m in missing_privileges([download], lambda p: have.get(p, set()))]
    # PVE 7: no SDN.Use on bridges
    assert not any("sdn" in n.path for n in required_privileges(config, "plugin", 7, iso_volume=None,
                                                                 iso_download_on_pve=False))


def test_bundled_upload_needs_allocate_template():
    config = cfg(**{"iso.volume": None, "iso.url": "https://example.org/nixos.iso", "iso.sha256": "a" * 64})
    needs = required_privileges(config, "bundled", 9, iso_volume=None, iso_download_on_pve=True)
    assert privs_of(needs, "/storage/local") >= {"Datastore.AllocateTemplate"}
    assert not any(n.path == "/" for n in needs)


# --- packer ------------------------------------------------------------------------------------------
def fake_packer(tmp_path: Path, version: str, *, plugins: str = "", init_rc: int = 1) -> tuple[Path, Path]:
    calls = tmp_path / "calls.log"
    script = tmp_path / "packer"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$1" in
  version) echo "Packer v{version}";;
  plugins) printf '%s' '{plugins}';;
  init) echo "Failed getting the \\"github.com/hashicorp/proxmox\\" plugin: no network" >&2; exit {init_rc};;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def test_packer_missing_and_unsupported_version(tmp_path):
    with pytest.raises(PreflightError, match=r"packer not found \(build.packer = '/nonexistent/packer'\).*apt install packer"):
        check_packer(cfg(**{"build.packer": "/nonexistent/packer"}))
    script, _ = fake_packer(tmp_path, "1.8.7")
    with pytest.raises(PreflightError, match=r"Packer 1\.8\.7 is not supported: use Packer >= 1\.10"):
        check_packer(cfg(**{"build.packer": str(script)}))
    script, _ = fake_packer(tmp_path, "1.11.2")
    with pytest.raises(ConfigError, match="build.dialect = .bundled.: expected plugin or auto: the installed .* is Packer 1.11.2"):
        check_packer(cfg(**{"build.packer": str(script), "build.dialect": "bundled"}))
    info, dialect, reason = check_packer(cfg(**{"build.packer": str(script), "vm.firmware": "uefi"}))
    assert dialect == "plugin" and info.version == (1, 11, 2) and "Packer 1.11.2" in reason


def test_plugin_dialect_without_plugin_runs_packer_init(tmp_path):
    script, calls = fake_packer(tmp_path, "1.11.2")
    config = cfg(**{"build.packer": str(script), "vm.firmware": "uefi"})
    creds = Credentials(url="https://127.0.0.1:1/api2/json", token_id="u@pve!t", token_secret="s3cret-token")
    runner = PackerRunner(str(script), env={"PATH": "/usr/bin:/bin"}, redact=Redactor(creds.secrets))
    said: list[str] = []

    def no_api(c: Credentials) -> ProxmoxClient:
        from nixgold.errors import ProxmoxError
        raise ProxmoxError("cannot reach the Proxmox API at https://127.0.0.1:1/api2/json: refused")

    with pytest.raises(PreflightError) as info:
        run_preflight(config, creds, iso_volume=ISO, iso_download_on_pve=True, replace=False,
                      template_dir=tmp_path / "packer", packer_runner_factory=lambda i: runner,
                      client_factory=no_api, say=said.append)
    text = str(info.value)
    assert "`packer init" in text and "plugin" in text and "no network" in text
    assert "Proxmox API: cannot reach" in text  # every problem at once
    assert calls.read_text().splitlines()[-2:] == ["plugins installed", f"init {tmp_path / 'packer'}"]
    assert said == ["the proxmox plugin (github.com/hashicorp/proxmox) is not installed: running `packer init`"]
    # installed: no init
    sub = tmp_path / "installed"
    sub.mkdir()
    script2, calls2 = fake_packer(sub, "1.11.2",
                                  plugins="/root/.config/packer/plugins/github.com/hashicorp/proxmox/packer-plugin-proxmox_v1.2.4_x5.0_linux_amd64")
    with pytest.raises(PreflightError):
        run_preflight(cfg(**{"build.packer": str(script2), "vm.firmware": "uefi"}), creds, iso_volume=ISO,
                      iso_download_on_pve=True, replace=False, template_dir=tmp_path / "packer",
                      packer_runner_factory=lambda i: PackerRunner(str(script2), env={}, redact=Redactor()),
                      client_factory=no_api)
    assert not any(line.startswith("init") for line in calls2.read_text().splitlines())


def test_missing_credentials_are_config_errors():
    from nixgold.build.preflight import check_credentials

    with pytest.raises(ConfigError) as info:
        check_credentials("bundled", Credentials(url="https://pve:8006/api2/json", token_id="a@pve!b", token_secret="x"))
    assert "PROXMOX_USERNAME" in str(info.value) and "PROXMOX_PASSWORD" in str(info.value)
    with pytest.raises(ConfigError, match="PROXMOX_TOKEN_SECRET"):
        check_credentials("plugin", Credentials(url="https://pve:8006/api2/json", token_id="a@pve!b"))


# --- the cluster (simulator) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bed(testbed):
    """The bed with an ISO in `local` and a password user for the bundled dialect."""
    iso_dir = testbed.sim_dir / "storage" / testbed.storage / "template" / "iso"
    iso_dir.mkdir(parents=True, exist_ok=True)
    (iso_dir / "preflight-test.iso").write_bytes(b"\0" * 2048)
    with testbed.enter():
        testbed.sim_admin.add_user("pfbuild@pve", "pf-Secret-pw1", roles=["Administrator"])
        few = ["VM.Allocate", *VM_CONFIG_PRIVS, "VM.PowerMgmt", "VM.Audit", "Datastore.Audit", "SDN.Use"]
        testbed.sim_admin.add_user("pflimited@pve", "pf-Secret-pw2", privs=few)
    return testbed


def creds_for(bed: Any, user: str, password: str) -> Credentials:
    return Credentials(url=bed.url, username=user, password=password, ca_bundle=str(bed.ca_path))


def preflight(bed: Any, config: Config, creds: Credentials, replace: bool = False):
    packer = (check_packer(config) if config.build.dialect != "auto" else None)
    from nixgold.packer.dialect import PackerInfo

    fixed = packer or (PackerInfo("/usr/bin/packer", (1, 6, 6)), "bundled", "test")
    with bed.enter():
        return run_preflight(config, creds, iso_volume=config.iso.volume, iso_download_on_pve=True, replace=replace,
                             template_dir=None, packer_runner_factory=None,
                             client_factory=lambda c: ProxmoxClient(c), packer=fixed)


def test_everything_fine(bed):
    result = preflight(bed, cfg(), creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"))
    assert result.vmid.status == "free" and result.pve_version["release"] == "9.1"
    text = "\n".join(result.checked)
    assert "privileges of pfbuild@pve" in text and "ISO local:iso/preflight-test.iso present" in text


def test_missing_privileges_are_named(bed):
    with pytest.raises(PreflightError) as info:
        preflight(bed, cfg(), creds_for(bed, "pflimited@pve", "pf-Secret-pw2"))
    text = str(info.value)
    assert "pflimited@pve lacks privileges the build needs:" in text
    assert "VM.Console on /vms/9150: type the boot_command (PUT .../sendkey" in text
    assert "VM.GuestAgent.Audit on /vms/9150" in text and "PVE 9 replaced VM.Monitor" in text
    assert "Datastore.AllocateSpace on /storage/local" in text
    assert "pveum acl modify /vms/9150 --roles NixgoldBuild --users pflimited@pve" in text
    assert "VM.Allocate" not in text and "VM.PowerMgmt" not in text  # those it has


def test_unknown_storage_bridge_and_missing_iso_all_at_once(bed):
    config = cfg(**{"vm.storage": "nvme-pool", "vm.bridge": "vmbr9", "iso.volume": "local:iso/nope.iso"})
    with pytest.raises(PreflightError) as info:
        preflight(bed, config, creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"))
    text = str(info.value)
    assert "storage 'nvme-pool' (vm.storage) is not available on node pve" in text and "storages: local" in text
    assert "bridge 'vmbr9' (vm.bridge) does not exist on pve; bridges: vmbr0" in text
    assert "ISO local:iso/nope.iso (iso.volume) is not in storage local on pve" in text
    assert "preflight-test.iso" in text  # says which ISOs are there


def test_unknown_node(bed):
    with pytest.raises(PreflightError, match=r"node 'pve2' \(proxmox.node\) is not in the cluster; nodes: pve"):
        preflight(bed, cfg(**{"proxmox.node": "pve2"}), creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"))


def test_wrong_password_is_a_preflight_error(bed):
    with pytest.raises(PreflightError, match=r"Proxmox API: authentication failed for pfbuild@pve"):
        preflight(bed, cfg(), creds_for(bed, "pfbuild@pve", "wrong-password"))


def test_vmid_taken_by_a_foreign_vm(bed):
    with bed.enter():
        bed.sim_admin.take_vmid(9151)
    try:
        with pytest.raises(PreflightError) as info:
            preflight(bed, cfg(**{"template.vmid": 9151}), creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"),
                      replace=True)
    finally:
        with bed.enter():
            bed.destroy_vm(9151)  # the bed is shared by the session: leave nothing behind
    assert "vmid 9151 is taken by VM 'other-client' on pve, which nixgold did not build" in str(info.value)
    assert "nixgold never replaces a VM it did not build" in str(info.value)


def test_vmid_holding_our_template_needs_replace(bed):
    config = cfg(**{"template.vmid": bed.template_vmid})
    with pytest.raises(PreflightError) as info:
        preflight(bed, config, creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"))
    text = str(info.value)
    assert f"vmid {bed.template_vmid} holds nixgold template 'nixgold-testbed-good'" in text
    assert "DESTROYS it before the new build starts" in text and "pass --replace" in text
    assert "nightly refresh" in text
    result = preflight(bed, config, creds_for(bed, "pfbuild@pve", "pf-Secret-pw1"), replace=True)
    assert result.vmid.status == "replace" and result.vmid.manifest.template_vmid == bed.template_vmid
