"""cloud-init.done without `cloud-init status --wait`: the wait is a shell loop on result.json (one
Python start fewer on the guest, 4.4 s of a TCG guest's CPU), and the check's answer comes from what
cloud-init wrote (cloudinit/cmd/main.py status_wrapper: result.json at the final stage's end, every
stage's errors in ``v1.errors``). The loop runs here with stand-in ``cloud-init`` and ``systemctl``
on PATH and result.json in a temporary directory (which the loop then prints); the check runs against answers served as the
gathered facts would be (testinfra's local backend, nothing asked over a connection)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import testinfra

from nixgold.verify.checks import test_cloud_init as cloud_init
from nixgold.verify.checks.facts import STORE, Probe

#: `cloud-init status --long` of cloud-init 22.4 (the stand-in images) while the final stage runs,
#: and of cloud-init >= 23.4 when a unit failed (cloudinit/cmd/status.py systemd_failed).
RUNNING = "status: running\ntime: Wed, 02 Dec 2026 20:00:00 +0000\ndetail:\nDataSourceNoCloud [seed=/dev/sr0][dsmode=net]\n"
UNIT_FAILED = ("status: error\nextended_status: error - done\nboot_status_code: enabled-by-generator\n"
               "detail: Failed due to systemd unit failure\nerrors:\n\t- Failed due to systemd unit failure.\n")


def wait_script(result_file: Path) -> str:
    return cloud_init.WAIT.replace(cloud_init.RESULT_FILE, str(result_file))


@pytest.fixture
def guest(tmp_path: Path) -> dict[str, Any]:
    """Stand-in ``cloud-init`` (prints $CI_STATUS, logs its calls) and ``systemctl`` (prints the
    content of $SYSTEM_STATE_FILE) first on PATH; result.json's path in the temporary directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "cloud-init").write_text(f'#!/bin/sh\necho "$*" >>{calls}\nprintf "%s" "$CI_STATUS"\n')
    (bin_dir / "systemctl").write_text('#!/bin/sh\n[ "$1" = is-system-running ] && cat "$SYSTEM_STATE_FILE"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    state = tmp_path / "state"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SYSTEM_STATE_FILE": str(state),
           "CI_STATUS": RUNNING}
    return {"env": env, "state": state, "calls": calls, "result": tmp_path / "run" / "result.json", "bin": bin_dir}


def run_wait(guest: dict[str, Any], state: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess, float]:
    guest["state"].write_text(state + "\n")
    t0 = time.monotonic()
    proc = subprocess.run(["sh", "-c", wait_script(guest["result"])], env=guest["env"], capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def test_the_wait_ends_when_result_json_appears_without_starting_cloud_init(guest):
    guest["result"].parent.mkdir()
    writer = threading.Timer(1.5, guest["result"].write_text, args=('{"v1": {"errors": []}}',))
    writer.start()
    try:
        proc, seconds = run_wait(guest, "starting")  # the boot still runs cloud-final
    finally:
        writer.join()
    assert proc.returncode == 0 and proc.stdout == '{"v1": {"errors": []}}' and 1.5 <= seconds < 10
    assert not guest["calls"].exists()  # no Python start on the guest


@pytest.mark.parametrize("state", ["running", "degraded", "offline"])
def test_a_boot_that_ended_without_result_json_asks_cloud_init_why(guest, state):
    guest["env"]["CI_STATUS"] = UNIT_FAILED
    proc, seconds = run_wait(guest, state)
    assert seconds < 10 and proc.stdout == UNIT_FAILED
    assert guest["calls"].read_text() == "status --long\n"  # no --wait: it has nothing more to wait for


@pytest.mark.parametrize("state", ["starting", "initializing", "", "unknown"])
def test_while_the_boot_runs_the_wait_goes_on(guest, state):
    """Still starting, or no answer from systemd (the bus busy, a daemon-reload: nothing printed, or
    "unknown"), and no result.json: it waits (bounded by WAIT_SECONDS, cut short here)."""
    guest["state"].write_text(state + "\n")
    proc = subprocess.Popen(["sh", "-c", wait_script(guest["result"])], env=guest["env"], stdout=subprocess.PIPE)
    try:
        time.sleep(3)
        assert proc.poll() is None and not guest["calls"].exists()
        guest["state"].write_text("running\n")  # the boot ended, still no result.json
        assert proc.wait(timeout=10) == 0 and proc.stdout.read().decode() == RUNNING
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert f'-lt {2 * cloud_init.WAIT_SECONDS} ]' in cloud_init.WAIT  # 0.5 s a round, at least WAIT_SECONDS


def test_without_cloud_init_the_wait_says_127_at_once(guest):
    (guest["bin"] / "cloud-init").unlink()
    guest["env"]["PATH"] = f"{guest['bin']}:/usr/bin:/bin"
    if any(Path(d, "cloud-init").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has cloud-init")
    proc, seconds = run_wait(guest, "starting")
    assert proc.returncode == 127 and seconds < 10


def test_a_disabled_cloud_init_is_said_even_when_it_ran(guest, tmp_path):
    """status.py get_bootstatus: the marker file or cloud-init=disabled makes the status "disabled"
    (nixpkgs' units still run cloud-init, so result.json may exist); the marker is looked for at its
    own path, so this runs the rule on a copy with the marker in the temporary directory."""
    marker = tmp_path / "cloud-init.disabled"
    script = wait_script(guest["result"]).replace("/etc/cloud/cloud-init.disabled", str(marker))
    guest["result"].parent.mkdir()
    guest["result"].write_text('{"v1": {"errors": []}}')
    guest["state"].write_text("running\n")
    disabled = "status: disabled\nboot_status_code: disabled-by-marker-file\ndetail: Cloud-init disabled by " \
               "/etc/cloud/cloud-init.disabled\n"
    marker.touch()
    guest["env"]["CI_STATUS"] = disabled
    said = subprocess.run(["sh", "-c", script], env=guest["env"], capture_output=True, text=True, timeout=20)
    assert said.returncode == 0 and said.stdout == disabled
    guest["env"]["CI_STATUS"] = "status: done\n"  # cloud-init=enabled on the command line wins over the marker
    said = subprocess.run(["sh", "-c", script], env=guest["env"], capture_output=True, text=True, timeout=20)
    assert said.stdout == '{"v1": {"errors": []}}'
    marker.unlink()
    guest["calls"].unlink()
    said = subprocess.run(["sh", "-c", script], env=guest["env"], capture_output=True, text=True, timeout=20)
    assert said.stdout == '{"v1": {"errors": []}}' and not guest["calls"].exists()


# --- the check on the answers ---------------------------------------------------------------------
def check_with(answers: dict[str, tuple[int, str]]) -> str | None:
    """Run cloud-init.done on a host whose gathered facts are ``answers`` (command -> rc, stdout);
    its failure message, None when it passed."""
    host = testinfra.get_host("local://")
    timeouts = {cloud_init.WAIT: cloud_init.WAIT_SECONDS + 60}
    STORE.load(host, [{"command": c, "as_root": False, "timeout": timeouts.get(c, Probe(c).timeout), "rc": rc,
                       "stdout": base64.b64encode(out.encode()).decode(), "stderr": ""}
                      for c, (rc, out) in answers.items()])
    assert {Probe(c, False, timeouts.get(c, Probe(c).timeout)) for c in answers} <= set(cloud_init.probes(None))
    try:
        cloud_init.test_cloud_init_finished_without_errors(host)
    except AssertionError as exc:
        return str(exc).splitlines()[0]  # pytest rewrites the module's asserts: the message is the first line
    return None


DONE = {cloud_init.WAIT: (0, json.dumps({"v1": {"datasource": "DataSourceNoCloud", "errors": []}})),
        cloud_init.BOOT_FINISHED: (0, "")}


def test_the_check_passes_on_a_clean_result_and_fails_on_each_defect():
    assert check_with(DONE) is None
    errors = {**DONE, cloud_init.WAIT: (0, json.dumps({"v1": {"errors": ["('bootcmd', ProcessExecutionError(...))"]}}))}
    assert check_with(errors) == "cloud-init finished with 1 error(s): ('bootcmd', ProcessExecutionError(...))"
    missing = {**DONE, cloud_init.WAIT: (1, UNIT_FAILED)}
    assert check_with(missing) == "cloud-init status is 'error', not done: Failed due to systemd unit failure"
    running = {**DONE, cloud_init.WAIT: (0, RUNNING)}
    assert check_with(running) == "cloud-init status is 'running', not done"
    cut = {**DONE, cloud_init.WAIT: (124, "")}
    assert check_with(cut) == f"cloud-init status is 'still running after {cloud_init.WAIT_SECONDS} s', not done"
    assert check_with({**DONE, cloud_init.WAIT: (127, "")}) == "cloud-init is not installed"
    disabled = {**DONE, cloud_init.WAIT: (0, "status: disabled\ndetail: Cloud-init disabled by cloud-init-generator\n")}
    assert check_with(disabled) == "cloud-init status is 'disabled', not done: Cloud-init disabled by cloud-init-generator"
    garbled = {**DONE, cloud_init.WAIT: (0, "{}")}
    assert check_with(garbled) == f"{cloud_init.RESULT_FILE} is not cloud-init's result (no v1.errors list): {{}}"
    unfinished = {**DONE, cloud_init.BOOT_FINISHED: (1, "")}
    assert check_with(unfinished) == ("/var/lib/cloud/instance/boot-finished is missing: cloud-init's final stage "
                                      "did not finish")
