"""What a refresh (or rollback) did, as one result: the summary lines, ``--json``, and the templates table.

The summary is plain lines (one per phase with its time, then the outcome), fit for a journal: no
redraws, no colours. Every free-text field passes through the caller's redactor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from nixgold.errors import ExitCode

#: outcome -> exit code (README "Exit codes")
OUTCOME_CODES = {
    "up-to-date": ExitCode.UP_TO_DATE,
    "promoted": ExitCode.PROMOTED,
    "rolled-back": ExitCode.OK,
    "not-promoted": ExitCode.NOT_PROMOTED,
    "build-failed": ExitCode.BUILD_FAILED_OLD_KEPT,
    "verify-failed": ExitCode.VERIFY_FAILED_OLD_KEPT,
    "locked": ExitCode.LOCKED,
    "error": ExitCode.INFRA,
    "interrupted": ExitCode.INTERRUPTED,
}

REPORT_SCHEMA = 1


@dataclass
class Phase:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class RefreshResult:
    refresh_id: str
    command: str  # refresh | rollback
    template_vmid: int
    template_name: str
    started_at: str
    input_digest: str | None = None
    promoted_digest: str | None = None  # the digest of the template promoted before this run
    outcome: str = "error"
    exit_code: int = int(ExitCode.INFRA)
    message: str = ""
    phases: list[Phase] = field(default_factory=list)
    candidate_vmid: int | None = None
    candidate_build_id: str | None = None
    archive_vmid: int | None = None
    promoted_vmid: int | None = None
    promoted_build_id: str | None = None
    replaced_build_id: str | None = None
    swap_window_seconds: float | None = None
    promotion: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    verify_report: dict[str, Any] | None = None  # the verify JSON report, when verify ran
    retention: dict[str, Any] | None = None
    recovered: list[str] = field(default_factory=list)  # what this run finished or undid for a dead one
    lock_taken_over: dict[str, Any] | None = None
    test_producer: str | None = None
    wall_seconds: float = 0.0

    def finish(self, outcome: str, message: str = "") -> None:
        self.outcome = outcome
        self.exit_code = int(OUTCOME_CODES[outcome])
        self.message = message

    def data(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, **asdict(self)}


def summary_lines(result: RefreshResult, redact: Callable[[str], str] = lambda s: s) -> list[str]:
    width = max([len(p.name) for p in result.phases] + [5])
    lines = [f"{result.command} {result.refresh_id} of template {result.template_vmid} '{result.template_name}':"]
    for p in result.phases:
        mark = "ok" if p.ok else "FAILED"
        detail = f"  {p.detail}" if p.detail else ""
        lines.append(f"  {p.name.ljust(width)}  {p.seconds:7.1f}s  {mark}{detail}")
    if result.swap_window_seconds is not None:
        lines.append(f"  swap window: {result.swap_window_seconds:.1f}s")
    lines.append(f"{result.outcome.upper()} (exit {result.exit_code}) in {result.wall_seconds:.1f}s"
                 + (f": {result.message}" if result.message else ""))
    return [redact(line) for line in lines]


def write_json(result: RefreshResult, path: Path, redact: Callable[[str], str] = lambda s: s) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(redact(json.dumps(result.data(), indent=2, sort_keys=True, default=str)) + "\n")
    tmp.replace(path)
    return path


@dataclass
class TemplateRow:
    role: str  # promoted | archive | candidate | lock | other
    vmid: int
    name: str
    build_id: str | None
    digest: str | None
    verification: str
    linked_clones: int
    protected: bool
    step: str | None
    built: str | None


def format_templates(rows: list[TemplateRow]) -> str:
    header = ("ROLE", "VMID", "NAME", "BUILD", "DIGEST", "VERIFIED", "LINKED", "PROT", "STEP")
    table = [header] + [(r.role, str(r.vmid), r.name, r.build_id or "-", (r.digest or "-")[:12], r.verification,
                         str(r.linked_clones), "yes" if r.protected else "no", r.step or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table)
