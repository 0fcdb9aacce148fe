"""`verify.checks_dir` through the real CLI: `invoke verify` runs a site's own check files next to the
suite, on the booted clone, and a failing one fails the run (exit 5) with its id and reason in the
table and the JSON report. One clone of the bed's good template boots (~1-2 min under TCG)."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from nixgold.errors import ExitCode
from tests.test_verify_e2e import REPO, SLOW_BOX, argv, env, verify_vms

pytestmark = pytest.mark.vm

SITE_CHECKS = '''
import pytest


@pytest.mark.check("site.kernel", "the clone runs Linux")
def test_kernel(host):
    assert host.system_info.type == "linux", f"not Linux: {host.system_info.type}"


@pytest.mark.check("site.motd", "the message of the day names the site")
def test_motd(host):
    assert host.file("/etc/motd").contains("ACME"), "/etc/motd does not name ACME"
'''


def test_a_failing_site_check_fails_verify(testbed, tmp_path):
    checks = tmp_path / "site-checks"
    checks.mkdir()
    (checks / "test_site.py").write_text(SITE_CHECKS)
    report = tmp_path / "verify.json"
    result = subprocess.run(argv(testbed, "--vmid", str(testbed.template_vmid), "--profile", "generic", "--clones", "1",
                                 "--set", f"verify.checks_dir={checks}", "--json", str(report), *SLOW_BOX),
                            env=env(testbed), cwd=REPO, capture_output=True, text=True, timeout=1800)
    out, err = result.stdout, result.stderr
    assert result.returncode == ExitCode.VERIFY, f"stdout:\n{out}\nstderr:\n{err}"
    assert re.search(r"^site\.motd +\S+ +FAILED .*/etc/motd does not name ACME", out, re.M), out
    assert re.search(r"^site\.kernel +\S+ +passed ", out, re.M), out
    failed = [r["id"] for r in json.loads(report.read_text())["results"] if r["outcome"] == "failed"]
    assert failed == ["site.motd"]  # the suite itself passed on the good template
    assert verify_vms(testbed) == []
