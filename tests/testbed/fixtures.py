"""pytest fixtures for the test bed (loaded from tests/conftest.py via ``pytest_plugins``).

``testbed`` (session): a :class:`~tests.testbed.bed.Testbed` that is up, with the stand-in
``good`` image imported as template 9004, in its own namespace ``ngbed-<pid>`` (never the
hand-started ``nixgold-testbed``) and a temporary root.  Use it like::

    def test_x(testbed):
        with testbed.enter():                      # API and guests live in the namespace
            prox = testbed.proxmoxer()             # plain proxmoxer, token auth, CA-verified
            prox.nodes(testbed.node).qemu(9004).config.get()
            testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", message="boom")

Attributes: ``url``, ``host``, ``port``, ``token_id``, ``token_secret``, ``ca_path``, ``node``,
``storage``, ``bridge``, ``netns``, ``template_vmid``; ``enter()``, ``proxmoxer()``,
``root_api()``, ``sim_admin``, ``boot_clone()``.  Teardown stops everything and fails if
any QEMU process, TAP or the namespace survives.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Iterator

import pytest

from .bed import Testbed
from .net import own_threads_in_net_inode, reap_orphaned

_SESSION_BED: list[Testbed] = []  # the session's bed once the fixture made it (for the per-test check)
_REPORTED: set[int] = set()  # leaked threads one test's teardown already failed for


#: The namespace prefixes of the test runs' own networks, each followed by the pid that made it: the
#: session bed (``testbed`` below; ``ngbed-<pid>-td`` in tests/test_pvesim_vm.py), the fleet of
#: tests/test_testbed_images.py, tests/test_testbed_net.py, tests/test_testbed_tasks.py.
RUN_PREFIXES = ("ngbed-", "ngimg-", "ngtest-", "ngcli-", "ngtask-")


def reap_dead_runs(prefixes: tuple[str, ...] = RUN_PREFIXES) -> list[str]:
    """Take down the networks (and the simulator, guests, dnsmasq inside) of earlier test runs whose
    process is gone: a worker killed by a hard timeout or the OOM killer never reaches its
    teardown, and its guests would eat the CPU of every later run on the machine. One line per
    namespace taken down, or per one that could not be (the run goes on)."""
    lines = []
    for prefix in prefixes:
        for name, error in reap_orphaned(prefix).items():
            lines.append(f"test bed: could not take down {name}, left by a test run that died: {error}" if error
                         else f"test bed: took down {name}, left running by a test run that died")
    return lines


def _leftovers(bed: Testbed) -> list[str]:
    problems = [f"QEMU pid {pid}" for pid, _ in bed.leftover_qemu()]
    if bed.net.exists():
        problems.append(f"netns {bed.netns}")
    taps = [name for name in os.listdir("/sys/class/net") if re.fullmatch(r"tap\d+i\d+", name)]
    problems += [f"TAP {t} in the host namespace" for t in taps]
    return problems


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    root = Path(tmp_path_factory.mktemp("testbed"))
    bed = Testbed(root=root, netns=f"ngbed-{os.getpid()}", log_fn=lambda msg: None)
    try:
        bed.up()
        _SESSION_BED.append(bed)
        yield bed
    finally:
        _SESSION_BED.clear()
        bed.down()
        left = _leftovers(bed)
        assert not left, f"test bed left things behind: {left}"


@pytest.fixture(autouse=True)
def _no_thread_left_in_the_namespace() -> Iterator[None]:
    """After every test (once the session's bed is up): no thread of this process is left inside the
    bed's namespace. Such a thread (started inside ``enter()`` and still running) would only be
    reported when the session's bed goes down, after the last test; here the test that left it fails
    its teardown, naming the thread and where it is."""
    yield
    if not _SESSION_BED:
        return
    try:
        ino = os.stat(_SESSION_BED[0].net.netns_path).st_ino
    except OSError:
        return
    # the calling thread: a fixture may hold enter() itself; the reported ones: only the test that
    # left a thread fails for it, not every later test of the session
    left = own_threads_in_net_inode(ino, skip=frozenset({threading.get_native_id(), *_REPORTED}))
    _REPORTED.update(left)
    assert not left, "threads left running inside the test bed's namespace: " + "; ".join(left.values())
