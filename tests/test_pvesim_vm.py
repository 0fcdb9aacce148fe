"""Real QEMU guests behind the simulated PVE API (TCG; the stand-in Debian image).

One linked clone of template 9004 is booted once per module and checked several ways:
cloud-init (hostname, SSH key), guest agent (bridge address from dnsmasq), SSH (paramiko),
sendkey (a typed line lands in the image's /var/log/typed-lines.log), pending changes,
shutdown through the agent.  Tiny hand-made boot sectors prove SeaBIOS boot order and
the power/agent errors without booting an OS.  A private second bed proves that teardown
(and a killed simulator) leave nothing behind.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from tests.testbed.bed import GuestInfo, Testbed

pytestmark = pytest.mark.vm

TEMPLATE = 9004
GUEST = 300
USER = "tester"


def wait(prox: ProxmoxAPI, upid: str, timeout: float = 180) -> dict[str, Any]:
    status = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.2)
    assert status is not None, f"task {upid} still running after {timeout}s"
    return status


def raises(fn, status: int) -> ResourceException:
    with pytest.raises(ResourceException) as info:
        fn()
    assert info.value.status_code == status, (info.value.status_code, info.value.content)
    return info.value


def boot_sector(message: bytes, size: int = 512) -> bytes:
    """16-bit code that prints ``message`` on COM1 and halts (``jmp 0:7c05`` normalizes CS:IP)."""
    code = bytes.fromhex("EA057C0000" "31C0" "8ED8") + b"\xBE" + struct.pack("<H", 0x7C00 + 27) + \
        bytes.fromhex("BAF803" "AC" "84C0" "7403" "EE" "EBF8" "FA" "F4" "EBFD")
    assert len(code) == 27
    blob = code + message + b"\0"
    blob = blob.ljust(size, b"\0")
    return blob[:510] + b"\x55\xAA" + blob[512:] if size >= 512 else blob


def wait_serial(path: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return path.read_text(errors="replace")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on {path} after {timeout}s: {path.read_text(errors='replace')[-500:] if path.exists() else '(no log)'}")


@pytest.fixture(scope="module")
def keypair(tmp_path_factory) -> tuple[Path, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = Path(tmp_path_factory.mktemp("ssh")) / "id_ed25519"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return path, f"{pub} pvesim-test"


@pytest.fixture(scope="module")
def guest(testbed: Testbed, keypair) -> Iterator[GuestInfo]:
    with testbed.enter():
        info = testbed.boot_clone(GUEST, name=f"vmtest-{GUEST}", user=USER, ssh_pubkey=keypair[1])
    print(f"\nclone -> agent IPv4 {info.seconds_to_agent}s, -> SSH {info.seconds_to_ssh}s")
    yield info
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        if any(vm["vmid"] == GUEST for vm in node.qemu.get()):
            wait(prox, node.qemu(GUEST).status.stop.post())
            wait(prox, node.qemu(GUEST).delete())


def ssh(testbed: Testbed, guest: GuestInfo, keypair, command: str) -> str:
    with testbed.enter():
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        # Like the NixOS template, the stand-in runs cloud-init's ssh module in the config stage,
        # after sshd listens (cloud-init.nix cloud_config_modules): the key arrives a little later.
        deadline = time.monotonic() + 90
        while True:
            try:
                client.connect(guest.ip, username=USER, timeout=30, allow_agent=False, look_for_keys=False,
                               pkey=paramiko.Ed25519Key.from_private_key_file(str(keypair[0])))
                break
            except paramiko.AuthenticationException:
                client.close()  # each connect() starts a transport thread; a refused one keeps running
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        try:
            _, out, err = client.exec_command(command, timeout=60)
            text = out.read().decode()
            assert out.channel.recv_exit_status() == 0, err.read().decode()
            return text
        finally:
            client.close()


def test_cloud_init_sets_hostname_and_ssh_key(testbed, guest, keypair):
    out = ssh(testbed, guest, keypair, "hostname; id -un; cat ~/.ssh/authorized_keys")
    hostname, user, keys = out.split("\n", 2)
    assert hostname == f"vmtest-{GUEST}" and user == USER
    assert keypair[1] in keys


def test_agent_reports_the_bridge_address(testbed, guest):
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        conf = node.qemu(GUEST).config.get()
        ifaces = {i["name"]: i for i in node.qemu(GUEST).agent("network-get-interfaces").get()["result"]}
        host = node.qemu(GUEST).agent("get-host-name").get()["result"]
        osinfo = node.qemu(GUEST).agent("get-osinfo").get()["result"]
        assert node.qemu(GUEST).agent.ping.post() == {"result": {}}
    mac = conf["net0"].split(",")[0].split("=")[1].lower()
    eth0 = ifaces["eth0"]
    assert eth0["hardware-address"] == mac
    ipv4 = [a["ip-address"] for a in eth0["ip-addresses"] if a["ip-address-type"] == "ipv4"]
    assert ipv4 == [guest.ip]
    assert ipaddress.ip_address(guest.ip) in ipaddress.ip_network(testbed.subnet)
    assert testbed.net.leases()[mac] == guest.ip  # the address came from dnsmasq in the namespace
    assert host == {"host-name": f"vmtest-{GUEST}"}
    assert osinfo["id"] == "debian"


def agent_answering(call: Any, seconds: float = 60) -> Any:
    """``call()``, again while PVE says the agent is not running: qemu-server pings the agent first
    with a 3 s timeout (Agent.pm qga_check_running), which a TCG guest busy with its boot (cloud-init's
    last stage, the other workers' guests) can miss now and then although its agent answered before
    (a CI run: "500 QEMU guest agent is not running" right after the fixture's agent answer)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except ResourceException as exc:
            if "QEMU guest agent is not running" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_agent_exec_and_file_read(testbed, guest):
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        pid = agent_answering(lambda: node.qemu(GUEST).agent.exec.post(
            command=["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]))["pid"]
        deadline = time.monotonic() + 30
        while True:
            status = node.qemu(GUEST).agent("exec-status").get(pid=pid)
            if status["exited"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == {"exited": 1, "exitcode": 3, "out-data": "out\n", "err-data": "err\n"} or (
            status["exitcode"] == 3 and status["out-data"] == "out\n" and status["err-data"] == "err\n")
        assert node.qemu(GUEST).agent("file-read").get(file="/etc/hostname")["content"] == f"vmtest-{GUEST}\n"


def test_sendkey_types_a_line_on_the_console(testbed, guest):
    line = "pvesim-typed-42"
    keys = [{"-": "minus"}.get(ch, ch) for ch in line] + ["ret"]
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        for key in keys:
            assert node.qemu(GUEST).sendkey.put(key=key) is None
        err = raises(lambda: node.qemu(GUEST).sendkey.put(key="pageUp".lower()), 500)
        assert err.content == "invalid parameter: pageup"
        deadline = time.monotonic() + 30
        content = ""
        while line not in content and time.monotonic() < deadline:
            try:
                content = node.qemu(GUEST).agent("file-read").get(file="/var/log/typed-lines.log")["content"]
            except ResourceException:
                pass
            time.sleep(0.5)
    assert line in content.splitlines()


def test_pending_changes_and_refusals_while_running(testbed, guest):
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        status = node.qemu(GUEST).status.current.get()
        assert status["status"] == "running" and status["qmpstatus"] == "running" and status["agent"] == 1
        assert status["pid"] > 0 and status["name"] == f"vmtest-{GUEST}"
        node.qemu(GUEST).config.put(memory=2048, description="running notes")
        pending = {p["key"]: p for p in node.qemu(GUEST).pending.get()}
        assert pending["memory"] == {"key": "memory", "value": "1024", "pending": "2048"}
        assert "pending" not in pending["description"]  # description is applied at once
        assert node.qemu(GUEST).config.get()["memory"] == "2048"
        assert node.qemu(GUEST).config.get(current=1)["memory"] == "1024"
        node.qemu(GUEST).config.put(revert="memory")
        assert "pending" not in {p["key"]: p for p in node.qemu(GUEST).pending.get()}["memory"]
        err = raises(lambda: node.qemu(GUEST).delete(), 500)
        assert err.content == f"VM {GUEST} is running - destroy failed"
        assert wait(prox, node.qemu(GUEST).status.start.post())["exitstatus"] == f"VM {GUEST} already running"
        err = raises(lambda: node.qemu(GUEST).template.post(), 500)
        assert err.content == "you can't convert a VM to template if VM is running"


def test_slow_agent_fault(testbed, guest):
    with testbed.enter():
        node = testbed.proxmoxer().nodes(testbed.node)
        testbed.sim_admin.slow_agent(3600, vmid=GUEST)
        err = raises(lambda: node.qemu(GUEST).agent("network-get-interfaces").get(), 500)
        assert err.content == "QEMU guest agent is not running"
        testbed.sim_admin.clear_faults()
        assert node.qemu(GUEST).agent.ping.post() == {"result": {}}


def test_shutdown_goes_through_the_agent(testbed, guest):
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        pid = node.qemu(GUEST).status.current.get()["pid"]
        # no timeout: PVE's default 60 s, what Packer's conversion step gets (a guest that hangs on
        # the way down fails the build there)
        status = wait(prox, node.qemu(GUEST).status.shutdown.post())
        assert status["exitstatus"] == "OK" and Tasks.decode_upid(status["upid"])["type"] == "qmshutdown"
        assert node.qemu(GUEST).status.current.get()["status"] == "stopped"
        assert f"tap{GUEST}i0" not in testbed.net.taps()
    assert not Path(f"/proc/{pid}").exists()
    log = (testbed.sim_dir / "run" / str(GUEST) / "serial0.log").read_text(errors="replace")
    assert "Power-Off" in log or "reboot: Power down" in log


# ------------------------------------------------------------- no-OS guests
def test_seabios_boot_order_falls_through_to_the_cd(testbed, tmp_path):
    cd_root = tmp_path / "cd"
    cd_root.mkdir()
    (cd_root / "boot.img").write_bytes(boot_sector(b"BOOTED-FROM-CD\r\n", 2048))
    iso = tmp_path / "bootcd.iso"
    subprocess.run(["genisoimage", "-quiet", "-V", "BOOTCD", "-b", "boot.img", "-no-emul-boot", "-boot-load-size",
                    "4", "-o", str(iso), str(cd_root)], check=True)
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        with iso.open("rb") as fh:
            assert wait(prox, node.storage(testbed.storage).upload.post(content="iso", filename=fh))["exitstatus"] == "OK"
        for vmid in (310, 311):
            wait(prox, node.qemu.post(vmid=vmid, name=f"seabios-{vmid}", memory=64, scsihw="virtio-scsi-pci",
                                      scsi0=f"{testbed.storage}:1,format=raw",
                                      ide2=f"{testbed.storage}:iso/bootcd.iso,media=cdrom", serial0="socket",
                                      net0=f"virtio,bridge={testbed.bridge}", boot="order=scsi0;ide2;net0"))
        disk = testbed.sim_dir / "storage" / testbed.storage / "images" / "311" / "vm-311-disk-0.raw"
        with disk.open("r+b") as fh:
            fh.write(boot_sector(b"BOOTED-FROM-DISK\r\n"))
        for vmid in (310, 311):
            assert wait(prox, node.qemu(vmid).status.start.post())["exitstatus"] == "OK"
        run = testbed.sim_dir / "run"
        assert "BOOTED-FROM-DISK" not in wait_serial(run / "310" / "serial0.log", "BOOTED-FROM-CD")
        assert "BOOTED-FROM-CD" not in wait_serial(run / "311" / "serial0.log", "BOOTED-FROM-DISK")
        cmdline = (run / "310" / "cmdline").read_text()
        assert "-accel tcg" in cmdline and "bootindex=100" in cmdline and "ifname=tap310i0" in cmdline
        for vmid in (310, 311):
            assert wait(prox, node.qemu(vmid).status.stop.post())["exitstatus"] == "OK"
            wait(prox, node.qemu(vmid).delete())


def test_uefi_guest_gets_ovmf_and_its_efivars_disk(testbed):
    vmid = 315
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        wait(prox, node.qemu.post(vmid=vmid, name="uefi", memory=128, bios="ovmf", machine="q35",
                                  efidisk0=f"{testbed.storage}:1,efitype=4m,pre-enrolled-keys=0",
                                  sata0=f"{testbed.storage}:1,format=qcow2", ide2="none,media=cdrom",
                                  serial0="socket", boot="order=sata0;ide2"))
        conf = node.qemu(vmid).config.get()
        assert conf["efidisk0"] == (f"{testbed.storage}:{vmid}/vm-{vmid}-disk-0.raw,efitype=4m,"
                                    "pre-enrolled-keys=0,size=528K")
        assert wait(prox, node.qemu(vmid).status.start.post())["exitstatus"] == "OK"
        run = testbed.sim_dir / "run" / str(vmid)
        cmdline = (run / "cmdline").read_text()
        assert "OVMF_CODE_4M.fd" in cmdline and f"vm-{vmid}-disk-0.raw" in cmdline and "-machine q35" in cmdline
        wait_serial(run / "serial0.log", "BdsDxe", timeout=90)  # OVMF's boot manager on the serial console
        assert wait(prox, node.qemu(vmid).status.stop.post())["exitstatus"] == "OK"
        wait(prox, node.qemu(vmid).delete())


def test_power_and_agent_errors_without_a_guest_os(testbed):
    vmid = 320
    with testbed.enter():
        prox = testbed.proxmoxer()
        node = prox.nodes(testbed.node)
        wait(prox, node.qemu.post(vmid=vmid, name="no-os", memory=64, agent=1, serial0="socket"))
        wait(prox, node.qemu(vmid).status.start.post())
        t0 = time.monotonic()
        err = raises(lambda: node.qemu(vmid).agent.ping.post(), 500)
        assert err.content == "QEMU guest agent is not running" and time.monotonic() - t0 >= 2.5
        # the agent does not answer guest-ping: PVE falls back to ACPI, which a guest without an OS ignores
        status = wait(prox, node.qemu(vmid).status.shutdown.post(timeout=2))
        assert status["exitstatus"] == "VM quit/powerdown failed - got timeout"
        node.qemu(vmid).config.put(agent=0)  # pending until the VM stops (virtio-serial is a device)
        assert {p["key"]: p for p in node.qemu(vmid).pending.get()}["agent"]["pending"] == "0"
        assert wait(prox, node.qemu(vmid).status.stop.post())["exitstatus"] == "OK"
        assert "agent" not in {p["key"] for p in node.qemu(vmid).pending.get() if "pending" in p}
        assert node.qemu(vmid).config.get()["agent"] == "0"  # the API stop applied it
        wait(prox, node.qemu(vmid).status.start.post())
        # ACPI powerdown is ignored by a guest without an OS: timeout, then forceStop
        status = wait(prox, node.qemu(vmid).status.shutdown.post(timeout=2))
        assert status["exitstatus"] == "VM quit/powerdown failed - got timeout"
        status = wait(prox, node.qemu(vmid).status.shutdown.post(timeout=2, forceStop=1))
        assert status["exitstatus"] == "WARNINGS: 1"
        log = [line["t"] for line in node.tasks(status["upid"]).log.get()]
        assert "WARN: VM still running - terminating now with SIGTERM" in log
        assert node.qemu(vmid).status.current.get()["status"] == "stopped"
        err = raises(lambda: node.qemu(vmid).sendkey.put(key="ret"), 500)
        assert err.content == f"VM {vmid} not running"
        wait(prox, node.qemu(vmid).delete())


def test_teardown_and_a_killed_simulator_leave_nothing(tmp_path):
    bed = Testbed(root=tmp_path / "bed", netns=f"ngbed-{os.getpid()}-td", log_fn=lambda msg: None)
    qemu_pids: list[int] = []
    try:
        bed.up(template=False)
        with bed.enter():
            prox = bed.proxmoxer()
            node = prox.nodes(bed.node)
            for vmid in (101, 102):
                wait(prox, node.qemu.post(vmid=vmid, memory=64, net0=f"virtio,bridge={bed.bridge}",
                                          serial0="socket"))
                upid = node.qemu(vmid).status.start.post()
                started = wait(prox, upid)
                log = [line["t"] for line in node.tasks(upid).log.get()]
                assert started.get("exitstatus") == "OK", (started, log)  # a failed start says why
                current = node.qemu(vmid).status.current.get()
                assert current["status"] == "running" and "pid" in current, (current, log)
                qemu_pids.append(current["pid"])
        assert set(bed.net.taps()) == {"tap101i0", "tap102i0"}
        # a simulator killed without warning takes its guests with it (PDEATHSIG)
        sim_pid = int((bed.root / "pvesim.pid").read_text())
        os.kill(sim_pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{p}").exists() for p in qemu_pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in qemu_pids if Path(f"/proc/{p}").exists()]
        assert bed.net.taps() == []
        bed.up(template=False)  # a fresh simulator; start a guest again, then a normal teardown
        with bed.enter():
            prox = bed.proxmoxer()
            node = prox.nodes(bed.node)
            wait(prox, node.qemu.post(vmid=103, memory=64, net0=f"virtio,bridge={bed.bridge}"))
            wait(prox, node.qemu(103).status.start.post())
            qemu_pids.append(node.qemu(103).status.current.get()["pid"])
    finally:
        bed.down()
    assert not bed.net.exists()
    assert not [p for p in qemu_pids if Path(f"/proc/{p}").exists()]
    assert bed.leftover_qemu() == []
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith("tap10")]
    assert bed._sim_pid() is None
