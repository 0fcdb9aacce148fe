"""nixgold.verify.report: the table, JUnit XML and JSON that `invoke verify` writes (pure formatting)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from nixgold.verify.report import (
    CloneInfo,
    StageInfo,
    VerifyReport,
    format_keep,
    format_table,
    json_text,
    junit_xml,
    report_data,
    write_reports,
)

SECRET = "0f1e2d3c-aaaa-bbbb-cccc-5ecr3t000000"


@dataclass(frozen=True)
class Result:  # same shape as nixgold.verify.checks.CheckResult
    id: str
    target: str
    outcome: str
    seconds: float
    reason: str = ""
    summary: str = ""


def sample() -> VerifyReport:
    results = [
        Result("template.is-template", "template", "passed", 0.0, summary="VM 9004 is a template"),
        Result("boot.agent", "golden-verify-1", "passed", 38.2),
        Result("boot.agent", "golden-verify-2", "failed", 300.0, "guest agent did not answer within 5m"),
        Result("sshd.password-auth-off", "golden-verify-1", "failed", 1.25,
               f"PasswordAuthentication yes\nin /etc/ssh/sshd_config (token {SECRET})"),
        Result("cloud-init.done", "golden-verify-1", "error", 0.5, "command timed out <&> \"quoted\""),
        Result("hostname.unique", "clones", "skipped", 0.0, "needs two booted clones"),
    ]
    return VerifyReport(
        template={"vmid": 9004, "node": "pve", "name": "golden", "selected_by": "--vmid 9004", "manifest": None},
        profile="generic", clone_mode="auto", started_at="2026-11-22T05:00:00Z",
        clones=[CloneInfo(120, "golden-verify-1", "pve", "10.99.0.123", "linked", destroyed=True,
                          timings={"clone": 1.2, "boot_to_agent": 38.2, "agent_to_ssh": 4.0, "checks": 9.0,
                                   "destroy": 1.5}),
                CloneInfo(121, "golden-verify-2", "pve", None, "linked", destroyed=True, timings={"clone": 1.3})],
        results=results, stages=[StageInfo("cloning 9004 -> 120, 121 (linked)", 1.4, True)], wall_seconds=312.5,
        outcome="failed", exit_code=5)


def redact(text: str) -> str:
    return text.replace(SECRET, "***")


def test_table_has_one_row_per_check_and_one_line_reasons():
    text = format_table(sample(), redact)
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "TARGET", "RESULT", "TIME", "REASON"]
    assert len(lines) == 1 + 6 + 1
    row = next(line for line in lines if line.startswith("sshd.password-auth-off"))
    assert "FAILED" in row and "1.2s" in row and "PasswordAuthentication yes in /etc/ssh/sshd_config" in row
    assert "guest agent did not answer within 5m" in text
    assert SECRET not in text and "***" in text
    assert lines[-1] == ("6 checks: 2 passed, 2 failed, 1 errors, 1 skipped in 312.5s: FAILED (exit 5)")
    passed_row = next(line for line in lines if line.startswith("template.is-template"))
    assert passed_row.rstrip().endswith("0.0s")  # no reason for passed checks


def test_junit_is_valid_xml_with_a_suite_per_target_and_the_right_counts(tmp_path):
    path = tmp_path / "out" / "verify.xml"
    write_reports(sample(), junit=path, redact=redact)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("6", "2", "1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["template", "golden-verify-1", "golden-verify-2", "clones"]
    one = suites["golden-verify-1"]
    assert (one.get("tests"), one.get("failures"), one.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in one.findall("testcase")}
    failure = cases["sshd.password-auth-off"].find("failure")
    assert failure is not None and failure.get("message").startswith("PasswordAuthentication yes in")
    assert cases["cloud-init.done"].find("error").get("message") == "command timed out <&> \"quoted\""
    assert suites["clones"].find("testcase/skipped").get("message") == "needs two booted clones"
    assert cases["boot.agent"].get("time") == "38.200"
    assert SECRET not in path.read_text()


def test_json_has_template_clones_timings_results_and_exit_code(tmp_path):
    path = tmp_path / "verify.json"
    write_reports(sample(), json_path=path, redact=redact)
    data = json.loads(path.read_text())
    assert data["template"]["vmid"] == 9004 and data["profile"] == "generic"
    assert [(c["vmid"], c["name"], c["address"]) for c in data["clones"]] == [
        (120, "golden-verify-1", "10.99.0.123"), (121, "golden-verify-2", None)]
    assert set(data["clones"][0]["timings"]) == {"clone", "boot_to_agent", "agent_to_ssh", "checks", "destroy"}
    assert data["timings"]["wall"] == 312.5 and data["timings"]["stages"][0]["name"].startswith("cloning")
    assert len(data["results"]) == 6 and data["results"][2]["reason"] == "guest agent did not answer within 5m"
    assert data["counts"] == {"passed": 2, "failed": 2, "error": 1, "skipped": 1}
    assert data["outcome"] == "failed" and data["exit_code"] == 5
    assert SECRET not in path.read_text()
    assert report_data(sample())["results"][3]["reason"].count(SECRET) == 1  # only the redactor removes it
    assert json.loads(json_text(sample(), redact)) == data


def test_junit_and_json_for_an_empty_run():
    report = VerifyReport(template={"vmid": 9004}, profile="nixos", clone_mode="auto", started_at="t",
                          outcome="error", exit_code=6, error="GET /cluster/resources failed: 500")
    root = ET.fromstring(junit_xml(report).split("\n", 1)[1])
    assert root.get("tests") == "0" and root.findall("testsuite") == []
    assert json.loads(json_text(report))["error"] == "GET /cluster/resources failed: 500"


def test_keep_text_lists_ssh_commands():
    report = sample()
    report.clones[0].kept = True
    report.ssh_key_file = "/tmp/nixgold-verify-x/id_ed25519"
    report.ssh_commands = ["ssh -i /tmp/nixgold-verify-x/id_ed25519 nixgold@10.99.0.123"]
    text = format_keep(report)
    assert "ssh -i /tmp/nixgold-verify-x/id_ed25519 nixgold@10.99.0.123" in text
    assert "qm destroy $id --purge 1 --destroy-unreferenced-disks 1;" in text and "for id in 120;" in text
    assert format_keep(sample()) == ""


def test_write_reports_writes_nothing_when_not_asked(tmp_path: Path):
    assert write_reports(sample()) == []
