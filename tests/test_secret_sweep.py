"""The secret sweep: every command's failure paths as real CLI processes (the real `invoke` inside
the test bed's namespace), with known secrets in the environment (the bed's PROXMOX_TOKEN_SECRET
and PROXMOX_PASSWORD), in the config file and on the command line; then every place a secret
could end up is searched for each of them, in every spelling the redactor knows (raw, inside a
JSON string, percent-encoded): stdout, stderr, every file written under the run's output
directory (build/<id>/ with packer.log and build.json, the dry run, render's output, the
--json/--junit reports) and the command line of every process the CLI started (polled while it
runs, plus the fake Packer's own record of its argv).

Paths: bad config (a secret-looking unknown key under [proxmox] in the file and via --set, an
ISO URL with a password, a PROXMOX_URL with the password in it, the API secret pasted into an
ordinary --set value) for every command; preflight failures (a missing ISO; a wrong password,
which PVE refuses); a Packer failure and an interrupt (SIGINT during the build), with a stand-in
Packer that prints the password in machine-readable lines as Packer 1.6.6 does
(tests/helpers/fake_packer.py); verify failures (no such template; a VM that fails the pre-checks
and quotes the password in its description). No guest boots: ~1 min.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nixgold.errors import ExitCode
from tests.helpers import procs
from tests.helpers.background import BackgroundRun
from tests.helpers.fake_packer import write_fake_packer
from tests.test_build_e2e import build_env, upload_iso, write_config

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
CONFIG_SECRET = "c0nfig-t0ken-s3cret-in-the-file"
FLAG_SECRET = "fl4g-t0ken-s3cret-on-the-command-line"
URL_SECRET = "url-pa55w0rd-in-the-iso-url"
WRONG_PASSWORD = "wr0ng-but-st1ll-a-secret-password"
ISO = "nixgold-sweep.iso"
VMID = 9230
PLANTED = 9231
COMMANDS = (["build-template"], ["build-template", "--dry-run"], ["render"], ["config"], ["verify"], ["lock"])


def spellings(secret: str) -> set[str]:
    """How the redactor would spell it (nixgold.secrets): raw, in a JSON string, percent-encoded."""
    return {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}


@dataclass
class Run:
    name: str
    rc: int
    out: str
    err: str
    argvs: set[str]


class Sweep:
    def __init__(self, testbed: Any, tmp_path: Path):
        self.testbed = testbed
        self.inputs = tmp_path / "in"  # configs and the fake packer: they hold secrets on purpose
        self.outputs = tmp_path / "out"  # everything nixgold writes: searched
        self.cwd = self.outputs / "cwd"
        self.cwd.mkdir(parents=True)
        self.record = self.inputs / "packer-argv.jsonl"
        self.runs: list[Run] = []

    def config(self, name: str, *, iso: str = ISO, proxmox_extra: str = "", iso_section: str | None = None) -> Path:
        path = write_config(self.inputs / name, self.testbed, iso=iso, vmid=VMID, boot_wait="2s", live_boot_wait="2s")
        text = path.read_text().replace(f'output_dir = "{self.inputs / name / "build"}"',
                                        f'output_dir = "{self.outputs / "build"}"')
        text = text.replace("[proxmox]\n", f"[proxmox]\n{proxmox_extra}")
        if iso_section is not None:
            text = text.replace(f'volume = "{self.testbed.storage}:iso/{iso}"', iso_section)
        path.write_text(text)
        return path

    def packer(self, scenario: str) -> str:
        return str(write_fake_packer(self.inputs / f"packer-{scenario}", scenario, self.record))

    def argv(self, args: list[str]) -> list[str]:
        invoke = REPO / ".venv" / "bin" / "invoke"
        cmd = [str(invoke)] if invoke.exists() else [sys.executable, "-m", "invoke"]
        return ["ip", "netns", "exec", self.testbed.netns, *cmd, "-r", str(REPO), *args]

    def run(self, name: str, args: list[str], config: Path, *, expect: int, env: dict[str, str] | None = None,
            interrupt_after: str | None = None) -> Run:
        full_env = build_env(self.testbed, config)
        full_env.update(env or {})
        run = BackgroundRun(self.argv(args), full_env, self.cwd)
        sampler = procs.ArgvSampler(run.proc.pid)
        try:
            if interrupt_after is not None:
                run.wait_for(interrupt_after, timeout=120)
                time.sleep(0.5)
                run.proc.send_signal(signal.SIGINT)
            rc = run.finish(timeout=300)
        finally:
            argvs = sampler.stop()
            if run.proc.poll() is None:
                run.proc.kill()
        result = Run(name, rc, run.out, run.err, argvs)
        self.runs.append(result)
        assert rc == expect, f"{name}: exit {rc}, expected {expect}\nstdout:\n{run.out}\nstderr:\n{run.err}"
        return result

    def leaks(self, secrets: list[str]) -> list[str]:
        forms = {form: secret for secret in secrets for form in spellings(secret)}
        found = []
        for run in self.runs:
            for where, text in (("stdout", run.out), ("stderr", run.err), *(("argv", a) for a in run.argvs)):
                found += [f"{run.name}: {where} holds {secret[:6]}..." for form, secret in forms.items() if form in text]
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                argv = " ".join(json.loads(line)["argv"])
                found += [f"packer argv holds {secret[:6]}...: {argv}" for form, secret in forms.items() if form in argv]
        for path in sorted(self.outputs.rglob("*")):
            if path.is_file():
                data = path.read_text(errors="replace")
                found += [f"{path} holds {secret[:6]}..." for form, secret in forms.items() if form in data]
        return found


@pytest.fixture
def planted(testbed) -> Any:
    """A VM that is no template, its description quoting the bed user's password."""
    with testbed.enter():
        api = testbed.proxmoxer()
        testbed.destroy_vm(PLANTED)
        upid = api.nodes(testbed.node).qemu.post(vmid=PLANTED, name="hand-made", memory=64,
                                                 description=f"hand-made; root password {testbed.user_password}")
        testbed._wait(api, upid)
    yield PLANTED
    with testbed.enter():
        testbed.destroy_vm(PLANTED)
        testbed.destroy_vm(VMID)


def test_no_secret_leaves_any_failure_path(testbed, tmp_path, planted):
    bed_secrets = [testbed.token_secret, testbed.user_password]
    assert all(len(s) >= 8 for s in bed_secrets)
    sweep = Sweep(testbed, tmp_path)
    iso = sweep.inputs / "iso"
    iso.mkdir(parents=True)
    (iso / "README.txt").write_text("not an installer\n")
    subprocess.run(["genisoimage", "-quiet", "-V", "SWEEP", "-o", str(sweep.inputs / ISO), str(iso)], check=True)
    upload_iso(testbed, sweep.inputs / ISO, ISO)
    t0 = time.monotonic()

    # --- bad configuration: exit 2 before anything is contacted or written, for every command
    good = sweep.config("good")
    in_file = sweep.config("secret-key", proxmox_extra=f'token_secret = "{CONFIG_SECRET}"\n')
    url = sweep.config("iso-url", iso_section=f'url = "https://mirror:{URL_SECRET}@mirror.example/nixos.iso"\n'
                                              f'sha256 = "{"0" * 64}"')
    for command in COMMANDS:
        label = " ".join(command)
        run = sweep.run(f"{label}: token_secret in the file", command, in_file, expect=ExitCode.CONFIG)
        assert "proxmox.token_secret" in run.err and "not shown" in run.err, run.err
        run = sweep.run(f"{label}: token_secret via --set", [*command, f"--set=proxmox.token_secret={FLAG_SECRET}"],
                        good, expect=ExitCode.CONFIG)
        assert "proxmox.token_secret (from flag)" in run.err, run.err
        run = sweep.run(f"{label}: iso.url with a password", command, url, expect=ExitCode.CONFIG)
        assert "iso.url" in run.err, run.err
    for command in (["build-template"], ["verify"]):
        label = " ".join(command)
        with_password = testbed.url.replace("https://", f"https://{testbed.token_user}:{testbed.user_password}@")
        run = sweep.run(f"{label}: PROXMOX_URL with the password", command, good, expect=ExitCode.CONFIG,
                        env={"PROXMOX_URL": with_password})
        assert "PROXMOX_URL" in run.err, run.err
        run = sweep.run(f"{label}: the API secret pasted into --set", [*command, f"--set=vm.disk_size={testbed.token_secret}"],
                        good, expect=ExitCode.CONFIG)
        assert "vm.disk_size (from flag) = '***'" in run.err, run.err
    assert not (sweep.outputs / "build").exists(), "a bad config wrote something"

    # --- preflight: a missing ISO; a password PVE refuses (exit 3, nothing written)
    missing = sweep.config("missing-iso", iso="missing.iso")
    run = sweep.run("preflight: missing ISO", ["build-template", f"--set=build.packer={sweep.packer('fail')}"],
                    missing, expect=ExitCode.PREFLIGHT)
    assert "ISO local:iso/missing.iso (iso.volume) is not in storage" in run.err
    run = sweep.run("preflight: wrong password", ["build-template", f"--set=build.packer={sweep.packer('fail')}"],
                    good, expect=ExitCode.PREFLIGHT, env={"PROXMOX_PASSWORD": WRONG_PASSWORD})
    assert "authentication failed" in run.err, run.err
    assert not (sweep.outputs / "build").exists()

    # --- Packer fails, printing the password in machine-readable lines (exit 4)
    run = sweep.run("packer fails", ["build-template", f"--set=build.packer={sweep.packer('fail')}"], good,
                    expect=ExitCode.BUILD)
    assert "Error creating VM: 401 authentication failure" in run.err and "with password ***" in run.err, run.err
    logs = list((sweep.outputs / "build").glob("*/packer.log"))
    assert len(logs) == 1 and "logging in with password ***" in logs[0].read_text()  # it was there, masked

    # --- SIGINT while Packer waits for SSH: forwarded, Packer's interrupt lines, exit 130
    run = sweep.run("interrupted", ["build-template", f"--set=build.packer={sweep.packer('hang')}"], good,
                    expect=ExitCode.INTERRUPTED, interrupt_after=r"packer: waiting for install/SSH")
    assert "SIGINT received: asking Packer to stop" in run.err and "interrupted by SIGINT" in run.err, run.err
    assert any("packer build -machine-readable" in a for a in run.argvs), run.argvs

    # --- verify: no such template (exit 2); a VM that fails the pre-checks (exit 5); both write reports
    reports = sweep.outputs / "reports"
    reports.mkdir()
    run = sweep.run("verify: no such vmid", ["verify", "--vmid", "424242", "--json", str(reports / "none.json"),
                                             "--junit", str(reports / "none.xml")], good, expect=ExitCode.CONFIG)
    assert "no VM 424242" in run.err, run.err
    run = sweep.run("verify: pre-checks fail", ["verify", "--vmid", str(planted), "--json", str(reports / "pre.json"),
                                                "--junit", str(reports / "pre.xml")], good, expect=ExitCode.VERIFY)
    assert "not cloning: template.is-template" in run.err + run.out, run.err
    report = (reports / "pre.json").read_text()
    assert "hand-made; root password ***" in report  # the description reached the report, masked
    assert (reports / "pre.xml").is_file() and (reports / "none.json").is_file()

    # every run's child processes (and the fake Packer's own record) carried no secret in argv
    packer_runs = [json.loads(line) for line in sweep.record.read_text().splitlines()]
    assert {r["argv"][1] for r in packer_runs} >= {"version", "validate", "build"}
    assert all(not any(n.startswith(("PKR_VAR_", "PROXMOX_")) for n in r["env"])
               for r in packer_runs if r["argv"][1] == "version")  # `packer version` gets no secret at all

    leaks = sweep.leaks([*bed_secrets, CONFIG_SECRET, FLAG_SECRET, URL_SECRET, WRONG_PASSWORD])
    assert leaks == [], "\n".join(leaks)
    print(f"secret sweep: {len(sweep.runs)} CLI runs in {time.monotonic() - t0:.0f}s")
