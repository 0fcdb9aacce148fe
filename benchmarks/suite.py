"""Where the test suite's time goes: the README's test command, timed, split by module and lane.

    .venv/bin/python benchmarks/suite.py [--write-weights] [-- PYTEST ARGS...]

Runs ``pytest`` as the README's test command does (plus a JUnit file), then prints the wall time
(goal: under 20 minutes on a 2-core machine), the fast lane (``-m "not vm"``, goal: under 2
minutes) and the VM tests' summed test time, and every module's summed time, slowest first. Test
times are pytest's own (setup + call + teardown of each test); with several workers (``-n``) they
add up to more than the wall time.

``--write-weights``: after a run that passed, record every module's time in
``tests/file-weights.json``; ``tests/conftest.py`` hands the files to the workers heaviest first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SUITE_S = 20 * 60
GOAL_FAST_S = 2 * 60
WEIGHTS = REPO / "tests" / "file-weights.json"


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
    with tempfile.TemporaryDirectory(prefix="nixgold-suite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra]
        print("running:", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=REPO, env=os.environ.copy()).returncode
        wall = time.monotonic() - t0
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
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f} s  {module}")
    print(f"load average now {os.getloadavg()[0]:.2f} (other work on this machine slows every figure)")
    if write_weights and rc == 0:
        WEIGHTS.write_text(json.dumps({m: round(s) for m, s in sorted(per_module.items())}, indent=1) + "\n")
        print(f"wrote {WEIGHTS.relative_to(REPO)}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
