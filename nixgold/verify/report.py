"""What `invoke verify` found, as data and as text: a table, JUnit XML, JSON. Pure formatting.

The model (:class:`VerifyReport`) is filled in by :mod:`nixgold.verify`; check results are the
checks engineer's ``CheckResult`` objects (anything with ``id``, ``target``, ``outcome``,
``seconds``, ``reason``, ``summary``). Secrets never reach these formats: callers pass a
``redact`` function and every free-text field goes through it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from nixgold.text import one_line as text_one_line

OUTCOMES = ("passed", "failed", "error", "skipped")
REPORT_SCHEMA = 1


class ResultLike(Protocol):
    id: str
    target: str
    outcome: str
    seconds: float
    reason: str
    summary: str


@dataclass
class CloneInfo:
    vmid: int
    name: str
    node: str
    address: str | None = None
    mode: str | None = None  # linked | full
    kept: bool = False
    destroyed: bool = False
    #: seconds per stage: clone, boot_to_agent, agent_to_ssh, checks, destroy
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class StageInfo:
    name: str
    seconds: float
    ok: bool


@dataclass
class VerifyReport:
    template: dict[str, Any]  # vmid, node, name, selected_by, manifest (dict or None)
    profile: str
    clone_mode: str
    started_at: str
    clones: list[CloneInfo] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # CheckResult
    stages: list[StageInfo] = field(default_factory=list)
    wall_seconds: float = 0.0
    outcome: str = "error"  # passed | failed | error | interrupted
    exit_code: int = 1
    error: str | None = None
    ssh_key_file: str | None = None
    ssh_commands: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return count_outcomes(self.results)

    @property
    def failed(self) -> list[Any]:
        return [r for r in self.results if r.outcome in ("failed", "error")]


def count_outcomes(results: Iterable[ResultLike]) -> dict[str, int]:
    counts = {o: 0 for o in OUTCOMES}
    for r in results:
        counts[r.outcome if r.outcome in counts else "error"] += 1
    return counts


def one_line(text: str | None, limit: int = 200) -> str:
    return text_one_line(text or "", limit)


def _identity(text: str) -> str:
    return text


# --- the human table -------------------------------------------------------------------------
def format_table(report: VerifyReport, redact: Callable[[str], str] = _identity) -> str:
    """One row per check: CHECK, TARGET, RESULT, TIME, and the reason for anything not passed."""
    rows = [("CHECK", "TARGET", "RESULT", "TIME", "REASON")]
    for r in report.results:
        result = r.outcome.upper() if r.outcome in ("failed", "error") else r.outcome
        reason = redact(one_line(r.reason)) if r.outcome != "passed" else ""
        rows.append((r.id, r.target, result, f"{r.seconds:.1f}s", reason))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) if i != 3 else row[i].rjust(widths[i]) for i in range(4)]
        lines.append("  ".join(cells + [row[4]]).rstrip())
    lines.append(summary_line(report))
    return "\n".join(lines)


def summary_line(report: VerifyReport) -> str:
    c = report.counts
    total = sum(c.values())
    verdict = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "interrupted": "INTERRUPTED"}.get(
        report.outcome, report.outcome.upper())
    return (f"{total} checks: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
            f"{c['skipped']} skipped in {report.wall_seconds:.1f}s: {verdict} (exit {report.exit_code})")


# --- JUnit XML -------------------------------------------------------------------------------
def junit_xml(report: VerifyReport, redact: Callable[[str], str] = _identity) -> str:
    """``<testsuites>`` with one ``<testsuite>`` per target and one ``<testcase>`` per check."""
    c = report.counts
    root = ET.Element("testsuites", {
        "name": f"nixgold verify {report.template.get('name') or report.template.get('vmid')}",
        "tests": str(len(report.results)), "failures": str(c["failed"]), "errors": str(c["error"]),
        "skipped": str(c["skipped"]), "time": f"{report.wall_seconds:.3f}"})
    targets: dict[str, list[Any]] = {}
    for r in report.results:
        targets.setdefault(r.target, []).append(r)
    for target, results in targets.items():
        tc = count_outcomes(results)
        suite = ET.SubElement(root, "testsuite", {
            "name": target, "tests": str(len(results)), "failures": str(tc["failed"]), "errors": str(tc["error"]),
            "skipped": str(tc["skipped"]), "time": f"{sum(r.seconds for r in results):.3f}",
            "timestamp": report.started_at})
        for r in results:
            case = ET.SubElement(suite, "testcase", {"classname": f"nixgold.verify.{target}", "name": r.id,
                                                     "time": f"{r.seconds:.3f}"})
            reason = redact(one_line(r.reason, 1000))
            if r.outcome == "failed":
                ET.SubElement(case, "failure", {"message": reason, "type": "CheckFailed"}).text = reason
            elif r.outcome == "error":
                ET.SubElement(case, "error", {"message": reason, "type": "CheckError"}).text = reason
            elif r.outcome == "skipped":
                ET.SubElement(case, "skipped", {"message": reason})
            if getattr(r, "summary", ""):
                ET.SubElement(case, "system-out").text = redact(one_line(r.summary, 1000))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- JSON ------------------------------------------------------------------------------------
def report_data(report: VerifyReport, redact: Callable[[str], str] = _identity) -> dict[str, Any]:
    def clone(ci: CloneInfo) -> dict[str, Any]:
        return {"vmid": ci.vmid, "name": ci.name, "node": ci.node, "address": ci.address, "mode": ci.mode,
                "kept": ci.kept, "destroyed": ci.destroyed,
                "timings": {k: round(v, 3) for k, v in ci.timings.items()}}

    return {
        "nixgold_verify_report": REPORT_SCHEMA,
        "started_at": report.started_at,
        "template": report.template,
        "profile": report.profile,
        "clone_mode": report.clone_mode,
        "clones": [clone(ci) for ci in report.clones],
        "timings": {"wall": round(report.wall_seconds, 3),
                    "stages": [{"name": redact(s.name), "seconds": round(s.seconds, 3), "ok": s.ok}
                               for s in report.stages]},
        "results": [{"id": r.id, "target": r.target, "outcome": r.outcome, "seconds": round(r.seconds, 3),
                     "reason": redact(r.reason or ""), "summary": redact(getattr(r, "summary", "") or "")}
                    for r in report.results],
        "counts": report.counts,
        "outcome": report.outcome,
        "exit_code": report.exit_code,
        "error": redact(report.error) if report.error else None,
        "ssh_key_file": report.ssh_key_file,
        "ssh_commands": report.ssh_commands,
    }


def json_text(report: VerifyReport, redact: Callable[[str], str] = _identity) -> str:
    return redact(json.dumps(report_data(report, redact), indent=2, sort_keys=False)) + "\n"


def write_reports(report: VerifyReport, *, junit: Path | None = None, json_path: Path | None = None,
                  redact: Callable[[str], str] = _identity) -> list[Path]:
    written = []
    for path, text in ((junit, lambda: junit_xml(report, redact)), (json_path, lambda: json_text(report, redact))):
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text(), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def format_keep(report: VerifyReport) -> str:
    """How to reach kept clones (``--keep``)."""
    if not report.ssh_commands:
        return ""
    lines = [f"kept {len(report.ssh_commands)} clone(s); the key stays in {report.ssh_key_file}:"]
    lines += [f"  {cmd}" for cmd in report.ssh_commands]
    ids = " ".join(str(c.vmid) for c in report.clones if c.kept)
    lines.append(f"destroy them when done: for id in {ids}; do qm stop $id; qm destroy $id --purge 1 "
                 f"--destroy-unreferenced-disks 1; done; "
                 f"rm -r {Path(report.ssh_key_file).parent if report.ssh_key_file else '<key dir>'}")
    return "\n".join(lines)

