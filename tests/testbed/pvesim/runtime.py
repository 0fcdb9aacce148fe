"""Real QEMU guests (always TCG) for started VMs.

Each VM gets ``<run_dir>/<vmid>/`` with ``qmp.sock``, ``qga.sock`` (agent
enabled), ``serial<N>.sock`` + ``serial<N>.log`` (``serialN: socket``),
``qemu.log`` (QEMU's stderr) and ``ifup-net<N>`` scripts that put the TAP
``tap<vmid>i<N>`` on the configured bridge.  QEMU creates the TAPs itself, so
they vanish with the process.  Processes are forked from one long-lived
thread and wrapped in ``setpriv --pdeathsig KILL``: if the simulator dies, so
does every guest.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import die
from .qga import QgaClient
from .qmp import QmpClient
from .storage import StorageManager
from .vmconfig import NET_RE, drive_sort_key, is_drive_key, is_flag_set, parse_boot_order

log = logging.getLogger(__name__)

NIC_DEVICES = {
    "virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139",
    "vmxnet3": "vmxnet3", "ne2k_pci": "ne2k_pci", "pcnet": "pcnet", "i82551": "i82551",
    "i82557b": "i82557b", "i82559er": "i82559er", "e1000-82540em": "e1000-82540em",
    "e1000-82544gc": "e1000-82544gc", "e1000-82545em": "e1000-82545em",
}
# Every PVE CPU type becomes this TCG model: x86-64-v2 like PVE's default x86-64-v2-AES, but
# without AES-NI. With +aes, udev loads aesni_intel for cpu0 at boot, its crypto self-test oopses
# under TCG ("cryptomgr_test exited with preempt_count 2") and leaves a udev worker hung: every
# guest shutdown then waits out systemd's 90 s stop timeout and PVE's 60 s shutdown fails.
TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"
SCSI_CONTROLLERS = {"lsi": "lsi", "lsi53c810": "lsi53c810", "megasas": "megasas", "pvscsi": "pvscsi",
                    "virtio-scsi-pci": "virtio-scsi-pci", "virtio-scsi-single": "virtio-scsi-pci"}


OVMF_DIR = Path("/usr/share/OVMF")


def ovmf_code(four_m: bool) -> Path:
    return OVMF_DIR / ("OVMF_CODE_4M.fd" if four_m else "OVMF_CODE.fd")


def ovmf_vars(four_m: bool, ms_keys: bool) -> Path:
    """The efivars template PVE copies into a new efidisk0 (Microsoft keys with pre-enrolled-keys=1)."""
    if four_m:
        return OVMF_DIR / ("OVMF_VARS_4M.ms.fd" if ms_keys else "OVMF_VARS_4M.fd")
    return OVMF_DIR / ("OVMF_VARS.ms.fd" if ms_keys else "OVMF_VARS.fd")


def parse_kv(value: str, default_key: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
        elif default_key:
            out[default_key] = part
    return out


def parse_nic(value: str) -> dict[str, str]:
    net: dict[str, str] = {}
    for part in value.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k in NIC_DEVICES or k in ("ne2k_isa",):
                net["model"], net["macaddr"] = k, v
            else:
                net[k] = v
        elif part:
            net["model"] = part
    return net


def memory_mib(conf: dict[str, str]) -> int:
    mem = conf.get("memory", "512")
    m = re.search(r"(?:^|,)(?:current=)?(\d+)", mem)
    return int(m.group(1)) if m else 512


@dataclass
class QemuInstance:
    vmid: int
    proc: subprocess.Popen
    rundir: Path
    agent: bool
    started_wall: float
    started_mono: float
    taps: list[str] = field(default_factory=list)
    exited: threading.Event = field(default_factory=threading.Event)
    qmp_lock: threading.Lock = field(default_factory=threading.Lock)
    qga_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    @property
    def qmp_path(self) -> Path:
        return self.rundir / "qmp.sock"

    @property
    def qga_path(self) -> Path:
        return self.rundir / "qga.sock"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and self.proc.poll() is None

    def qmp(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self.qmp_lock:
            return QmpClient(self.qmp_path, timeout).execute(command, arguments, timeout)

    def qga(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        if not self.qga_lock.acquire(timeout=timeout):
            from .qga import QgaTimeout

            raise QgaTimeout("guest agent busy")
        try:
            return QgaClient(self.qga_path).execute(command, arguments, timeout)
        finally:
            self.qga_lock.release()

    def uptime(self) -> int:
        return int(time.monotonic() - self.started_mono)


class QemuRuntime:
    def __init__(self, run_dir: Path, storage: StorageManager, *, qemu: str = "qemu-system-x86_64",
                 accel: str = "tcg", on_exit: Callable[[int, int], None] | None = None) -> None:
        self.run_dir = run_dir
        self.storage = storage
        self.qemu = qemu
        self.accel = accel
        self.on_exit = on_exit
        self.instances: dict[int, QemuInstance] = {}
        self._lock = threading.RLock()
        # one long-lived thread forks every QEMU: PDEATHSIG follows the forking *thread*
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qemu-spawner")
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- command line ---------------------------------------------------------
    def build_argv(self, vmid: int, conf: dict[str, str], rundir: Path) -> tuple[list[str], list[str]]:
        """(argv, tap names) for ``conf`` (pending already applied)."""
        name = conf.get("name") or f"VM{vmid}"
        sockets = int(conf.get("sockets", "1"))
        cores = int(conf.get("cores", "1"))
        machine = parse_kv(conf.get("machine", ""), "type").get("type", "pc")
        q35 = "q35" in machine
        argv = [
            self.qemu, "-name", f"{name},debug-threads=on", "-nodefaults",
            "-chardev", f"socket,id=qmp,path={rundir / 'qmp.sock'},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-pidfile", str(rundir / "qemu.pid"),
            "-machine", "q35" if q35 else "pc", "-accel", self.accel,
            "-cpu", TCG_CPU,
            "-smp", f"{sockets * cores},sockets={sockets},cores={cores},maxcpus={sockets * cores}",
            "-m", str(memory_mib(conf)),
            "-boot", "menu=off,strict=on,reboot-timeout=1000",
            "-vga", "std", "-display", "none",
            "-rtc", "base=localtime" if is_flag_set(conf.get("localtime")) else "base=utc",
        ]
        rng = parse_kv(conf.get("rng0", ""), "source")
        if rng.get("source"):
            dev = "virtio-rng-pci,rng=rng0"
            if rng.get("max_bytes"):
                dev += f",max-bytes={rng['max_bytes']},period={rng.get('period', '1000')}"
            argv += ["-object", f"rng-random,filename={rng['source']},id=rng0", "-device", dev]
        smbios = parse_kv(conf.get("smbios1", ""))
        if smbios.get("uuid"):
            argv += ["-smbios", f"type=1,uuid={smbios['uuid']}"]
        # UEFI: OVMF code read-only + the VM's efivars volume (efidisk0), as qemu-server does
        if conf.get("bios") == "ovmf":
            efi = parse_kv(conf.get("efidisk0", ""), "file")
            four_m = efi.get("efitype", "2m") == "4m"
            argv += ["-drive", f"if=pflash,unit=0,format=raw,readonly=on,file={ovmf_code(four_m)}"]
            if efi.get("file"):
                vol = self.storage.parse(efi["file"])
                argv += ["-drive", f"if=pflash,unit=1,id=drive-efidisk0,format={vol.fmt or 'raw'},file={vol.path}"]
            else:  # PVE: "WARN: no efidisk configured! Using temporary efivars disk."
                tmp_vars = rundir / "efivars.fd"
                shutil.copyfile(ovmf_vars(four_m, False), tmp_vars)
                argv += ["-drive", f"if=pflash,unit=1,id=drive-efidisk0,format=raw,file={tmp_vars}"]
        # serial ports
        for i in range(4):
            value = conf.get(f"serial{i}")
            if value == "socket":
                argv += ["-chardev", f"socket,id=serial{i},path={rundir / f'serial{i}.sock'},server=on,wait=off,"
                                     f"logfile={rundir / f'serial{i}.log'},logappend=on",
                         "-device", f"isa-serial,chardev=serial{i}"]
            elif value:
                argv += ["-chardev", f"serial,id=serial{i},path={value}", "-device", f"isa-serial,chardev=serial{i}"]
        # guest agent
        agent = parse_kv(conf.get("agent", ""), "enabled")
        if is_flag_set(agent.get("enabled")):
            argv += ["-chardev", f"socket,path={rundir / 'qga.sock'},server=on,wait=off,id=qga0"]
            if agent.get("type") == "isa":
                argv += ["-device", "isa-serial,chardev=qga0"]
            else:
                argv += ["-device", "virtio-serial,id=qga0", "-device",
                         "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
        # boot order -> bootindex
        order = parse_boot_order(conf.get("boot"), conf)
        bootindex = {dev: 100 + i for i, dev in enumerate(order)}
        # disks
        scsihw = conf.get("scsihw", "lsi")
        scsi_ctrl: set[str] = set()
        ahci = False
        for key in sorted((k for k in conf if is_drive_key(k)), key=drive_sort_key):
            if key in ("efidisk0", "tpmstate0"):
                continue
            drive = parse_kv(conf[key], "file")
            m = re.match(r"([a-z]+)(\d+)$", key)
            assert m
            bus, index = m.group(1), int(m.group(2))
            cdrom = drive.get("media") == "cdrom"
            file = drive.get("file", "none")
            dopts = [f"if=none", f"id=drive-{key}"]
            if file not in ("none", "cdrom", ""):
                if file.startswith("/"):
                    path, fmt = Path(file), drive.get("format", "raw")
                else:
                    vol = self.storage.parse(file)
                    path, fmt = vol.path, (vol.fmt if vol.fmt not in (None, "iso") else "raw")
                    if not path.exists():
                        raise die(f"volume '{file}' does not exist")
                dopts = [f"file={path}", f"format={drive.get('format', fmt)}"] + dopts
            if cdrom:
                dopts.append("media=cdrom")
            if dopts[0].startswith("file="):  # an empty CD drive takes no cache option
                # test bed: no O_DIRECT (cache=none fails on overlay/tmpfs), and speed over durability
                cache = drive.get("cache") or "unsafe"
                dopts.append(f"cache={'writeback' if cache in ('none', 'directsync') else cache}")
            if drive.get("discard") == "on":
                dopts.append("discard=unmap")
            argv += ["-drive", ",".join(dopts)]
            boot = f",bootindex={bootindex[key]}" if key in bootindex else ""
            kind = "cd" if cdrom else "hd"
            if bus == "ide":
                # qemu-server 9.1.19 DriveDevice.pm:121-134 print_drivedevice_full: controller = index / 2, unit =
                # index % 2; on q35 (ICH9 AHCI: one unit per bus) an odd index moves up 2 buses:
                # ide0 -> ide.0, ide1 -> ide.2, ide2 -> ide.1, ide3 -> ide.3
                controller, unit = index // 2, index % 2
                if q35:
                    controller, unit = controller + 2 * unit, 0
                dev = f"ide-{kind},bus=ide.{controller},unit={unit}"
            elif bus == "sata":
                if not ahci:
                    argv += ["-device", "ahci,id=ahci0,multifunction=on"]
                    ahci = True
                dev = f"ide-{kind},bus=ahci0.{index}"
            elif bus == "scsi":
                if scsihw == "virtio-scsi-single":
                    ctrl, unit = f"virtioscsi{index}", 0
                    argv += ["-device", f"virtio-scsi-pci,id={ctrl}"]
                else:
                    per = 256 if scsihw == "virtio-scsi-pci" else 7
                    ctrl, unit = f"scsihw{index // per}", index % per
                    if ctrl not in scsi_ctrl:
                        argv += ["-device", f"{SCSI_CONTROLLERS.get(scsihw, 'lsi')},id={ctrl}"]
                        scsi_ctrl.add(ctrl)
                if scsihw.startswith("virtio-scsi"):
                    dev = f"scsi-{kind},bus={ctrl}.0,channel=0,scsi-id=0,lun={unit}"
                else:
                    dev = f"scsi-{kind},bus={ctrl}.0,scsi-id={unit}"
            else:  # virtio
                dev = "virtio-blk-pci"
            argv += ["-device", f"{dev},drive=drive-{key},id={key}{boot}"]
        # NICs
        taps: list[str] = []
        for key in sorted((k for k in conf if NET_RE.match(k)), key=lambda k: int(k[3:])):
            idx = int(key[3:])
            nic = parse_nic(conf[key])
            model = NIC_DEVICES.get(nic.get("model", "virtio"), "virtio-net-pci")
            bridge = nic.get("bridge")
            if bridge:
                if not Path(f"/sys/class/net/{bridge}/bridge").exists():
                    raise die(f"bridge '{bridge}' does not exist")
                tap = f"tap{vmid}i{idx}"
                script = rundir / f"ifup-{key}"
                ip = shutil.which("ip") or "/usr/sbin/ip"
                mtu = f" mtu {nic['mtu']}" if nic.get("mtu") else ""
                script.write_text(f"#!/bin/sh\nset -e\n{ip} link set \"$1\" master {shlex.quote(bridge)}{mtu} up\n")
                script.chmod(0o755)
                argv += ["-netdev", f"type=tap,id={key},ifname={tap},script={script},downscript=no"]
                taps.append(tap)
            else:
                argv += ["-netdev", f"type=user,id={key}"]
            boot = f",bootindex={bootindex[key]}" if key in bootindex else ""
            mac = f",mac={nic['macaddr']}" if nic.get("macaddr") else ""
            argv += ["-device", f"{model}{mac},netdev={key},id={key}{boot}"]
        if conf.get("args"):
            argv += shlex.split(conf["args"])
        return argv, taps

    # -- lifecycle ------------------------------------------------------------
    def get(self, vmid: int) -> QemuInstance | None:
        with self._lock:
            inst = self.instances.get(vmid)
            if inst is not None and not inst.alive:
                return None
            return inst

    def start(self, vmid: int, conf: dict[str, str], log_line: Callable[[str], None] | None = None,
              timeout: float = 30.0) -> QemuInstance:
        rundir = self.run_dir / str(vmid)
        if rundir.exists():
            for f in rundir.iterdir():
                if f.suffix in (".sock", ".pid") or f.name.startswith("ifup-"):
                    f.unlink(missing_ok=True)
        rundir.mkdir(parents=True, exist_ok=True)
        argv, taps = self.build_argv(vmid, conf, rundir)
        for tap in taps:
            if Path(f"/sys/class/net/{tap}").exists():  # stale TAP from a crashed QEMU
                subprocess.run(["ip", "link", "del", tap], capture_output=True)
        full = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        (rundir / "cmdline").write_text(shlex.join(argv) + "\n")
        log.info("VM %s: starting %s", vmid, shlex.join(argv))
        stderr = (rundir / "qemu.log").open("ab")

        def spawn() -> subprocess.Popen:
            return subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=rundir,
                                    close_fds=True)

        proc = self._spawner.submit(spawn).result()
        stderr.close()
        inst = QemuInstance(vmid, proc, rundir, agent="qga0" in " ".join(argv), started_wall=time.time(),
                            started_mono=time.monotonic(), taps=taps)
        with self._lock:
            self.instances[vmid] = inst
        threading.Thread(target=self._watch, args=(inst,), name=f"qemu-watch-{vmid}", daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            if not inst.alive:
                tail = (rundir / "qemu.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise die(f"start failed: QEMU exited with code {proc.poll()}" + ("\n" + "\n".join(tail) if tail else ""))
            if inst.qmp_path.exists():
                try:
                    inst.qmp("query-status", timeout=2)
                    break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                self.kill(vmid)
                raise die("start failed: QMP socket did not come up")
            time.sleep(0.05)
        return inst

    def _watch(self, inst: QemuInstance) -> None:
        code = inst.proc.wait()
        inst.exited.set()
        log.info("VM %s: QEMU pid %s exited with %s", inst.vmid, inst.pid, code)
        for f in (inst.qmp_path, inst.qga_path):
            f.unlink(missing_ok=True)
        with self._lock:
            if self.instances.get(inst.vmid) is inst:
                del self.instances[inst.vmid]
        if self.on_exit:
            try:
                self.on_exit(inst.vmid, code)
            except Exception:  # pragma: no cover
                log.exception("on_exit hook failed")

    def kill(self, vmid: int, grace: float = 3.0) -> None:
        with self._lock:
            inst = self.instances.get(vmid)
        if inst is None:
            return
        inst.stopping = True
        if inst.alive:
            try:
                inst.qmp("quit", timeout=2)
            except Exception:
                pass
        if not inst.exited.wait(grace):
            try:
                os.kill(inst.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not inst.exited.wait(2):
                try:
                    os.kill(inst.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                inst.exited.wait(5)

    def kill_all(self) -> None:
        with self._lock:
            vmids = list(self.instances)
        threads = [threading.Thread(target=self.kill, args=(v, 1.0)) for v in vmids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        # belt and braces: nothing may survive
        with self._lock:
            for inst in self.instances.values():
                try:
                    os.kill(inst.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def shutdown(self) -> None:
        self.kill_all()
        self._spawner.shutdown(wait=False)
