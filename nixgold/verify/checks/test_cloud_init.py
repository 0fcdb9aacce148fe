"""cloud-init ran to the end on first boot, without errors."""

from __future__ import annotations

import json

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import first_line, run

WAIT_SECONDS = 240  # the final stage may still run when SSH is already up
#: cloud-init's run directory (cloudinit/helpers.py Paths: ``run_dir`` defaults to /run/cloud-init).
RESULT_FILE = "/run/cloud-init/result.json"
#: Wait for cloud-init's end without Python, then print its result (the JSON of result.json), or
#: `cloud-init status --long` when there is none or cloud-init says it is disabled.
#: cloudinit/cmd/main.py status_wrapper writes result.json when the final stage (modules-final) ends,
#: its ``v1.errors`` every stage's errors, the same ones `cloud-init status` reads from status.json
#: (cloudinit/cmd/status.py get_errors: "error" when there are any, else "done"). `cloud-init status
#: --wait` would be one more Python start under the guest's final stage (4.4 s of a TCG guest's CPU
#: measured after it, on the stand-in), and in cloud-init >= 23.4 it also runs up to five systemctl
#: every 0.25 s while waiting (status.py get_status_details: systemd_failed, _disabled_via_environment).
#: * disabled: status.py get_bootstatus says "disabled" for /etc/cloud/cloud-init.disabled or
#:   cloud-init=disabled on the kernel command line even when it ran (nixpkgs' units have no
#:   ConditionPathExists for the marker, upstream's do): asked first, in cloud-init's own words;
#: * the boot has ended (systemctl is-system-running: running, degraded, maintenance, stopping,
#:   offline) when every start job is done, cloud-final's with it (nixpkgs
#:   nixos/modules/services/system/cloud-init.nix: systemd.services.cloud-final is a oneshot wantedBy
#:   multi-user.target; Debian: cloud-init.target); any other answer (initializing, starting, or
#:   none: the bus busy, a daemon-reload) waits on;
#: * 2 x WAIT_SECONDS rounds of 0.5 s at least; 127: cloud-init is not installed.
WAIT = (f"command -v cloud-init >/dev/null || exit 127; "
        f"if [ -e /etc/cloud/cloud-init.disabled ] || grep -qw cloud-init=disabled /proc/cmdline; then "
        f"s=$(cloud-init status --long); case $s in *'status: disabled'*) printf '%s\\n' \"$s\"; exit 0 ;; esac; fi; "
        f"i=0; while [ ! -e {RESULT_FILE} ] && [ \"$i\" -lt {2 * WAIT_SECONDS} ]; do "
        f"if [ $((i % 4)) -eq 0 ]; then case $(systemctl is-system-running 2>/dev/null) in "
        f"running|degraded|maintenance|stopping|offline) break ;; esac; fi; "
        f"sleep 0.5; i=$((i + 1)); done; "
        f"if [ -e {RESULT_FILE} ]; then exec cat {RESULT_FILE}; fi; exec cloud-init status --long")
BOOT_FINISHED = "test -e /var/lib/cloud/instance/boot-finished"


def probes(ctx):
    return [Probe(WAIT, timeout=WAIT_SECONDS + 60), Probe(BOOT_FINISHED)]


def status_fields(text: str) -> dict[str, str]:
    """``cloud-init status --long`` output as key -> value (a ``--wait`` prints dots first: dropped)."""
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
    waited = run(host, WAIT, timeout=WAIT_SECONDS + 60)
    assert waited.rc != 127, "cloud-init is not installed"
    text = waited.stdout or ""
    if not text.lstrip().startswith("{"):  # no result: cloud-init status says where it is
        fields = status_fields(text)
        state = fields.get("status") or (f"still running after {WAIT_SECONDS} s" if waited.rc == 124 else
                                         first_line(waited.stderr or text, "no output"))
        detail = fields.get("detail", "")
        raise AssertionError(f"cloud-init status is {state!r}, not done" + (f": {detail}" if detail else ""))
    try:
        errors = json.loads(text)["v1"]["errors"]
    except (ValueError, KeyError, TypeError):
        errors = None
    if not isinstance(errors, list):
        raise AssertionError(f"{RESULT_FILE} is not cloud-init's result (no v1.errors list): "
                             f"{first_line(text, 'empty')[:120]}")
    assert not errors, f"cloud-init finished with {len(errors)} error(s): " + "; ".join(str(e) for e in errors)
    finished = run(host, BOOT_FINISHED)
    assert finished.rc == 0, "/var/lib/cloud/instance/boot-finished is missing: cloud-init's final stage did not finish"
