"""Namespaced guest network for the test bed.

Guests live on a Linux bridge (``vmbr0``, like a Proxmox node) inside a network
namespace that the test run creates and deletes.  The namespace has no uplink, so
nothing a guest sends can leave it.  ``dnsmasq`` (DHCP only, DNS disabled with
``--port=0``) runs inside the namespace, bound to the bridge, so a guest whose
cloud-init network config says ``dhcp`` gets an address.

Typical use::

    net = TestbedNetwork(netns="ngtest-1234")
    net.up()
    with net.enter():                 # this thread now lives in the namespace
        tap = net.add_tap("tap100i0") # QEMU: -netdev tap,ifname=tap100i0,script=no,downscript=no
        ...                           # sockets opened here connect to guests
    net.down()                        # raises TestbedNetworkError if anything survives

Everything here needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN).

CLI for hand use::

    python -m tests.testbed.net up|down|status [--netns NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tests.helpers.procs import pid_alive

__all__ = [
    "TestbedNetwork",
    "TestbedNetworkError",
    "orphaned_namespaces",
    "reap_orphaned",
    "setns_thread",
]

NETNS_RUN_DIR = Path("/run/netns")
DEFAULT_STATE_ROOT = Path("/run/nixgold-testbed")
#: ``<netns>.lock`` per namespace a :class:`TestbedNetwork` brought up, flock()ed by the process that
#: did for as long as it lives or until its down() (the kernel drops a dead process's locks): the
#: reaper leaves a namespace whose lock is held, also when the pid in its name is not one this PID
#: namespace can see (a run in a container, or another PID namespace, on the same machine).
OWNER_LOCK_DIR = DEFAULT_STATE_ROOT / "netns-owners"
_OWNED: dict[str, int] = {}  # netns -> the locked fd, for the namespaces this process owns
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15  # usable characters of a Linux interface name


class TestbedNetworkError(RuntimeError):
    """A network namespace operation failed or left something behind."""

    __test__ = False  # not a pytest test class


_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def setns_thread(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """``setns(2)`` for the *calling thread* (Python 3.11 has no ``os.setns``)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(fd={fd}, nstype={nstype:#x}): {os.strerror(err)}")


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise TestbedNetworkError(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr.strip()}"
        )
    return proc


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class TestbedNetwork:
    """A bridge + DHCP server inside a private network namespace.

    ``host_ip`` is the bridge's address (the "Proxmox node" side, also the DHCP
    router option); ``dhcp_range`` is the (first, last) address handed to guests.
    ``state_dir`` holds dnsmasq's pid, lease and log files; by default
    ``/run/nixgold-testbed/<netns>``.
    """

    __test__ = False  # not a pytest test class

    netns: str = "nixgold-testbed"
    bridge: str = "vmbr0"
    subnet: str = "10.99.0.0/24"
    host_ip: str = "10.99.0.1/24"
    dhcp_range: tuple[str, str] = ("10.99.0.100", "10.99.0.199")
    state_dir: Path = None  # type: ignore[assignment]  # filled in __post_init__
    lease_time: str = "12h"
    _taps: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.netns or "/" in self.netns or len(self.netns) > 64:
            raise ValueError(f"bad network namespace name {self.netns!r}")
        _check_ifname(self.bridge)
        net = ipaddress.ip_network(self.subnet)
        iface = ipaddress.ip_interface(self.host_ip)
        if iface.ip not in net:
            raise ValueError(f"host_ip {self.host_ip} is not in subnet {self.subnet}")
        if iface.network.prefixlen != net.prefixlen:
            # "10.99.0.1" without a prefix: take the subnet's.
            self.host_ip = f"{iface.ip}/{net.prefixlen}"
        self.dhcp_range = tuple(self.dhcp_range)  # type: ignore[assignment]
        for addr in self.dhcp_range:
            if ipaddress.ip_address(addr) not in net:
                raise ValueError(f"DHCP range address {addr} is not in subnet {self.subnet}")
        if self.state_dir is None:
            self.state_dir = DEFAULT_STATE_ROOT / self.netns
        self.state_dir = Path(self.state_dir)

    # ------------------------------------------------------------------ paths
    @property
    def host_address(self) -> str:
        """The bridge address without prefix, e.g. ``10.99.0.1``."""
        return str(ipaddress.ip_interface(self.host_ip).ip)

    @property
    def netns_path(self) -> Path:
        return NETNS_RUN_DIR / self.netns

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "dnsmasq.leases"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "dnsmasq.log"

    # ------------------------------------------------------------ primitives
    def exists(self) -> bool:
        """True when the namespace exists (``ip netns list`` would show it)."""
        return self.netns_path.exists()

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "-n", self.netns, *args], check=check)

    def link_exists(self, name: str) -> bool:
        return self._ip("link", "show", "dev", name, check=False).returncode == 0

    def links(self) -> dict[str, dict]:
        """Interfaces inside the namespace: name -> ``ip -j link`` record."""
        if not self.exists():
            return {}
        out = self._ip("-j", "-d", "link", "show").stdout
        return {rec["ifname"]: rec for rec in json.loads(out or "[]")}

    def taps(self) -> list[str]:
        """Names of the tap devices inside the namespace."""
        return sorted(
            name
            for name, rec in self.links().items()
            if rec.get("linkinfo", {}).get("info_kind") == "tun"
        )

    def dnsmasq_pid(self) -> int | None:
        """PID of our running dnsmasq, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and "dnsmasq" in _cmdline(pid) and str(self.state_dir) in _cmdline(pid):
            return pid
        return None

    # -------------------------------------------------------------- up/down
    def up(self) -> "TestbedNetwork":
        """Create namespace, bridge, host address and DHCP server (idempotent)."""
        if shutil.which("dnsmasq") is None:
            raise TestbedNetworkError("dnsmasq not found (Debian package dnsmasq-base)")
        self._claim()
        if not self.exists():
            _run(["ip", "netns", "add", self.netns])
        self._ip("link", "set", "dev", "lo", "up")
        if not self.link_exists(self.bridge):
            # STP off: ports forward at once (no 30 s listening/learning delay).
            self._ip("link", "add", "name", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        addrs = json.loads(self._ip("-j", "addr", "show", "dev", self.bridge).stdout or "[]")
        have = {f"{a['local']}/{a['prefixlen']}" for rec in addrs for a in rec.get("addr_info", [])}
        if self.host_ip not in have:
            self._ip("addr", "add", self.host_ip, "dev", self.bridge)
        self._ip("link", "set", "dev", self.bridge, "up")
        self._start_dnsmasq()
        return self

    def _claim(self, wait: float = 2.0) -> None:
        """Hold this namespace's owner lock (:data:`OWNER_LOCK_DIR`) while this process lives or until
        down(). Held by this process already: nothing to do; by another one: go on without it (the
        reaper's rule by pid still applies)."""
        if self.netns in _OWNED:
            return
        path = OWNER_LOCK_DIR / f"{self.netns}.lock"
        deadline = time.monotonic() + wait
        while True:
            try:
                OWNER_LOCK_DIR.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return  # no lock directory here: the rule by pid alone
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a file a down() unlinked meanwhile
                    _OWNED[self.netns] = fd
                    return
                os.close(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOENT) or time.monotonic() >= deadline:
                    return
            time.sleep(0.05)  # a reaper looking at it holds it for a moment

    def release(self) -> None:
        """Let go of the owner lock, if this process holds it (down() does; so does the process's end)."""
        fd = _OWNED.pop(self.netns, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                (OWNER_LOCK_DIR / f"{self.netns}.lock").unlink()
            os.close(fd)

    def _start_dnsmasq(self) -> None:
        if self.dnsmasq_pid() is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for f in (self.pid_file,):
            f.unlink(missing_ok=True)
        self.lease_file.touch()
        net = ipaddress.ip_network(self.subnet)
        argv = self.exec_argv(
            [
                "dnsmasq",
                "--conf-file=/dev/null",
                "--port=0",  # no DNS
                f"--interface={self.bridge}",
                "--bind-interfaces",
                "--except-interface=lo",
                f"--dhcp-range={self.dhcp_range[0]},{self.dhcp_range[1]},{net.netmask},{self.lease_time}",
                f"--dhcp-option=option:router,{self.host_address}",
                "--dhcp-authoritative",
                "--dhcp-rapid-commit",
                f"--dhcp-leasefile={self.lease_file}",
                f"--pid-file={self.pid_file}",
                f"--log-facility={self.log_file}",
                "--log-dhcp",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--group=root",
            ]
        )
        proc = _run(argv, check=False)
        if proc.returncode != 0:
            raise TestbedNetworkError(
                f"dnsmasq failed to start in netns {self.netns} (exit {proc.returncode}): "
                f"{proc.stderr.strip()}"
            )
        deadline = time.monotonic() + 10
        while self.dnsmasq_pid() is None:
            if time.monotonic() > deadline:
                raise TestbedNetworkError(f"dnsmasq did not come up; see {self.log_file}")
            time.sleep(0.05)

    def _stop_dnsmasq(self) -> None:
        pid = self.dnsmasq_pid()
        if pid is not None:
            _terminate([pid])
        self.pid_file.unlink(missing_ok=True)

    def _netns_inode(self) -> int | None:
        try:
            return os.stat(self.netns_path).st_ino
        except OSError:
            return None

    def ns_pids(self) -> list[int]:
        """PIDs of processes (any thread) living in the namespace, except our own."""
        ino = self._netns_inode()
        if ino is None:
            return []
        return [p for p in _pids_in_net_inode(ino) if p != os.getpid()]

    def down(self, *, kill_stragglers: bool = True) -> None:
        """Stop dnsmasq, delete the namespace (and with it bridge and taps), verify.

        Processes still living in the namespace (e.g. a QEMU that a crashed test
        left behind) are terminated when ``kill_stragglers`` is true; otherwise
        their presence is an error.  Raises :class:`TestbedNetworkError` naming
        whatever survives.  Calling ``down`` on a network that is not up is fine.
        """
        dnsmasq_pid = self.dnsmasq_pid()
        taps_before = set(self._taps) | set(self.taps())
        self._stop_dnsmasq()
        # Hold the namespace open until the checks below are done: once nothing holds it, the kernel
        # frees its inode number and the next namespace made on the machine (another worker's bed) may
        # get the same one; the checks would then find that namespace's processes as ours.
        try:
            held = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            held = None
        try:
            ino = os.fstat(held).st_ino if held is not None else self._netns_inode()
            stragglers = self.ns_pids()
            if stragglers:
                if not kill_stragglers:
                    desc = ", ".join(f"{p} ({_cmdline(p)[:80]})" for p in stragglers)
                    raise TestbedNetworkError(f"processes still in netns {self.netns}: {desc}")
                _terminate(stragglers)
            if self.exists():
                proc = _run(["ip", "netns", "delete", self.netns], check=False)
                if proc.returncode != 0 and self.exists():
                    raise TestbedNetworkError(f"cannot delete netns {self.netns}: {proc.stderr.strip()}")
            self._taps.clear()
            problems = []
            if self.exists():
                problems.append(f"namespace {self.netns} still exists")
            if dnsmasq_pid is not None and pid_alive(dnsmasq_pid):
                problems.append(f"dnsmasq pid {dnsmasq_pid} still running")
            if ino is not None:
                left = [p for p in _pids_in_net_inode(ino) if p != os.getpid()]
                if left:
                    problems.append(
                        "processes still in the (deleted) namespace: "
                        + ", ".join(f"{p} ({_cmdline(p)[:80]})" for p in left)
                    )
                threads = own_threads_in_net_inode(ino)
                if threads:
                    problems.append("threads of this process still inside the namespace (an unbalanced enter(), or "
                                    "threads started inside it that still run): " + "; ".join(threads.values()))
        finally:
            if held is not None:
                os.close(held)
        # Taps live and die with the namespace; one in the host namespace would be a leak.
        root_taps = [t for t in _root_ns_links() if t in taps_before]
        if root_taps:
            problems.append(f"interfaces leaked into the host namespace: {root_taps}")
        if not self.exists():  # nothing left to own (whatever else is wrong is said below)
            self.release()
            if not owner_lock_held(self.netns):  # brought up by a process that is gone (the CLI's `up`)
                with contextlib.suppress(OSError):
                    (OWNER_LOCK_DIR / f"{self.netns}.lock").unlink()
        if problems:
            raise TestbedNetworkError(f"testbed network {self.netns} not cleanly down: " + "; ".join(problems))
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # ------------------------------------------------------------------ taps
    def add_tap(self, name: str) -> str:
        """Create tap ``name`` in the namespace, enslave it to the bridge, bring it up."""
        _check_ifname(name)
        if not self.exists():
            raise TestbedNetworkError(f"netns {self.netns} does not exist; call up() first")
        if not self.link_exists(name):
            self._ip("tuntap", "add", "dev", name, "mode", "tap")
        self._ip("link", "set", "dev", name, "master", self.bridge)
        self._ip("link", "set", "dev", name, "up")
        self._taps.add(name)
        return name

    def remove_tap(self, name: str) -> None:
        """Delete tap ``name`` (no error if it is already gone)."""
        _check_ifname(name)
        self._taps.discard(name)
        if self.exists() and self.link_exists(name):
            self._ip("link", "delete", "dev", name)

    # ---------------------------------------------------------------- enter
    @contextlib.contextmanager
    def enter(self) -> Iterator["TestbedNetwork"]:
        """Move the *current thread* into the namespace; restore on exit.

        Sockets created (and subprocesses started) by this thread while inside
        belong to the namespace; an open socket keeps its namespace after exit.
        Other threads are unaffected, but threads *started* inside inherit the
        namespace and keep it (``down()`` reports such threads of this process).
        """
        if not self.exists():
            raise TestbedNetworkError(f"netns {self.netns} does not exist; call up() first")
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns_thread(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                setns_thread(orig)
        finally:
            os.close(orig)

    # --------------------------------------------------------------- leases
    def leases(self) -> dict[str, str]:
        """dnsmasq's current leases: MAC (lower case) -> IPv4 address."""
        out: dict[str, str] = {}
        try:
            text = self.lease_file.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            parts = line.split()
            # <expiry> <mac> <ip> <hostname|*> <client-id|*>
            if len(parts) >= 3 and ":" in parts[1] and "." in parts[2]:
                out[parts[1].lower()] = parts[2]
        return out

    def wait_for_lease(self, mac: str, timeout: float = 120, poll: float = 0.5) -> str:
        """Block until ``mac`` has a DHCP lease; return its address."""
        mac = mac.lower()
        deadline = time.monotonic() + timeout
        while True:
            ip = self.leases().get(mac)
            if ip:
                return ip
            if time.monotonic() > deadline:
                raise TimeoutError(f"no DHCP lease for {mac} in netns {self.netns} after {timeout:.0f}s")
            time.sleep(poll)

    def status(self) -> dict:
        """A JSON-able summary (for the CLI and debugging)."""
        links = self.links()
        bridge = links.get(self.bridge)
        return {
            "netns": self.netns,
            "exists": self.exists(),
            "bridge": self.bridge if bridge else None,
            "bridge_up": bool(bridge and "UP" in bridge.get("flags", [])),
            "host_ip": self.host_ip,
            "dhcp_range": list(self.dhcp_range),
            "dnsmasq_pid": self.dnsmasq_pid(),
            "taps": self.taps(),
            "leases": self.leases(),
            "state_dir": str(self.state_dir),
            "pids_in_ns": self.ns_pids(),
        }


# ---------------------------------------------------------------- helpers
def orphaned_namespaces(prefix: str) -> list[str]:
    """The namespaces named ``<prefix><pid>`` (or ``<prefix><pid>-<tag>``) whose process is gone: a
    test run that died (OOM, a hard timeout, a killed xdist worker) without taking its bed down. Its
    guests and dnsmasq may still run in there, eating the CPU of every later run on the machine. A
    namespace whose pid is alive belongs to a running session (or the pid was reused): it is never
    listed. Pids are this PID namespace's: a session in another one would look dead here, so a
    namespace whose owner lock is held (:data:`OWNER_LOCK_DIR`) is not listed either."""
    if not NETNS_RUN_DIR.is_dir():
        return []
    found = []
    for path in sorted(NETNS_RUN_DIR.iterdir()):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)(?:-[\w-]+)?", path.name)
        if m and not pid_alive(int(m.group(1))) and not owner_lock_held(path.name):
            found.append(path.name)
    return found


def owner_lock_held(netns: str) -> bool:
    """Whether a live process holds ``netns``'s owner lock (a moment's shared lock tells). When that
    cannot be told (the file cannot be opened or locked for another reason than that), say held: the
    reaper then leaves the namespace to the rule by pid's next look, rather than take a live one."""
    try:
        fd = os.open(OWNER_LOCK_DIR / f"{netns}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (drops the shared lock, if it was taken)
    return False


def reap_orphaned(prefix: str) -> dict[str, str]:
    """Take down every :func:`orphaned_namespaces` namespace of ``prefix`` with whatever still runs
    inside (:meth:`TestbedNetwork.down`): name -> "" when it went, else why not (each on its own)."""
    outcome = {}
    for name in orphaned_namespaces(prefix):
        try:
            TestbedNetwork(netns=name).down(kill_stragglers=True)  # (removes its owner lock file)
            outcome[name] = ""
        except Exception as exc:  # noqa: BLE001 - one namespace's trouble must not keep the others
            outcome[name] = f"{type(exc).__name__}: {exc}"
    return outcome


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or any(c in name for c in "/ \t\n:") or name in (".", ".."):
        raise ValueError(f"bad interface name {name!r} (1-{IFNAMSIZ} chars, no '/', ':' or spaces)")


def _pids_in_net_inode(ino: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _thread_in_net_inode(int(entry.name), ino):
            pids.append(int(entry.name))
    return pids


def _thread_in_net_inode(pid: int, ino: int) -> bool:
    return bool(_tids_in_net_inode(pid, ino))


def _tids_in_net_inode(pid: int, ino: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    tids = []
    for task in tasks:
        try:
            if os.stat(task / "ns" / "net").st_ino == ino:
                tids.append(int(task.name))
        except (OSError, ValueError):
            continue
    return tids


def own_threads_in_net_inode(ino: int, grace: float = 5.0, *, skip: frozenset[int] = frozenset()) -> dict[int, str]:
    """Threads of this process inside the namespace with inode ``ino`` (native thread id -> what it
    is), but those in ``skip``, after up to ``grace`` seconds for them to end (paramiko's transport
    threads end a moment after their client is closed); each described by its Python name and where
    it is (the innermost frames), so the leak can be found."""
    deadline = time.monotonic() + grace
    while True:
        tids = [t for t in _tids_in_net_inode(os.getpid(), ino) if t not in skip]
        if not tids or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    by_tid = {t.native_id: t for t in threading.enumerate()}
    frames = sys._current_frames()  # noqa: SLF001 - diagnostics only
    out = {}
    for tid in tids:
        thread = by_tid.get(tid)
        if thread is None:
            out[tid] = f"native thread {tid} (not a Python thread)"
            continue
        where = traceback.extract_stack(frames[thread.ident])[-4:] if thread.ident in frames else []
        out[tid] = (f"thread {thread.name!r} (daemon={thread.daemon}) at "
                    + " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(where)))
    return out


def _root_ns_links() -> list[str]:
    proc = _run(["ip", "-j", "link", "show"], check=False)
    try:
        return [rec["ifname"] for rec in json.loads(proc.stdout or "[]")]
    except ValueError:
        return []


def _terminate(pids: Sequence[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


# -------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.net", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--netns", default=TestbedNetwork.netns)
    parser.add_argument("--bridge", default=TestbedNetwork.bridge)
    args = parser.parse_args(argv)
    net = TestbedNetwork(netns=args.netns, bridge=args.bridge)
    try:
        if args.action == "up":
            net.up()
        elif args.action == "down":
            net.down()
            print(f"netns {net.netns} is down")
            return 0
    except TestbedNetworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(net.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
