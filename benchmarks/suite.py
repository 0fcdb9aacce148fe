"""Where the test suite's time goes: the README's test command, timed, split by module and lane.

    .venv/bin/python benchmarks/suite.py [--write-weights] [-- PYTEST ARGS...]

Runs ``pytest`` as the README's test command does (plus a JUnit file), then prints the wall time
(goal: under 20 minutes on a 2-core machine), the fast lane (``-m "not vm"``, goal: under 2
minutes) and the VM tests' summed test time, and every module's summed time, slowest first. Test
times are pytest's own (setup + call + teardown of each test); with several workers (``-n``) they
add up to more than the wall time.

It also prints where the machine's CPU went during the run: the busy core-seconds of the whole
machine (``/proc/stat``; steal, time the hypervisor gave to others, is not counted), the guests'
share (every ``qemu-system-x86_64`` process whose command line names this run's ``--basetemp``,
sampled from ``/proc/<pid>/stat`` each second) with the number of guests started, and the least wall
time the same work needs with every core busy (busy core-seconds / cores). The suite is CPU-bound
when that floor is close to the wall time; then only less work (fewer or cheaper guest boots) makes
it faster. Other work on the machine (another run's guests too) counts in the machine's figure.

The guests' core-seconds are also split by test file: this file is loaded into pytest as a plugin
(``-p benchmarks.suite``) that writes when each test (setup, call, teardown: its module fixtures'
boots included) ran on which worker; each guest is charged to the test file its worker was running
when the guest started (its command line names the worker's basetemp, ``popen-gwN``). The figure
says which files' boots a change must cut; a guest started outside every test counts as "outside".

``--write-weights``: after a run that passed, record every module's time in
``tests/file-weights.json``; ``tests/conftest.py`` hands the files to the workers heaviest first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOAL_SUITE_S = 20 * 60
GOAL_FAST_S = 2 * 60
WEIGHTS = REPO / "tests" / "file-weights.json"


EVENTS_ENV = "NIXGOLD_SUITE_EVENTS"  # the plugin's directory: one <worker>.tsv of test spans each
WORKER_RE = re.compile(r"popen-(gw\d+)")  # a guest's worker, from the basetemp in its command line
OUTSIDE = "(outside every test)"

GUEST_COMM = "qemu-system-x86"  # /proc/<pid>/stat's comm: the first 15 bytes of qemu-system-x86_64


def busy_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from ``/proc/stat``'s first line (proc(5): user nice
    system idle iowait irq softirq steal ...; idle and iowait are not busy, steal is not ours)."""
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, _steal = fields + [0] * (8 - len(fields))
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def process_ticks(stat_line: str) -> tuple[str, int, int]:
    """(comm, utime + stime, starttime) of one ``/proc/<pid>/stat`` line (proc(5): fields 2, 14, 15,
    22; comm is in parentheses and may hold spaces and parentheses, so split after the last ')')."""
    comm = stat_line[stat_line.index("(") + 1:stat_line.rindex(")")]
    rest = stat_line[stat_line.rindex(")") + 2:].split()
    return comm, int(rest[11]) + int(rest[12]), int(rest[19])


@dataclass
class CpuSampler:
    """The guests' CPU ticks during a run: the ticks of every qemu process whose command line holds
    ``marker`` (any qemu when it is empty), sampled from ``proc`` each ``interval`` s (a process
    counts from the first sample; its last second before it exits is lost)."""
    proc: Path = Path("/proc")
    interval: float = 1.0
    marker: str = ""
    baseline: dict[tuple[int, int], int] = field(default_factory=dict)
    latest: dict[tuple[int, int], int] = field(default_factory=dict)
    workers: dict[tuple[int, int], str] = field(default_factory=dict)  # (pid, start) -> "gw0", "" if none

    def snapshot(self) -> dict[tuple[int, int], int]:
        guests = {}
        for stat in self.proc.glob("[0-9]*/stat"):
            try:
                comm, ticks, start = process_ticks(stat.read_text())
            except (OSError, ValueError, IndexError):
                continue  # gone between glob and read, or not a process
            key = (int(stat.parent.name), start)
            if comm == GUEST_COMM and (key in self.workers or self.ours(stat.parent, key)):
                guests[key] = ticks
        return guests

    def ours(self, pid_dir: Path, key: tuple[int, int]) -> bool:
        """Whether the qemu at ``pid_dir`` is this run's (its command line names ``marker``); if so, its
        worker is remembered (read once per process)."""
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        if self.marker and self.marker not in cmdline:
            return False
        m = WORKER_RE.search(cmdline)
        self.workers[key] = m.group(1) if m else ""
        return True

    def guests(self) -> list[tuple[str, int, int]]:
        """(worker, start in clock ticks since boot, ticks during the run) of every guest started in the run."""
        return [(self.workers.get(key, ""), key[1], ticks) for key, ticks in self.latest.items()
                if key not in self.baseline]

    def sample(self) -> None:
        self.latest.update(self.snapshot())

    def guest_ticks(self) -> int:
        return sum(ticks - self.baseline.get(key, 0) for key, ticks in self.latest.items())

    def guests_started(self) -> int:
        return len(self.latest.keys() - self.baseline.keys())

    def run_while(self, work) -> object:
        """``work()``'s result, sampling in a thread meanwhile."""
        self.baseline = self.snapshot()
        done = threading.Event()

        def loop() -> None:
            while not done.wait(self.interval):
                self.sample()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            return work()
        finally:
            done.set()
            thread.join()
            self.sample()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ANN001, ANN201 - a pytest hook (-p benchmarks.suite)
    """Record the span of each test (setup + call + teardown) in ``$NIXGOLD_SUITE_EVENTS/<worker>.tsv``:
    start, end (CLOCK_BOOTTIME seconds, the clock of /proc/<pid>/stat's starttime), node id."""
    events = os.environ.get(EVENTS_ENV)
    start = time.clock_gettime(time.CLOCK_BOOTTIME)
    yield
    if events:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(Path(events) / f"{worker}.tsv", "a") as f:
            f.write(f"{start:.3f}\t{time.clock_gettime(time.CLOCK_BOOTTIME):.3f}\t{item.nodeid}\n")


def read_spans(events: Path) -> dict[str, list[tuple[float, float, str]]]:
    """The plugin's test spans per worker: {"gw0": [(start, end, node id), ...]}."""
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for path in sorted(events.glob("*.tsv")):
        for line in path.read_text().splitlines():
            start, end, node = line.split("\t", 2)
            spans.setdefault(path.stem, []).append((float(start), float(end), node))
    return spans


def guests_by_module(guests: list[tuple[str, int, int]], spans: dict[str, list[tuple[float, float, str]]],
                     tick: int) -> dict[str, tuple[int, int]]:
    """{test file: (guests started, their ticks)}: each guest charged to the test its worker ran when the
    guest started (start in ticks since boot, as ``spans``' seconds), else to :data:`OUTSIDE`."""
    out: dict[str, tuple[int, int]] = {}
    for worker, start, ticks in guests:
        at = start / tick
        module = next((node.split("::", 1)[0] for s, e, node in spans.get(worker, []) if s <= at <= e), OUTSIDE)
        count, total = out.get(module, (0, 0))
        out[module] = (count + 1, total + ticks)
    return out


def cpu_lines(busy_s: float, total_s: float, guest_s: float, guests: int, wall: float, cores: int) -> list[str]:
    """The CPU split as printed (seconds are core-seconds)."""
    share = 100 * busy_s / total_s if total_s else 0.0
    per_guest = f", {guest_s / guests:.0f} core-s each" if guests else ""
    return [
        f"cpu: {busy_s:.0f} core-s busy in {wall:.0f} s on {cores} cores ({share:.0f} % busy); "
        f"guests (qemu, {guests} started{per_guest}): {guest_s:.0f} core-s; everything else: {busy_s - guest_s:.0f} core-s",
        f"  the same work with every core busy: at least {busy_s / cores / 60:.1f} min "
        f"(the guests alone: {guest_s / cores / 60:.1f} min)",
    ]


def vm_test_ids() -> set[str]:
    """The node ids the `vm` marker selects (collected, not run)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "vm", "-p", "no:randomly"],
                         cwd=REPO, capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def module_of(classname: str) -> str:
    """The test file of a JUnit ``classname``: ``tests.test_x`` (a test function) or
    ``tests.test_x.TestY`` (a method) -> ``tests/test_x.py``: the longest dotted prefix that is a file."""
    parts = classname.split(".")
    for n in range(len(parts), 0, -1):
        candidate = "/".join(parts[:n]) + ".py"
        if (REPO / candidate).is_file():
            return candidate
    return classname.replace(".", "/") + ".py"


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    own, extra = argv[:split], argv[split + 1:]
    write_weights = "--write-weights" in own
    # A short base: the guests' UNIX sockets live under it (bed/pvesim/run/<vmid>/serial0.sock) and
    # must stay under 108 bytes (sun_path); pytest's own /tmp/pytest-of-root/pytest-N is as short.
    with tempfile.TemporaryDirectory(prefix="ngsuite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        basetemp = next((a.split("=", 1)[1] for a in extra if a.startswith("--basetemp=")), None)
        own = [] if basetemp else [f"--basetemp={Path(tmp) / 'bt'}"]
        events = Path(tmp) / "events"
        events.mkdir()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.suite",
               f"--junitxml={junit}", *own, *extra]
        print("running:", " ".join(cmd), flush=True)
        sampler = CpuSampler(marker=str(Path(basetemp or Path(tmp) / "bt").resolve()))
        busy0, total0 = busy_ticks(Path("/proc/stat").read_text())
        t0 = time.monotonic()
        env = {**os.environ, EVENTS_ENV: str(events)}
        rc = sampler.run_while(lambda: subprocess.run(cmd, cwd=REPO, env=env).returncode)
        spans = read_spans(events)
        wall = time.monotonic() - t0
        busy1, total1 = busy_ticks(Path("/proc/stat").read_text())
        vm_ids = vm_test_ids()
        per_module: dict[str, float] = defaultdict(float)
        lanes = {"fast lane": 0.0, "vm": 0.0}
        for case in ET.parse(junit).getroot().iter("testcase"):
            module = module_of(case.get("classname", ""))
            seconds = float(case.get("time") or 0)
            per_module[module] += seconds
            node = f"{module}::{case.get('name')}"
            lanes["vm" if node in vm_ids else "fast lane"] += seconds
    print(f"\nsuite: {wall / 60:.1f} min wall (exit {rc}; goal < {GOAL_SUITE_S // 60} min: "
          f"{'met' if wall < GOAL_SUITE_S else 'NOT met'})")
    print(f"  fast lane (-m 'not vm'): {lanes['fast lane']:.0f} s of test time (goal < {GOAL_FAST_S} s: "
          f"{'met' if lanes['fast lane'] < GOAL_FAST_S else 'NOT met'}); vm tests: {lanes['vm'] / 60:.1f} min")
    tick = os.sysconf("SC_CLK_TCK")
    for line in cpu_lines((busy1 - busy0) / tick, (total1 - total0) / tick, sampler.guest_ticks() / tick,
                          sampler.guests_started(), wall, os.cpu_count() or 1):
        print(line)
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f} s  {module}")
    print("guests' core-s by the test file that started them (boots):")
    for module, (count, ticks) in sorted(guests_by_module(sampler.guests(), spans, tick).items(),
                                         key=lambda kv: -kv[1][1]):
        print(f"  {ticks / tick:7.0f} core-s  {count:3d} guests  {module}")
    print(f"load average now {os.getloadavg()[0]:.2f} (other work on this machine slows every figure)")
    if write_weights and rc == 0:
        WEIGHTS.write_text(json.dumps({m: round(s) for m, s in sorted(per_module.items())}, indent=1) + "\n")
        print(f"wrote {WEIGHTS.relative_to(REPO)}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
