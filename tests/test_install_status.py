"""nixgold's install status endpoint: what install.sh POSTs, and what it refuses.

The reports themselves come from the rendered install.sh (tests/test_guest_files.py runs it and
parses every report it sends with :func:`parse_report`); here the endpoint is a real HTTP server
on localhost and the requests are real HTTP.
"""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from nixgold.errors import PreflightError
from nixgold.build.install_status import MAX_BODY, InstallStatusServer, parse_report, report_token

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbbAdzDTczAgOkk8e6klmU3bUmAxOnTrfF6wOq1w6HR nixgold-build-x"
RUNNING = "nixgold-install-report 1\nstate: running\nstep: 4\ntotal: 12\nname: nixos-install (this takes a while)\ncode: 0\n"
FAILED = ("nixgold-install-report 1\nstate: failed\nstep: 5\ntotal: 12\nname: create the file systems\ncode: 1\n\n"
          + "\n".join(f"line {n}" for n in range(30)) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_is_the_keys_sha256_prefix_whatever_the_newline():
    assert report_token(KEY) == report_token(KEY + "\n") and len(report_token(KEY)) == 16


def test_reports_parse_and_keep_the_last_20_log_lines():
    running = parse_report(RUNNING, 1.0)
    assert (running.state, running.position, running.name, running.code, running.log_tail) == (
        "running", "4/12", "nixos-install (this takes a while)", 0, ())
    failed = parse_report(FAILED)
    assert failed.code == 1 and failed.log_tail == tuple(f"line {n}" for n in range(10, 30))


@pytest.mark.parametrize("body,why", [
    ("hello", "not a nixgold install report"),
    (RUNNING.replace("state: running", "state: exploded"), "unknown state"),
    (RUNNING.replace("step: 4", "step: four"), "whole numbers"),
    (RUNNING.replace("step: 4", "step: 40"), "impossible step"),
    (RUNNING.replace("code: 0\n", ""), "lacks code"),
    (RUNNING + "extra: x\n", "bad report header"),
])
def test_bad_reports_are_refused(body, why):
    with pytest.raises(ValueError, match=why):
        parse_report(body)


def test_the_endpoint_takes_reports_under_the_builds_token_only():
    port = free_port()
    with InstallStatusServer("127.0.0.1", port, report_token(KEY)) as server:
        token = report_token(KEY)
        assert post(port, f"/install/{token}", RUNNING.encode()) == 204
        assert post(port, f"/install/{token}", FAILED.encode()) == 204
        assert post(port, "/install/0123456789abcdef", RUNNING.encode()) == 404  # another build's token
        assert post(port, f"/install/{token}", b"garbage") == 400
        assert post(port, f"/install/{token}", b"x" * (MAX_BODY + 1)) == 413
        reports = server.take()
        assert [(r.state, r.step) for r in reports] == [("running", 4), ("failed", 5)]
        assert server.take() == []  # each report is handed out once


def test_a_taken_port_is_a_preflight_error_naming_the_key():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PreflightError, match=rf"build.status_port: cannot listen on 127.0.0.1:{port} .*in use"):
            InstallStatusServer("127.0.0.1", port, "x").start()
