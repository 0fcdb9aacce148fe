"""The issue's acceptance runs: for each broken stand-in variant, the real CLI
(`invoke verify --vmid <template> --profile generic`, inside the bed's namespace) exits 5, names
the check that caught the defect (and only that one; ``clones-alike`` carries the two defects that
only two clones show, one check each) and leaves no clone behind.

Five boots in all, two runs at a time (`--clones 2` where the defects need two clones to show).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from nixgold.errors import ExitCode

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
PARALLEL_RUNS = 2


@dataclass(frozen=True)
class Case:
    variant: str
    template: int
    clones: int
    check: str  # the check that must fail
    extra: tuple[str, ...] = ()
    also: tuple[str, ...] = ()  # the other checks that must fail (each with its own defect in the image)

    @property
    def checks(self) -> tuple[str, ...]:
        return (self.check, *self.also)


CASES = [
    # the agent never starts: verify cannot even find the clone's address (its boot.agent check);
    # 90 s: longer than a healthy clone takes to answer here, even with two guests booting
    Case("agent-off", 9311, 1, "boot.agent", ("--set", "verify.agent_timeout=90s")),
    Case("sshd-password", 9312, 1, "sshd.password-auth-off"),
    Case("cloud-init-fails", 9313, 1, "cloud-init.done"),
    # two defects that only two clones show, in one image (two boots instead of four); independent
    # facts: /etc/machine-id and the host keys' fingerprints
    Case("clones-alike", 9314, 2, "hygiene.machine-id", also=("hygiene.host-keys",)),
]


@dataclass
class Run:
    case: Case
    proc: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    seconds: float


def _env(testbed: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_", "REQUESTS_CA"))}
    env.update(testbed.env())
    env.pop("REQUESTS_CA_BUNDLE", None)
    return env


def _verify(testbed: Any, case: Case, report: Path) -> Run:
    invoke = REPO / ".venv" / "bin" / "invoke"
    cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
    argv = ["ip", "netns", "exec", testbed.netns, *cmd, "-r", str(REPO), "verify", "--vmid", str(case.template),
            "--profile", "generic", "--clones", str(case.clones), "--json", str(report), *case.extra]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=_env(testbed), cwd=REPO, capture_output=True, text=True, timeout=1800)
    data = json.loads(report.read_text()) if report.exists() else {}
    return Run(case, proc, data, time.monotonic() - t0)


@pytest.fixture(scope="module")
def runs(testbed, tmp_path_factory) -> Iterator[dict[str, Future[Run]]]:
    """Import every variant as a template, then start all runs (PARALLEL_RUNS at a time)."""
    for case in CASES:
        testbed.import_variant(case.variant, case.template, name=f"nixgold-testbed-{case.variant}")
    reports = tmp_path_factory.mktemp("reports")
    pool = ThreadPoolExecutor(PARALLEL_RUNS, thread_name_prefix="verify-cli")
    futures = {c.variant: pool.submit(_verify, testbed, c, reports / f"{c.variant}.json") for c in CASES}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        with testbed.enter():
            prox = testbed.proxmoxer()
            for case in CASES:
                upid = prox.nodes(testbed.node).qemu(case.template).delete(purge=1)
                testbed._wait(prox, upid)


def _vms(testbed: Any) -> list[dict[str, Any]]:
    with testbed.enter():
        return testbed.proxmoxer().cluster.resources.get(type="vm")




@pytest.mark.parametrize("case", CASES, ids=[c.variant for c in CASES])
def test_a_broken_variant_fails_verify_naming_its_check(testbed, runs, case, record_property):
    run = runs[case.variant].result()
    record_property("seconds", round(run.seconds, 1))
    out, err = run.proc.stdout, run.proc.stderr
    assert run.proc.returncode == ExitCode.VERIFY, f"exit {run.proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    name = f"nixgold-testbed-{case.variant}-verify-"
    # the user sees it: the failing row in the table and the summary line on stderr
    for check in case.checks:
        row = next((line for line in out.splitlines() if line.startswith(check + " ")), "")
        assert "FAILED" in row, out
    targets = {f"{name}{i}" for i in range(1, case.clones + 1)}
    expected = {(check, "clones") if check.startswith("hygiene.") else (check, t)
                for check in case.checks for t in targets}
    summary = re.search(rf"nixgold: {len(expected)} of \d+ checks failed: (.*)", err)
    assert summary and all(f"{check} on " in summary.group(1) for check in case.checks), err
    # only those checks failed; everything else passed or was skipped (the NixOS checks: profile generic)
    report = run.report
    assert report["exit_code"] == 5 and report["outcome"] == "failed"
    bad = {(r["id"], r["target"]) for r in report["results"] if r["outcome"] in ("failed", "error")}
    assert bad == expected, json.dumps(report["results"], indent=1)
    for r in report["results"]:
        assert r["outcome"] != "skipped" or r["reason"] in ("profile generic", "bios seabios: no EFI disk needed"), r
    if case.check != "boot.agent":
        assert {r["id"] for r in report["results"]} >= {"sshd.password-auth-off", "hygiene.machine-id", "user.sudo"}
    for check in case.checks:
        reason = next(r["reason"] for r in report["results"] if r["id"] == check)
        assert reason and "\n" not in reason
    # nothing is left behind
    assert len(report["clones"]) == case.clones and all(c["destroyed"] for c in report["clones"])
    assert not [vm for vm in _vms(testbed) if str(vm.get("name", "")).startswith(name)]
