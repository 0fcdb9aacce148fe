"""The benchmarks stay runnable: everything they import from nixgold and tests exists, and every
ProxmoxClient method they call is one the client has (they run for minutes on the test bed, so a
renamed function would otherwise show only when someone measures). No guest."""
from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path

import pytest

from nixgold.proxmox.client import ProxmoxClient

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_a_benchmark_uses_only_what_exists(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("nixgold", "tests"):
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                        and not _is_module(f"{node.module}.{a.name}")]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "client"):
            if not hasattr(ProxmoxClient, node.func.attr):
                missing.append(f"ProxmoxClient.{node.func.attr} (line {node.lineno})")
    assert missing == []


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _suite_module():
    """benchmarks/suite.py as a module (benchmarks/ is not a package; dataclasses need it in sys.modules)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("nixgold_bench_suite", BENCHMARKS[0].parent / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite
    spec.loader.exec_module(suite)
    return suite


def test_the_suite_benchmark_finds_each_tests_file():
    """benchmarks/suite.py sums pytest's JUnit times per test file: ``classname`` is the dotted module
    (``tests.test_x``) for a test function and module + class for a method."""
    suite = _suite_module()
    assert suite.module_of("tests.test_config") == "tests/test_config.py"
    assert suite.module_of("tests.test_config.TestSomething") == "tests/test_config.py"
    assert suite.module_of("tests.no_such_file") == "tests/no_such_file.py"


def _stat(pid: int, comm: str, utime: int, stime: int, start: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    return f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 3 0 {start} 1000 10\n"


def test_the_suite_benchmark_splits_the_cpu_between_guests_and_the_rest(tmp_path):
    """benchmarks/suite.py's CPU figures: /proc/stat's busy ticks (idle and iowait are not busy),
    each qemu process's utime + stime from /proc/<pid>/stat (a comm with spaces and parentheses
    does not shift the fields), counted from the run's start, and a qemu that exits keeps its last
    sample; a pid reused by a new process is a new guest; a qemu whose command line does not name the
    run's basetemp is another run's (not counted)."""
    suite = _suite_module()
    assert suite.busy_ticks("cpu  100 5 20 1000 30 1 2 3 0 0\ncpu0 1 2 3\n") == (128, 1158)
    assert suite.process_ticks(_stat(7, "a (b) c", 11, 4, 99)) == ("a (b) c", 15, 99)

    proc = tmp_path / "proc"

    def write(pid: int, text: str | None, cmdline: bytes = b"qemu-system-x86_64\0-name\0/run/base/t0/x\0") -> None:
        d = proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        if text is None:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        else:
            (d / "stat").write_text(text)
            (d / "cmdline").write_bytes(cmdline)

    write(10, _stat(10, suite.GUEST_COMM, 500, 100, 1))   # a guest from before the run
    write(11, _stat(11, "python3", 900, 0, 2))            # not a guest
    write(14, _stat(14, suite.GUEST_COMM, 10, 0, 3), b"qemu-system-x86_64\0/elsewhere/other-run\0")
    sampler = suite.CpuSampler(proc=proc, marker="/run/base")

    def run() -> str:
        write(10, _stat(10, suite.GUEST_COMM, 650, 150, 1))  # +200 during the run
        write(12, _stat(12, suite.GUEST_COMM, 70, 30, 50))   # a new guest: 100
        sampler.sample()
        write(12, None)                                      # it exits; its last sample counts
        write(13, _stat(13, suite.GUEST_COMM, 40, 0, 60))    # another: 40
        sampler.sample()
        write(13, _stat(13, suite.GUEST_COMM, 40, 20, 60))   # +20 seen at the end
        write(11, _stat(11, "python3", 5000, 0, 2))
        write(14, _stat(14, suite.GUEST_COMM, 9000, 0, 3), b"qemu-system-x86_64\0/elsewhere/other-run\0")
        write(15, _stat(15, suite.GUEST_COMM, 70, 0, 80), b"qemu-system-x86_64\0/elsewhere\0")  # another run's
        return "done"

    assert sampler.run_while(run) == "done"
    assert sampler.guest_ticks() == 200 + 100 + 60
    assert sampler.guests_started() == 2
    write(12, _stat(12, suite.GUEST_COMM, 5, 5, 70))        # pid 12 again: another process
    sampler.sample()
    assert (sampler.guest_ticks(), sampler.guests_started()) == (370, 3)

    lines = suite.cpu_lines(busy_s=3000, total_s=4000, guest_s=2400, guests=40, wall=2000, cores=2)
    assert lines[0] == ("cpu: 3000 core-s busy in 2000 s on 2 cores (75 % busy); guests (qemu, 40 started, "
                        "60 core-s each): 2400 core-s; everything else: 600 core-s")
    assert lines[1] == "  the same work with every core busy: at least 25.0 min (the guests alone: 20.0 min)"


def test_the_suite_benchmark_charges_each_guest_to_the_test_file_that_started_it(tmp_path):
    """benchmarks/suite.py's split of the guests' core-seconds by test file: its pytest plugin writes
    each test's span (setup to teardown) per xdist worker, with pytest-xdist for real; a guest (its
    worker from the ``popen-gwN`` of its command line) is charged to the test its worker ran when it
    started, and to "outside" when no test of its worker ran then."""
    import subprocess

    suite = _suite_module()
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_a.py").write_text("import time\n\ndef test_one():\n    time.sleep(0.2)\n")
    (project / "test_b.py").write_text("import time\n\ndef test_two():\n    time.sleep(0.2)\n")
    events = tmp_path / "events"
    events.mkdir()
    env = {**os.environ, suite.EVENTS_ENV: str(events), "PYTHONPATH": str(BENCHMARKS[0].parents[1])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.suite",
                          "-n", "2", "--dist", "loadfile", "-o", "addopts=", "--rootdir", str(project), str(project)],
                         cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    spans = suite.read_spans(events)
    assert sorted(node for worker in spans.values() for _, _, node in worker) == ["test_a.py::test_one",
                                                                                  "test_b.py::test_two"]
    assert set(spans) <= {"gw0", "gw1"} and all(s < e for worker in spans.values() for s, e, _ in worker)

    spans = {"gw0": [(10.0, 20.0, "tests/test_x.py::test_a"), (20.5, 40.0, "tests/test_y.py::test_b")],
             "gw1": [(5.0, 50.0, "tests/test_z.py::test_c[1]")]}
    guests = [("gw0", 1500, 100), ("gw0", 2100, 30), ("gw0", 3000, 7), ("gw1", 1000, 50), ("gw1", 6000, 1),
              ("", 1000, 2), ("gw0", 2025, 4)]  # tick = 100/s; 20.25 s lies between two tests of gw0
    assert suite.guests_by_module(guests, spans, tick=100) == {
        "tests/test_x.py": (1, 100), "tests/test_y.py": (2, 37), "tests/test_z.py": (1, 50),
        suite.OUTSIDE: (3, 7)}

    proc = tmp_path / "proc" / "21"
    proc.mkdir(parents=True)
    (proc / "stat").write_text(_stat(21, suite.GUEST_COMM, 30, 10, 700))
    (proc / "cmdline").write_bytes(b"qemu-system-x86_64\0-pidfile\0/run/base/popen-gw1/testbed0/pvesim/run/100/qemu.pid\0")
    sampler = suite.CpuSampler(proc=tmp_path / "proc", marker="/run/base")
    sampler.run_while(lambda: None)
    sampler.latest[(21, 700)] = 90  # sampled once more during the run
    assert sampler.guests() == []   # it ran before the run: not started by it
    sampler.baseline.clear()
    assert sampler.guests() == [("gw1", 700, 90)]
