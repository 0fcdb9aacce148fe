"""The test bed's namespaced guest network (tests/testbed/net.py).  Needs root (CI is)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.testbed.net import TestbedNetwork, TestbedNetworkError, orphaned_namespaces, reap_orphaned

# Distinct from the 10.99.0.0/24 default so a hand-started nixgold-testbed
# network and this test can coexist (they are in different namespaces anyway).
SUBNET = "10.98.0.0/24"


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {rec["ifname"] for rec in json.loads(out)}


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def net(tmp_path):
    n = TestbedNetwork(
        netns=f"ngtest-{os.getpid()}",
        subnet=SUBNET,
        host_ip="10.98.0.1/24",
        dhcp_range=("10.98.0.50", "10.98.0.60"),
        state_dir=tmp_path / "state",
    )
    yield n
    if n.exists():
        n.down()


def test_up_creates_bridge_dnsmasq_and_taps(net):
    host_before = _host_links()
    assert not net.exists()
    net.up()
    assert net.exists()
    assert net.netns in _netns_list()

    # Bridge inside the namespace, up, with the host address.
    addr = subprocess.run(
        net.exec_argv(["ip", "-j", "addr", "show", "dev", "vmbr0"]), capture_output=True, text=True, check=True
    )
    (rec,) = json.loads(addr.stdout)
    assert "UP" in rec["flags"]
    assert {(a["local"], a["prefixlen"]) for a in rec["addr_info"]} >= {("10.98.0.1", 24)}
    assert net.links()["lo"]["operstate"] in ("UNKNOWN", "UP")

    # dnsmasq: running, ours, inside the namespace, DHCP only.
    pid = net.dnsmasq_pid()
    assert pid is not None
    assert pid in net.ns_pids()
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--port=0" in cmd and b"--interface=vmbr0" in cmd

    # Idempotent.
    net.up()
    assert net.dnsmasq_pid() == pid

    tap = net.add_tap("ngtap0")
    assert tap == "ngtap0"
    links = net.links()
    assert links["ngtap0"]["master"] == "vmbr0"
    assert "UP" in links["ngtap0"]["flags"]
    assert net.taps() == ["ngtap0"]
    assert net.add_tap("ngtap0") == "ngtap0"  # idempotent too
    net.add_tap("ngtap1")
    net.remove_tap("ngtap1")
    net.remove_tap("ngtap1")  # already gone: fine
    assert net.taps() == ["ngtap0"]

    # Nothing appeared in the host namespace.
    assert _host_links() - host_before == set()
    assert net.leases() == {}
    status = net.status()
    assert status["bridge_up"] and status["dnsmasq_pid"] == pid and status["taps"] == ["ngtap0"]


def test_enter_switches_only_the_current_thread(net):
    net.up()
    outside_ino = os.stat("/proc/thread-self/ns/net").st_ino
    with net.enter():
        inside_ino = os.stat("/proc/thread-self/ns/net").st_ino
        assert inside_ino == os.stat(net.netns_path).st_ino != outside_ino
        names = {name for _, name in socket.if_nameindex()}
        assert "vmbr0" in names
        # A socket opened in here can bind the bridge address.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("10.98.0.1", 0))
        s.close()
        # Subprocesses inherit the thread's namespace.
        out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
        assert "vmbr0" in {rec["ifname"] for rec in json.loads(out)}
        # Other threads stay outside.
        seen = {}
        t = threading.Thread(target=lambda: seen.update(ino=os.stat("/proc/thread-self/ns/net").st_ino))
        t.start()
        t.join()
        # A new thread inherits the creator's namespace on Linux...
        assert seen["ino"] == inside_ino
    # ...and after exit this thread is back outside.
    assert os.stat("/proc/thread-self/ns/net").st_ino == outside_ino
    assert "vmbr0" not in {name for _, name in socket.if_nameindex()} or "vmbr0" in _host_links()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        s.bind(("10.98.0.1", 0))
    s.close()


def test_down_leaves_nothing(net):
    import tests.testbed.net as netmod

    net.up()
    net.add_tap("ngtap0")
    pid = net.dnsmasq_pid()
    lock = netmod.OWNER_LOCK_DIR / f"{net.netns}.lock"
    assert net.netns in netmod._OWNED and netmod.owner_lock_held(net.netns)
    lock_id = (os.stat(lock).st_dev, os.stat(lock).st_ino)
    for fd in os.listdir(f"/proc/{pid}/fd"):  # not inherited (O_CLOEXEC; subprocess closes fds too): a child
        # outliving us keeps no lock
        with contextlib.suppress(OSError):
            target = os.stat(f"/proc/{pid}/fd/{fd}")
            assert (target.st_dev, target.st_ino) != lock_id, "dnsmasq holds the owner lock"
    ino = os.stat(net.netns_path).st_ino
    # A straggler process inside the namespace (like a QEMU left by a crashed test).
    straggler = subprocess.Popen(net.exec_argv(["sleep", "600"]))
    try:
        net.down()
    finally:
        straggler.poll() is None and straggler.kill()
        straggler.wait()
    assert not net.exists()
    assert net.netns not in _netns_list()
    assert net.netns not in netmod._OWNED and not lock.exists()
    assert _gone(pid)
    assert straggler.returncode is not None
    assert "ngtap0" not in _host_links()
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and not _gone(int(p.name)):
            try:
                assert os.stat(p / "ns" / "net").st_ino != ino, f"pid {p.name} still in the namespace"
            except OSError:  # gone meanwhile, or not ours to look at (pid 1 here)
                pass
    net.down()  # already down: no error


def test_down_holds_the_namespace_until_its_checks_are_done(net, monkeypatch):
    """Once `ip netns delete` has run and nothing holds the namespace, the kernel frees its inode number
    and hands it to the next namespace made on the machine (another worker's bed; seen here: the same
    number back within five add/delete rounds). down() keeps the namespace open until it has looked for
    processes left in it, so that scan cannot find another namespace's processes as ours."""
    import tests.testbed.net as netmod

    net.up()
    st = os.stat(net.netns_path)
    ns = (st.st_dev, st.st_ino)
    held_at_scan = []
    real = netmod._pids_in_net_inode

    def spy(ino: int) -> list[int]:
        if ino == ns[1] and not net.exists():  # the scan after the delete
            fds = []
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    target = os.stat(f"/proc/self/fd/{fd}")
                    fds.append((target.st_dev, target.st_ino))
            held_at_scan.append(ns in fds)
        return real(ino)

    monkeypatch.setattr(netmod, "_pids_in_net_inode", spy)
    net.down()
    assert held_at_scan == [True]
    after = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.stat(f"/proc/self/fd/{fd}")
            after.append((target.st_dev, target.st_ino))
    assert ns not in after  # and let go after


def test_down_refuses_to_leave_stragglers_silently(net):
    net.up()
    straggler = subprocess.Popen(net.exec_argv(["sleep", "600"]))
    try:
        with pytest.raises(TestbedNetworkError, match="processes still in netns"):
            net.down(kill_stragglers=False)
    finally:
        straggler.kill()
        straggler.wait()
    net.down()
    assert not net.exists()


def test_a_dead_runs_network_and_what_runs_in_it_are_taken_down_a_live_ones_not(tmp_path):
    """A worker killed before its teardown leaves its namespace with dnsmasq and guests inside; the
    next run takes it down. The namespace of a live process (this one) stays. A prefix of its own
    (``ngreap-``, not one the sessions reap) keeps a session starting meanwhile out of it."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = TestbedNetwork(netns=f"ngreap-{gone.pid}-td", subnet="10.98.1.0/24", host_ip="10.98.1.1/24",
                          dhcp_range=("10.98.1.50", "10.98.1.60"), state_dir=tmp_path / "dead")
    live = TestbedNetwork(netns=f"ngreap-{os.getpid()}", subnet="10.98.2.0/24", host_ip="10.98.2.1/24",
                          dhcp_range=("10.98.2.50", "10.98.2.60"), state_dir=tmp_path / "live")
    guest = None
    try:
        dead.up()
        dead.release()  # a dead process holds no lock
        live.up()
        guest = subprocess.Popen(dead.exec_argv(["sleep", "600"]))  # stands for a QEMU the dead run left
        dnsmasq = dead.dnsmasq_pid()
        assert orphaned_namespaces("ngreap-") == [dead.netns]
        assert reap_orphaned("ngreap-") == {dead.netns: ""}
        guest.wait(timeout=10)
        assert not dead.exists() and dnsmasq is not None and _gone(dnsmasq)
        assert live.exists() and live.dnsmasq_pid() is not None
        assert orphaned_namespaces("ngreap-") == [] and reap_orphaned("ngreap-") == {}
    finally:
        if guest is not None and guest.poll() is None:
            guest.kill()
            guest.wait()
        for n in (dead, live):
            if n.exists():
                with contextlib.suppress(TestbedNetworkError):
                    n.down()


def test_a_namespace_whose_owner_lock_is_held_is_not_reaped_though_its_pid_looks_dead(tmp_path):
    """The pid in a namespace's name is the creator's pid in *its* PID namespace: a run in a container
    on the same machine looks dead from here. Its owner lock (held by a live process, here another
    one that took it over by hand) keeps the reaper off; once that process lets go, it is reaped. A
    second up() of the same namespace in the process that owns it neither waits nor fails."""
    import tests.testbed.net as netmod

    gone = subprocess.Popen(["true"])
    gone.wait()
    other = TestbedNetwork(netns=f"ngreap-{gone.pid}-pidns", subnet="10.98.3.0/24", host_ip="10.98.3.1/24",
                           dhcp_range=("10.98.3.50", "10.98.3.60"), state_dir=tmp_path / "other")
    holder = None
    try:
        other.up()
        fd = netmod._OWNED[other.netns]
        opened = []
        real_open = os.open

        def spy(path, *args, **kwargs):
            opened.append(str(path))
            return real_open(path, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(netmod.os, "open", spy)
            TestbedNetwork(netns=other.netns, subnet="10.98.3.0/24", host_ip="10.98.3.1/24",
                           dhcp_range=("10.98.3.50", "10.98.3.60"), state_dir=tmp_path / "other").up()
        assert not [o for o in opened if o.startswith(str(netmod.OWNER_LOCK_DIR))]  # did not even try again
        assert netmod._OWNED[other.netns] == fd and netmod.owner_lock_held(other.netns)
        other.release()
        assert not netmod.owner_lock_held(other.netns)
        lock = netmod.OWNER_LOCK_DIR / f"{other.netns}.lock"
        lock.touch()
        # a live process (standing for the run in another PID namespace) takes the lock
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1]); "
                                   "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
                                   str(lock)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        assert netmod.owner_lock_held(other.netns)
        assert orphaned_namespaces("ngreap-") == [] and reap_orphaned("ngreap-") == {}
        assert other.exists()
        holder.kill()
        holder.wait()
        assert orphaned_namespaces("ngreap-") == [other.netns]
        assert reap_orphaned("ngreap-") == {other.netns: ""}
        assert not other.exists() and not lock.exists()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        if other.exists():
            with contextlib.suppress(TestbedNetworkError):
                other.down()


def test_leases_parses_dnsmasq_file(net, tmp_path):
    net.state_dir.mkdir(parents=True)
    net.lease_file.write_text(
        "1900000000 BC:24:11:00:00:01 10.98.0.50 guest1 01:bc:24:11:00:00:01\n"
        "1900000000 bc:24:11:00:00:02 10.98.0.51 * *\n"
        "duid 00:01:00:01:2c:aa:bb:cc\n"
    )
    assert net.leases() == {"bc:24:11:00:00:01": "10.98.0.50", "bc:24:11:00:00:02": "10.98.0.51"}
    assert net.wait_for_lease("bc:24:11:00:00:02", timeout=1) == "10.98.0.51"
    with pytest.raises(TimeoutError):
        net.wait_for_lease("bc:24:11:00:00:03", timeout=0.2, poll=0.05)


def test_bad_names_rejected():
    with pytest.raises(ValueError):
        TestbedNetwork(netns="a/b")
    with pytest.raises(ValueError):
        TestbedNetwork(host_ip="10.1.0.1/24")
    n = TestbedNetwork(netns="ngtest-names")
    with pytest.raises(ValueError):
        n.add_tap("this-name-is-way-too-long")


def test_cli_up_status_down():
    ns = f"ngcli-{os.getpid()}"
    py = [sys.executable, "-m", "tests.testbed.net"]
    env = dict(os.environ)
    cwd = Path(__file__).resolve().parent.parent
    try:
        up = subprocess.run([*py, "up", "--netns", ns], capture_output=True, text=True, cwd=cwd, env=env)
        assert up.returncode == 0, up.stderr
        st = json.loads(subprocess.run([*py, "status", "--netns", ns], capture_output=True, text=True, cwd=cwd, check=True).stdout)
        assert st["exists"] and st["bridge_up"] and st["dnsmasq_pid"]
        down = subprocess.run([*py, "down", "--netns", ns], capture_output=True, text=True, cwd=cwd)
        assert down.returncode == 0, down.stderr
        assert ns not in _netns_list()
    finally:
        TestbedNetwork(netns=ns).down()


def test_a_thread_started_inside_and_still_running_is_found_and_named(net):
    """What fails a test that leaves a thread in the bed's namespace (tests/testbed/fixtures.py) and
    the bed's down(): the thread is found, with its name and where it waits; once it ended, nothing."""
    from tests.testbed.net import own_threads_in_net_inode

    net.up()
    ino = os.stat(net.netns_path).st_ino
    release = threading.Event()
    with net.enter():
        leaked = threading.Thread(target=release.wait, name="left-behind", daemon=True)
        leaked.start()
    try:
        found = own_threads_in_net_inode(ino, grace=0.2)
        assert list(found) == [leaked.native_id]
        assert "thread 'left-behind' (daemon=True) at " in found[leaked.native_id] and " wait" in found[leaked.native_id]
        assert own_threads_in_net_inode(ino, grace=0.2, skip=frozenset({leaked.native_id})) == {}
        with pytest.raises(TestbedNetworkError, match="threads of this process still inside the namespace.*left-behind"):
            net.down()
    finally:
        release.set()
        leaked.join(5)
    assert own_threads_in_net_inode(ino, grace=0.2) == {}
