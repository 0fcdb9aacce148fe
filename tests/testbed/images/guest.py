"""Boot a stand-in image with plain QEMU (TCG) — helpers for tests and the simulator.

Nothing here is part of the image recipe (the recipe hash covers base.py and
build.py only), so changing it does not rebuild images.

    seed = make_seed_iso(workdir / "seed.iso", hostname="vm1", user="ops", ssh_pubkey=pub, mac=mac)
    with net.enter():
        net.add_tap("ngtap0")
        guest = Guest.launch(info, workdir, tap="ngtap0", mac=mac, seed_iso=seed, disk_size=3 << 30)
    ip = net.wait_for_lease(mac)
    ...
    guest.qga("guest-ping")
    guest.sendkeys("hello\\n")
    guest.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "Guest",
    "QemuError",
    "make_seed_iso",
    "qemu_argv",
    "random_mac",
    "sendkey_names",
]


class QemuError(RuntimeError):
    pass


def random_mac(prefix: str = "bc:24:11") -> str:
    """A random MAC under Proxmox's OUI (bc:24:11)."""
    return prefix + "".join(f":{random.randrange(256):02x}" for _ in range(6 - len(prefix.split(":"))))


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # JSON strings are valid YAML scalars


def make_seed_iso(
    path: Path | str,
    *,
    hostname: str,
    user: str,
    ssh_pubkey: str,
    mac: str | None = None,
    instance_id: str | None = None,
    extra_user_data: str = "",
) -> Path:
    """A NoCloud seed ISO (volume label ``cidata``) like Proxmox's cloud-init drive:
    user-data with hostname and a sudo user holding ``ssh_pubkey``; network-config
    v1 with DHCP on eth0 (matched by ``mac`` when given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iid = instance_id or f"iid-{hostname}-{os.urandom(4).hex()}"
    user_data = (
        "#cloud-config\n"
        f"hostname: {_yaml_str(hostname)}\n"
        "manage_etc_hosts: true\n"
        "users:\n"
        f"  - name: {_yaml_str(user)}\n"
        "    shell: /bin/bash\n"
        "    lock_passwd: true\n"
        "    sudo: 'ALL=(ALL) NOPASSWD:ALL'\n"
        "    ssh_authorized_keys:\n"
        f"      - {_yaml_str(ssh_pubkey.strip())}\n"
        + extra_user_data
    )
    meta_data = f"instance-id: {iid}\nlocal-hostname: {hostname}\n"
    net = "version: 1\nconfig:\n  - type: physical\n    name: eth0\n"
    if mac:
        net += f"    mac_address: '{mac.lower()}'\n"
    net += "    subnets:\n      - type: dhcp4\n"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "user-data").write_text(user_data)
        (t / "meta-data").write_text(meta_data)
        (t / "network-config").write_text(net)
        if shutil.which("cloud-localds"):
            argv = ["cloud-localds", f"--network-config={t / 'network-config'}", str(path),
                    str(t / "user-data"), str(t / "meta-data")]
        else:
            argv = ["genisoimage", "-quiet", "-output", str(path), "-volid", "cidata", "-joliet", "-rock",
                    str(t / "user-data"), str(t / "meta-data"), str(t / "network-config")]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise QemuError(f"seed ISO failed: {' '.join(argv)}: {proc.stderr.strip()}")
    return path


def qemu_argv(
    *,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    disk: Path,
    seed_iso: Path | None = None,
    tap: str | None = None,
    mac: str | None = None,
    serial_log: Path | None = None,
    qmp_socket: Path | None = None,
    qga_socket: Path | None = None,
    memory_mb: int = 768,
    cpus: int = 1,
    name: str = "nixgold-testbed",
    extra: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line: TCG (KVM guests hang on this host), i440fx like
    Proxmox's default, virtio disk/net, cloud-init ISO on IDE, serial to a file,
    QMP and guest-agent chardev sockets, VGA + PS/2 keyboard kept for sendkey."""
    argv = [
        "qemu-system-x86_64",
        "-name", name,
        "-accel", "tcg,thread=multi",
        "-machine", "pc",
        "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt",
        "-m", str(memory_mb),
        "-smp", str(cpus),
        "-display", "none",
        "-no-user-config",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", cmdline,
        "-drive", f"file={disk},if=none,id=drive-virtio0,format=qcow2,cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=drive-virtio0,id=virtio0",
        "-device", "virtio-rng-pci",
    ]
    if seed_iso is not None:
        argv += ["-drive", f"file={seed_iso},if=ide,index=2,media=cdrom,readonly=on,format=raw"]
    if tap is not None:
        argv += [
            "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,id=net0{',mac=' + mac if mac else ''}",
        ]
    else:
        argv += ["-nic", "none"]
    if serial_log is not None:
        argv += ["-chardev", f"file,id=serial0,path={serial_log}", "-serial", "chardev:serial0"]
    else:
        argv += ["-serial", "none"]
    if qmp_socket is not None:
        argv += ["-chardev", f"socket,id=qmp,path={qmp_socket},server=on,wait=off", "-mon", "chardev=qmp,mode=control"]
    if qga_socket is not None:
        argv += [
            "-chardev", f"socket,id=qga0,path={qga_socket},server=on,wait=off",
            "-device", "virtio-serial-pci,id=qga-bus",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
    argv += list(extra)
    return argv


# QEMU `sendkey`/QMP send-key names for printable ASCII.
_KEYS = {" ": "spc", "\n": "ret", "-": "minus", "=": "equal", ".": "dot", ",": "comma", "/": "slash",
         ";": "semicolon", "'": "apostrophe", "[": "bracket_left", "]": "bracket_right", "\\": "backslash",
         "`": "grave_accent", "\t": "tab"}
_SHIFTED = {"_": "minus", "+": "equal", ">": "dot", "<": "comma", "?": "slash", ":": "semicolon",
            '"': "apostrophe", "{": "bracket_left", "}": "bracket_right", "|": "backslash", "~": "grave_accent",
            "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0"}


def sendkey_names(text: str) -> list[list[str]]:
    """``text`` as QEMU key combos, e.g. ``"A\\n"`` -> ``[["shift", "a"], ["ret"]]``."""
    combos = []
    for ch in text:
        if ch.isascii() and (ch.islower() or ch.isdigit()):
            combos.append([ch])
        elif ch.isascii() and ch.isupper():
            combos.append(["shift", ch.lower()])
        elif ch in _KEYS:
            combos.append([_KEYS[ch]])
        elif ch in _SHIFTED:
            combos.append(["shift", _SHIFTED[ch]])
        else:
            raise ValueError(f"no key for {ch!r}")
    return combos


class _Qmp:
    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QemuError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": cmd}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QemuError(f"QMP {cmd}: {reply['error']}")
            return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Guest:
    """A running QEMU guest started by :meth:`launch`."""

    proc: subprocess.Popen
    workdir: Path
    overlay: Path
    serial_log: Path
    qmp_socket: Path
    qga_socket: Path
    mac: str | None
    argv: list[str]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def launch(
        cls,
        image,  # tests.testbed.images.ImageInfo
        workdir: Path | str,
        *,
        tap: str | None = None,
        mac: str | None = None,
        seed_iso: Path | None = None,
        disk_size: int | None = None,
        memory_mb: int = 768,
        cpus: int = 1,
        name: str | None = None,
        extra: Sequence[str] = (),
    ) -> "Guest":
        """Start ``image`` on a fresh qcow2 overlay (the cached image is never
        written).  ``disk_size`` enlarges the overlay, as a clone's resized disk.
        Call from inside the network namespace when ``tap`` is given."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        overlay = workdir / "disk.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk), str(overlay)]
        if disk_size:
            argv.append(str(disk_size))
        subprocess.run(argv, check=True, capture_output=True)
        serial_log = workdir / "serial.log"
        qmp_socket = workdir / "qmp.sock"
        qga_socket = workdir / "qga.sock"
        for p in (serial_log, qmp_socket, qga_socket):
            p.unlink(missing_ok=True)
        argv = qemu_argv(
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
            disk=overlay,
            seed_iso=seed_iso,
            tap=tap,
            mac=mac,
            serial_log=serial_log,
            qmp_socket=qmp_socket,
            qga_socket=qga_socket,
            memory_mb=memory_mb,
            cpus=cpus,
            name=name or workdir.name,
            extra=extra,
        )
        stderr = open(workdir / "qemu.stderr", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
        stderr.close()
        guest = cls(proc, workdir, overlay, serial_log, qmp_socket, qga_socket, mac, argv)
        deadline = time.monotonic() + 15
        while not qmp_socket.exists():
            if proc.poll() is not None:
                raise QemuError(f"QEMU exited ({proc.returncode}): {(workdir / 'qemu.stderr').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                guest.stop()
                raise QemuError("QEMU did not create its QMP socket")
            time.sleep(0.05)
        return guest

    # ------------------------------------------------------------- console
    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_serial(self, needle: str, timeout: float = 300) -> float:
        """Wait until ``needle`` appears on the serial console; seconds since launch."""
        deadline = time.monotonic() + timeout
        while needle not in self.serial_text():
            if self.proc.poll() is not None:
                raise QemuError(f"guest exited ({self.proc.returncode}) before {needle!r} on the serial console")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not on the serial console after {timeout:.0f}s")
            time.sleep(0.5)
        return time.monotonic() - self.started

    # ---------------------------------------------------------------- QMP
    def qmp(self, cmd: str, **arguments: Any) -> Any:
        q = _Qmp(self.qmp_socket)
        try:
            return q.execute(cmd, **arguments)
        finally:
            q.close()

    def sendkeys(self, text: str, *, delay: float = 0.05) -> None:
        """Type ``text`` on the guest's keyboard (what Proxmox ``sendkey`` does)."""
        q = _Qmp(self.qmp_socket)
        try:
            for combo in sendkey_names(text):
                q.execute("send-key", keys=[{"type": "qcode", "data": k} for k in combo])
                time.sleep(delay)
        finally:
            q.close()

    # ---------------------------------------------------------- guest agent
    def qga(self, cmd: str, timeout: float = 5.0, **arguments: Any) -> Any:
        """One guest-agent command over the virtio-serial chardev socket.
        Raises TimeoutError when no agent answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.qga_socket))
            # guest-sync-delimited flushes stale data; 0xff marks where its reply starts.
            sync_id = random.randrange(1, 2**31)
            sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")
            buf = b""
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError("guest agent did not answer guest-sync-delimited")
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    raise TimeoutError("guest agent did not answer") from None
                if not chunk:
                    raise QemuError("guest agent socket closed")
                buf += chunk
                if b"\xff" in buf:
                    tail = buf.split(b"\xff")[-1]
                    if b"\n" in tail:
                        reply = json.loads(tail.split(b"\n", 1)[0])
                        if reply.get("return") == sync_id:
                            buf = tail.split(b"\n", 1)[1]
                            break
            msg: dict[str, Any] = {"execute": cmd}
            if arguments:
                msg["arguments"] = arguments
            sock.sendall(json.dumps(msg).encode() + b"\n")
            while b"\n" not in buf:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    raise TimeoutError(f"guest agent did not answer {cmd}") from None
                if not chunk:
                    raise QemuError("guest agent socket closed")
                buf += chunk
            reply = json.loads(buf.split(b"\n", 1)[0])
            if "error" in reply:
                raise QemuError(f"guest agent {cmd}: {reply['error']}")
            return reply.get("return")
        finally:
            sock.close()

    # ------------------------------------------------------------ lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """Kill QEMU (the overlay is throw-away, no clean shutdown needed)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
