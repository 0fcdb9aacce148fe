"""The nixgold test bed: namespace + bridge + DHCP, the PVE simulator, a template.

    bed = Testbed()                      # state under <repo>/.testbed, netns nixgold-testbed
    bed.up()                             # network, simulator, stand-in image as template 9004
    with bed.enter():                    # this thread now lives in the namespace
        prox = bed.proxmoxer()           # plain proxmoxer, token auth, CA-verified
        prox.nodes(bed.node).qemu(9004).config.get()
    bed.down()                           # guests, simulator, namespace: nothing survives

``up()`` writes ``<root>/env`` (``PROXMOX_URL``, ``PROXMOX_TOKEN_ID``,
``PROXMOX_TOKEN_SECRET``, ``PROXMOX_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE``,
``NIXGOLD_CONFIG``) and ``<root>/nixgold.toml``.  The simulator runs as its own
process inside the namespace (``ip netns exec``) and keeps running after the
process that called ``up()`` exits, so the bed can be used by hand.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.helpers.procs import pid_alive

from .net import TestbedNetwork, TestbedNetworkError
from .pvesim.client import SimAdmin, SimAdminError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".testbed"
TEMPLATE_VMID = 9004
TOKEN_USER = "nixgold@pve"
TOKEN_NAME = "testbed"


class TestbedError(RuntimeError):
    __test__ = False


def default_manifest(vmid: int, name: str, variant: str, recipe_hash: str | None) -> dict[str, Any]:
    """A build manifest shaped like the one nixgold's Packer build stores as the description."""
    try:
        from nixgold import __version__ as version
    except Exception:  # pragma: no cover - the product package is optional for the bed
        version = "0.0.0"
    return {
        "nixgold_manifest": 1,
        "nixgold_version": version,
        "config_sha256": "0" * 64,
        "nixos_release": "stand-in",
        "template_vmid": vmid,
        "template_name": name,
        "dialect": "testbed",
        "firmware": "bios",
        "iso": {},
        "build_id": f"testbed-{variant}-{recipe_hash or 'unknown'}",
        "git_commit": None,
        "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": f"stand-in Debian 12 cloud image (variant {variant}) imported by tests/testbed",
    }


@dataclass
class GuestInfo:
    """A clone booted by :meth:`Testbed.boot_clone`."""

    vmid: int
    name: str
    ip: str
    mac: str
    user: str
    seconds_to_agent: float
    seconds_to_ssh: float | None = None


@dataclass
class Testbed:
    """One test bed.  Pytest uses a unique ``netns`` (``ngbed-<pid>``) and a tmp ``root``."""

    __test__ = False

    root: Path = DEFAULT_ROOT
    netns: str = "nixgold-testbed"
    node: str = "pve"
    storage: str = "local"
    bridge: str = "vmbr0"
    subnet: str = "10.99.0.0/24"
    host_ip: str = "10.99.0.1/24"
    dhcp_range: tuple[str, str] = ("10.99.0.100", "10.99.0.199")
    port: int = 8006
    template_vmid: int = TEMPLATE_VMID
    template_name: str = "nixgold-testbed-good"
    image_variant: str = "good"
    image_cache: Path | None = None
    description: str | None = None  # template description; default: a JSON build manifest
    token_user: str = TOKEN_USER
    token_name: str = TOKEN_NAME
    unauth_delay: float = 3.0
    guest_memory: int = 1024
    guest_cores: int = 1
    log_fn: Callable[[str], None] = field(default=print, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.net = TestbedNetwork(netns=self.netns, bridge=self.bridge, subnet=self.subnet, host_ip=self.host_ip,
                                  dhcp_range=tuple(self.dhcp_range), state_dir=self.root / "net")
        self._secrets: dict[str, str] | None = None

    # ------------------------------------------------------------ locations
    @property
    def sim_dir(self) -> Path:
        return self.root / "pvesim"

    @property
    def host(self) -> str:
        return self.net.host_address

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/api2/json"

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def env_path(self) -> Path:
        return self.root / "env"

    @property
    def config_path(self) -> Path:
        return self.root / "nixgold.toml"

    @property
    def token_id(self) -> str:
        return f"{self.token_user}!{self.token_name}"

    @property
    def secrets(self) -> dict[str, str]:
        if self._secrets is None:
            path = self.root / "secrets.json"
            if path.exists():
                self._secrets = json.loads(path.read_text())
            else:
                self._secrets = {"token": str(uuid.uuid4()), "root_password": secrets.token_urlsafe(18),
                                 "user_password": secrets.token_urlsafe(18), "sim_admin": secrets.token_urlsafe(24)}
                self.root.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(self._secrets))
                path.chmod(0o600)
        return self._secrets

    @property
    def token_secret(self) -> str:
        return self.secrets["token"]

    @property
    def root_password(self) -> str:
        return self.secrets["root_password"]

    @property
    def user_password(self) -> str:
        return self.secrets["user_password"]

    @property
    def sim_admin(self) -> SimAdmin:
        return SimAdmin(self.base_url, self.secrets["sim_admin"], str(self.ca_path))

    # ------------------------------------------------------------ namespace
    @contextlib.contextmanager
    def enter(self) -> Iterator["Testbed"]:
        """Run the current thread inside the namespace (sockets opened here reach guests)."""
        with self.net.enter():
            yield self

    def proxmoxer(self, **kwargs: Any) -> Any:
        """A plain ``ProxmoxAPI`` with the bed's API token (use inside :meth:`enter`)."""
        from proxmoxer import ProxmoxAPI

        opts = {"user": self.token_user, "token_name": self.token_name, "token_value": self.token_secret,
                "verify_ssl": str(self.ca_path), "timeout": 30}
        opts.update(kwargs)
        return ProxmoxAPI(f"{self.host}:{self.port}", **opts)

    def root_api(self) -> Any:
        """``root@pam`` via ticket login (``args`` can only be set by root@pam with a ticket)."""
        from proxmoxer import ProxmoxAPI

        return ProxmoxAPI(f"{self.host}:{self.port}", user="root@pam", password=self.root_password,
                          verify_ssl=str(self.ca_path), timeout=60)

    # ------------------------------------------------------------- simulator
    def _sim_pid(self) -> int | None:
        try:
            pid = int((self.root / "pvesim.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _sim_config(self) -> dict[str, Any]:
        s = self.secrets
        return {
            "state_dir": str(self.sim_dir),
            "node": self.node,
            "listen": self.host,
            "port": self.port,
            "hostnames": [self.node, f"{self.node}.testbed"],
            "storages": [{"id": self.storage, "path": str(self.sim_dir / "storage" / self.storage),
                          "content": ["images", "iso", "snippets", "vztmpl", "import", "backup", "rootdir"]}],
            "bridges": [self.bridge],
            "access": {
                "users": {"root@pam": {"password": s["root_password"]},
                          self.token_user: {"password": s["user_password"]}},
                "tokens": {self.token_id: {"secret": s["token"], "privsep": True}},
                "acl": [{"path": "/", "ugid": self.token_user, "roleid": "Administrator"},
                        {"path": "/", "ugid": self.token_id, "roleid": "Administrator"}],
            },
            "sim_admin_secret": s["sim_admin"],
            "unauth_delay": self.unauth_delay,
            "dns": {"nameservers": [self.host], "search": ["testbed"]},
        }

    def _start_simulator(self) -> None:
        if self._sim_pid() is not None:
            return
        shutil.rmtree(self.sim_dir, ignore_errors=True)
        self.sim_dir.mkdir(parents=True)
        cfg = self.root / "pvesim.json"
        cfg.write_text(json.dumps(self._sim_config(), indent=1))
        cfg.chmod(0o600)
        out = (self.root / "pvesim.out").open("ab")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = self.net.exec_argv([sys.executable, "-m", "tests.testbed.pvesim", "--config", str(cfg)])
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        out.close()
        (self.root / "pvesim.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 60
        ca = self.sim_dir / "ca.pem"
        while True:
            if proc.poll() is not None:
                tail = (self.root / "pvesim.out").read_text(errors="replace")[-3000:]
                raise TestbedError(f"simulator exited with {proc.returncode}:\n{tail}")
            if ca.exists():
                shutil.copyfile(ca, self.ca_path)
                try:
                    with self.enter():
                        self.sim_admin.health()
                    break
                except (SimAdminError, OSError) as exc:
                    last = exc
            if time.monotonic() > deadline:
                raise TestbedError(f"simulator did not answer within 60 s ({last if ca.exists() else 'no CA yet'})")
            time.sleep(0.1)
        self.log_fn(f"testbed: simulator pid {proc.pid} listening on {self.url}")

    def _stop_simulator(self, timeout: float = 45.0) -> None:
        pid = self._sim_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            log.warning("simulator pid %s ignored SIGTERM; killing it", pid)
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        (self.root / "pvesim.pid").unlink(missing_ok=True)

    # -------------------------------------------------------------- up/down
    def up(self, *, template: bool = True) -> "Testbed":
        """Namespace, bridge, DHCP, simulator, and (``template``) the stand-in image as the template."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.net.up()
        self._start_simulator()
        if template:
            with self.enter():
                exists = self._vm_exists(self.template_vmid)
            if not exists:
                self.import_variant(self.image_variant, self.template_vmid, name=self.template_name,
                                    description=self.description)
        self.write_env()
        return self

    def down(self) -> None:
        """Stop every guest and the simulator, delete the namespace; raise if anything survives."""
        self._stop_simulator()
        problems = [f"QEMU pid {pid} ({cmd[:100]})" for pid, cmd in self.leftover_qemu()]
        try:
            self.net.down(kill_stragglers=True)
        except TestbedNetworkError as exc:
            problems.append(str(exc))
        if problems:
            raise TestbedError("test bed not cleanly down: " + "; ".join(problems))

    def leftover_qemu(self) -> list[tuple[int, str]]:
        """QEMU processes started for this bed that are still alive."""
        out = []
        marker = str(self.sim_dir)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and marker in cmd and pid_alive(int(entry.name)):
                out.append((int(entry.name), cmd))
        return out

    def is_up(self) -> bool:
        return self.net.exists() and self._sim_pid() is not None

    # -------------------------------------------------------------- images
    def _vm_exists(self, vmid: int) -> bool:
        prox = self.proxmoxer()
        return any(int(vm["vmid"]) == vmid for vm in prox.nodes(self.node).qemu.get())

    def _wait(self, prox: Any, upid: str, timeout: float = 600) -> dict[str, Any]:
        from proxmoxer.tools import Tasks

        status = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.2)
        if status is None:
            raise TestbedError(f"task {upid} did not finish within {timeout} s")
        if status.get("exitstatus") != "OK":
            log_lines = prox.nodes(self.node).tasks(upid).log.get(limit=0)
            raise TestbedError(f"task {upid} failed: {status.get('exitstatus')}\n"
                               + "\n".join(line["t"] for line in log_lines))
        return status

    def all_vms(self) -> list[dict[str, Any]]:
        """Every VM of the cluster (``cluster/resources``; use inside :meth:`enter`)."""
        return self.proxmoxer().cluster.resources.get(type="vm")

    def destroy_vm(self, vmid: int) -> None:
        """Stop (if running) and purge a VM as root; nothing if it does not exist (use inside
        :meth:`enter`). For tests cleaning up after themselves."""
        if not self._vm_exists(vmid):
            return
        prox = self.root_api()
        vm = prox.nodes(self.node).qemu(vmid)
        if vm.status.current.get().get("status") != "stopped":
            self._wait(prox, vm.status.stop.post(), 120)
        self._wait(prox, vm.delete(purge=1, **{"destroy-unreferenced-disks": 1}), 120)

    def import_variant(self, variant: str, vmid: int, *, name: str | None = None,
                       description: str | None = None) -> int:
        from .images import build_image

        info = build_image(variant, cache_dir=self.image_cache, log=self.log_fn)
        return self.import_image(info, vmid, name=name or f"nixgold-testbed-{variant}", description=description)

    def import_image(self, image_or_qcow2: Any, vmid: int, kernel: str | Path | None = None,
                     initrd: str | Path | None = None, cmdline: str | None = None, *, name: str | None = None,
                     description: str | None = None, template: bool = True) -> int:
        """Create VM ``vmid`` from a stand-in image (``ImageInfo``) or a qcow2 file and make it a template.

        The disk is imported into the storage (``scsi0: <storage>:0,import-from=...``), the kernel and
        initrd are copied under ``<root>/kernels/<vmid>/`` and booted directly via ``args``; the VM
        gets the agent, a serial socket, a cloud-init drive on ide2 and ``net0`` on the bridge.
        """
        recipe = None
        variant = "custom"
        if hasattr(image_or_qcow2, "disk"):
            info = image_or_qcow2
            disk = Path(info.disk)
            kernel = kernel or info.kernel
            initrd = initrd or info.initrd
            cmdline = cmdline or info.cmdline
            recipe = getattr(info, "recipe_hash", None)
            variant = getattr(info, "variant", variant)
        else:
            disk = Path(image_or_qcow2)
        if not disk.exists():
            raise TestbedError(f"image {disk} does not exist")
        name = name or f"imported-{vmid}"
        args = ""
        if kernel:
            kdir = self.root / "kernels" / str(vmid)
            kdir.mkdir(parents=True, exist_ok=True)
            kpath = kdir / "vmlinuz"
            shutil.copyfile(kernel, kpath)
            args = f"-kernel {shlex.quote(str(kpath))}"
            if initrd:
                ipath = kdir / "initrd.img"
                shutil.copyfile(initrd, ipath)
                args += f" -initrd {shlex.quote(str(ipath))}"
            if cmdline:
                args += f" -append {shlex.quote(cmdline)}"
        if description is None:
            description = json.dumps(default_manifest(vmid, name, variant, recipe), indent=1)
        params: dict[str, Any] = {
            "vmid": vmid, "name": name, "ostype": "l26", "memory": self.guest_memory, "cores": self.guest_cores,
            "sockets": 1, "cpu": "x86-64-v2-AES", "scsihw": "virtio-scsi-single",
            "scsi0": f"{self.storage}:0,import-from={disk},format=qcow2",
            "ide2": f"{self.storage}:cloudinit", "net0": f"virtio,bridge={self.bridge}",
            "agent": "1", "serial0": "socket", "boot": "order=scsi0", "rng0": "source=/dev/urandom",
            "ipconfig0": "ip=dhcp", "ciupgrade": 0, "description": description,
            "tags": "nixgold;testbed",
        }
        if args:
            params["args"] = args
        with self.enter():
            prox = self.root_api()
            self._wait(prox, prox.nodes(self.node).qemu.post(**params))
            if template:
                self._wait(prox, prox.nodes(self.node).qemu(vmid).template.post())
        self.log_fn(f"testbed: imported {disk.name} as {'template' if template else 'VM'} {vmid} ({name})")
        return vmid

    # ------------------------------------------------------------- guests
    def boot_clone(self, newid: int, *, name: str, user: str, ssh_pubkey: str, source: int | None = None,
                   full: bool = False, timeout: float = 600, wait_ssh: bool = True) -> GuestInfo:
        """Clone ``source`` (the template), set cloud-init user + key, start it, wait for the agent
        to report an IPv4 on eth0 and (``wait_ssh``) for port 22.  Call inside :meth:`enter`."""
        import socket
        from urllib.parse import quote

        from proxmoxer import ResourceException

        prox = self.proxmoxer()
        node = prox.nodes(self.node)
        t0 = time.monotonic()
        self._wait(prox, node.qemu(source or self.template_vmid).clone.post(newid=newid, name=name,
                                                                               full=int(full)))
        node.qemu(newid).config.put(ciuser=user, sshkeys=quote(ssh_pubkey.strip() + "\n", safe=""))
        self._wait(prox, node.qemu(newid).status.start.post())
        mac = ""
        ip = ""
        while not ip:
            if time.monotonic() - t0 > timeout:
                raise TestbedError(f"VM {newid}: no IPv4 from the guest agent within {timeout} s")
            try:
                for iface in node.qemu(newid).agent("network-get-interfaces").get()["result"]:
                    if iface.get("name") == "lo":
                        continue
                    for addr in iface.get("ip-addresses") or []:
                        if addr.get("ip-address-type") == "ipv4" and not addr["ip-address"].startswith("127."):
                            ip, mac = addr["ip-address"], iface.get("hardware-address", "")
            except ResourceException:
                pass
            if not ip:
                time.sleep(1)
        info = GuestInfo(newid, name, ip, mac, user, round(time.monotonic() - t0, 1))
        while wait_ssh:
            try:
                with socket.create_connection((ip, 22), timeout=3) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        info.seconds_to_ssh = round(time.monotonic() - t0, 1)
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TestbedError(f"VM {newid}: no SSH on {ip}:22 within {timeout} s")
            time.sleep(1)
        return info

    # ----------------------------------------------------------------- env
    def env(self) -> dict[str, str]:
        return {
            "PROXMOX_URL": self.url,
            "PROXMOX_TOKEN_ID": self.token_id,
            "PROXMOX_TOKEN_SECRET": self.token_secret,
            "PROXMOX_CA_BUNDLE": str(self.ca_path),
            "REQUESTS_CA_BUNDLE": str(self.ca_path),
            "NIXGOLD_CONFIG": str(self.config_path),
        }

    def write_env(self) -> Path:
        self.config_path.write_text(
            "# nixgold config for the local test bed (written by tests/testbed/bed.py)\n"
            "[proxmox]\n"
            f"node = \"{self.node}\"\n"
            f"url = \"{self.url}\"\n"
            f"token_id = \"{self.token_id}\"\n"
            f"ca_bundle = \"{self.ca_path}\"\n"
            "\n[vm]\n"
            f"storage = \"{self.storage}\"\n"
            f"bridge = \"{self.bridge}\"\n"
            "\n[template]\n"
            f"vmid = {self.template_vmid}\n"
            f"name = \"{self.template_name}\"\n"
        )
        lines = [f"{k}={shlex.quote(v)}" for k, v in self.env().items()]
        self.env_path.write_text("# source with: set -a; . .testbed/env\n" + "\n".join(lines) + "\n")
        self.env_path.chmod(0o600)
        return self.env_path

    def usage(self) -> str:
        env = os.path.relpath(self.env_path, Path.cwd()) if self.env_path.is_relative_to(Path.cwd()) else self.env_path
        return (f"set -a; . {env}; ip netns exec {self.netns} invoke verify --vmid {self.template_vmid} "
                f"--profile generic")
