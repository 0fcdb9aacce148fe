"""Wall time of `invoke build-template --dry-run` on the example config (goal: < 2 s).

    .venv/bin/python benchmarks/dry_run.py [runs]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 2.0


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "nixgold.toml").write_text((REPO / "nixgold.example.toml").read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "invoke", "-r", str(REPO), "build-template", "--dry-run"],
                           cwd=tmp, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"dry-run wall time over {runs} runs: median {median:.2f} s, min {min(times):.2f} s, "
          f"max {max(times):.2f} s (goal < {GOAL_S:.0f} s: {'met' if median < GOAL_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
