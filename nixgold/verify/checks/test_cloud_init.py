"""cloud-init ran to the end on first boot, without errors."""

from __future__ import annotations

import json

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import first_line, run

WAIT_SECONDS = 240  # the final stage may still run when SSH is already up
STATUS = "cloud-init status --wait --long"
RESULT = "cat /run/cloud-init/result.json"
BOOT_FINISHED = "test -e /var/lib/cloud/instance/boot-finished"


def probes(ctx):
    return [Probe(STATUS, timeout=WAIT_SECONDS), Probe(RESULT), Probe(BOOT_FINISHED)]


def status_fields(text: str) -> dict[str, str]:
    """``cloud-init status --wait --long`` output (the wait prints dots first) as key -> value."""
    fields: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        line = raw.lstrip(".")
        if line[:1].isspace() and key:
            fields[key] = (fields[key] + " " + line.strip()).strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


@pytest.mark.check("cloud-init.done", "cloud-init finished without errors")
def test_cloud_init_finished_without_errors(host):
    status = run(host, STATUS, timeout=WAIT_SECONDS)
    assert status.rc != 127, "cloud-init is not installed"
    fields = status_fields(status.stdout)
    state = fields.get("status") or first_line(status.stderr or status.stdout, "no output")
    result = run(host, RESULT)
    try:
        errors = json.loads(result.stdout)["v1"]["errors"] if result.rc == 0 else []
    except (ValueError, KeyError, TypeError):
        errors = []
    detail = "; ".join(str(e) for e in errors) or fields.get("detail", "")
    assert state == "done", f"cloud-init status is {state!r}, not done" + (f": {detail}" if detail else "")
    assert not errors, f"cloud-init finished with {len(errors)} error(s): {detail}"
    finished = run(host, BOOT_FINISHED)
    assert finished.rc == 0, "/var/lib/cloud/instance/boot-finished is missing: cloud-init's final stage did not finish"
