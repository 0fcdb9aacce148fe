"""What `invoke refresh` costs: the nightly no-op (goal < 5 s, target < 2 s), the swap window (goal < 10 s)
and where a full refresh spends its time.

    .venv/bin/python benchmarks/refresh.py [--noops 5] [--keep-bed]

On a private test bed (namespace ``ngbench-<pid>``, empty cluster) it seeds a promoted template 9004
(the ``good`` stand-in with the record a first refresh leaves; tests/testbed/refresh_producer.py), then

1. one full refresh with changed inputs: the build phase is the test seam (the ``good`` stand-in
   imported as the candidate: seconds, where Packer under TCG takes ~5 min; benchmarks/build_e2e.py
   measures that), then verify (one clone, generic profile), archive, swap, retention, all real;
2. ``--noops`` refreshes with the same inputs (nothing to do), the median;

and prints one figure per line: the full refresh and its phase split, the swap window, the no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_NOOP_S, TARGET_NOOP_S, GOAL_SWAP_S = 5.0, 2.0, 10.0


def write_config(bed: object, root: Path, timezone: str) -> Path:
    path = root / "nixgold.toml"
    path.write_text(f"""
[proxmox]
node = "{bed.node}"
url = "{bed.url}"
[template]
vmid = 9004
name = "bench-golden"
[vm]
firmware = "bios"
storage = "{bed.storage}"
disk_format = "qcow2"
bridge = "{bed.bridge}"
memory = 1024
cores = 1
[nixos]
timezone = "{timezone}"
[build]
dialect = "bundled"
output_dir = "{root / 'build'}"
[verify]
profile = "generic"
clones = 1
agent_timeout = "8m"
""")  # type: ignore[attr-defined]
    return path


def refresh(bed: object, config: Path, root: Path, report: Path | None = None) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA"))}
    env.update(bed.env())  # type: ignore[attr-defined]
    env.pop("REQUESTS_CA_BUNDLE", None)
    env.update(NIXGOLD_CONFIG=str(config), NIXGOLD_REFRESH_PRODUCER="tests.testbed.refresh_producer:standin",
               NIXGOLD_TESTBED_ROOT=str(bed.root), NIXGOLD_TESTBED_NETNS=bed.netns)  # type: ignore[attr-defined]
    invoke = REPO / ".venv" / "bin" / "invoke"
    cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
    argv = ["ip", "netns", "exec", bed.netns, *cmd, "-r", str(REPO), "refresh"]  # type: ignore[attr-defined]
    if report is not None:
        argv += ["--json", str(report)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 10):
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
    return wall, proc.returncode, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noops", type=int, default=5)
    ap.add_argument("--keep-bed", action="store_true", help="leave the test bed up (prints where)")
    args = ap.parse_args()

    from tests.testbed.bed import Testbed
    from tests.testbed.refresh_producer import seed_promoted

    root = Path(tempfile.mkdtemp(prefix="nixgold-bench-"))
    bed = Testbed(root=root, netns=f"ngbench-{os.getpid()}", log_fn=lambda msg: None)
    print(f"bringing up a test bed in {root} (netns {bed.netns}) ...", flush=True)
    bed.up(template=False)
    try:
        seed_promoted(bed, 9004, "bench-golden", build_id="seed-good-0001", tags="golden;nixgold;nixos")
        config = write_config(bed, root, "Europe/Berlin")
        report = root / "refresh.json"
        wall, rc, _ = refresh(bed, config, root, report)
        data = json.loads(report.read_text()) if report.exists() else {}
        print(f"full refresh (test-seam build, verify with 1 clone, archive, swap): {wall:.1f} s (exit {rc})",
              flush=True)
        for phase in data.get("phases", []):
            print(f"  phase {phase['name']}: {phase['seconds']:.1f} s")
        swap = data.get("swap_window_seconds")
        if swap is not None:
            print(f"swap window: {swap:.1f} s (goal < {GOAL_SWAP_S:.0f} s: {'met' if swap < GOAL_SWAP_S else 'NOT met'})")
        times = []
        for _ in range(args.noops):
            seconds, code, out = refresh(bed, config, root)
            if code != 0:
                print(f"a no-op refresh exited {code}:\n{out}", file=sys.stderr)
                return 1
            times.append(seconds)
        noop = statistics.median(times)
        print(f"no-op refresh: {noop:.1f} s (median of {len(times)}, min {min(times):.1f} s; goal < {GOAL_NOOP_S:.0f} s: "
              f"{'met' if noop < GOAL_NOOP_S else 'NOT met'}, target < {TARGET_NOOP_S:.0f} s: "
              f"{'met' if noop < TARGET_NOOP_S else 'NOT met'})")
        print(f"load average now {os.getloadavg()[0]:.2f} (other guests on this machine slow every figure)")
        return 0 if rc == 10 and swap is not None else 1
    finally:
        if args.keep_bed:
            print(f"test bed left up: {bed.usage()}")
        else:
            bed.down()


if __name__ == "__main__":
    raise SystemExit(main())
