"""nixgold.packer against REAL Packer output (tests/fixtures/packer-output/, see its README) and the
real Debian Packer 1.6.6 running the null builder: parsing, stages, tail, artifact, redaction,
SIGINT forwarding, and that secrets never reach argv."""
from __future__ import annotations

import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from nixgold.packer import output
from tests.helpers import procs
from nixgold.errors import BuildError
from nixgold.packer.output import (
    STAGE_BOOT_WAIT,
    STAGE_CLEANUP,
    STAGE_CONVERT,
    STAGE_CREATE,
    STAGE_INSTALL,
    STAGE_ISO,
    STAGE_ORDER,
    STAGE_PROVISION,
    STAGE_START,
    STAGE_TYPING,
    StageTracker,
    parse_line,
    stage_for,
)
from nixgold.packer.runner import PackerRunner
from nixgold.secrets import Redactor

FIXTURES = Path(__file__).parent / "fixtures" / "packer-output"
SECRET = "Pw-d0nt-l3ak,with:comma"  # capture.SECRET
PACKER = shutil.which("packer")
needs_packer = pytest.mark.skipif(PACKER is None, reason="packer is not installed (scripts/setup.sh installs it)")


def feed(name: str, dialect: str = "bundled") -> StageTracker:
    tracker = StageTracker(dialect)
    for raw in (FIXTURES / name).read_text().splitlines():
        line = parse_line(raw)
        if line is not None:
            tracker.feed(line)
    tracker.finish()
    return tracker


# --- parsing ---------------------------------------------------------------------------------------
def test_machine_readable_lines_decode_commas_and_newlines():
    raw = (FIXTURES / "build-success.machine.txt").read_text().splitlines()
    lines = [parse_line(r) for r in raw]
    assert lines[-1] is None  # "# exit status" trailer is not a Packer line
    say = lines[0]
    assert say.type == "ui" and say.ui_kind == "say" and say.message.startswith("Running local shell script: ")
    comma = next(x for x in lines if x and x.is_ui and "step one" in x.ui_text)
    assert comma.message == "provisioning, step one" and comma.ui_kind == "message"
    wait = next(x for x in lines if x and x.is_ui and "Wait completed" in x.ui_text)
    assert wait.ui_text.startswith("\n==> Wait completed")
    assert parse_line("") is None and parse_line("garbage without commas") is None


def test_packer_166_does_not_redact_sensitive_variables_in_machine_readable_mode():
    """The fact nixgold's own redaction exists for: raw in -machine-readable, <sensitive> in the human UI."""
    machine = (FIXTURES / "build-success.machine.txt").read_text()
    human = (FIXTURES / "build-success.human.txt").read_text()
    assert SECRET.replace(",", output.COMMA) in machine
    assert "<sensitive>" in human and SECRET not in human
    assert (FIXTURES / "version.txt").read_text().startswith("Packer v1.6.6")


def test_redactor_covers_raw_escaped_and_decoded_forms():
    r = Redactor([SECRET, ""], spellings=[output.machine_readable_spellings])
    for raw in (FIXTURES / "build-success.machine.txt").read_text().splitlines():
        assert SECRET.replace(",", output.COMMA) not in r(raw)
        line = parse_line(r(raw))
        if line is not None and line.is_ui:
            assert SECRET not in r(line.ui_text)
    assert r(f"a {SECRET} b") == "a *** b"
    multi = Redactor(["line1\nline2"], spellings=[output.machine_readable_spellings])
    assert multi("x line1\\nline2 y") == "x *** y"


def test_success_has_the_artifact_and_no_errors():
    t = feed("build-success.machine.txt")
    assert t.artifact_id == "Null" and t.artifact["builder-id"] == "fnoeding.null"
    assert t.errors == [] and t.failed_stage is None and not t.interrupted


def test_failure_names_the_error_and_the_tail_holds_the_cause():
    t = feed("build-failure.machine.txt")
    assert t.errors[0] == "install.sh: step partition failed: parted exited 1"
    assert t.build_errors == ["Script exited with non-zero exit status: 3.Allowed exit codes are: [0]"]
    assert t.artifact_id is None
    tail = t.tail()
    assert "install.sh: step partition failed: parted exited 1" in tail
    assert not any(line.startswith(("Wait completed", "Build 'nixgold", "==> Wait")) for line in tail)


def test_interrupt_is_recognised():
    t = feed("build-interrupt.machine.txt")
    assert t.interrupted and t.errors == []


# --- stages ----------------------------------------------------------------------------------------
def test_real_proxmox_builder_output_maps_to_the_stages():
    """Packer 1.6.6's proxmox builder against the PVE simulator: SSH timeout, then Packer's cleanup."""
    t = feed("proxmox-bundled-ssh-timeout.log")
    assert [s.name for s in t.spans] == [STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_INSTALL, STAGE_CLEANUP]
    assert t.failed_stage == STAGE_INSTALL and t.errors[0] == "Timeout waiting for SSH."
    assert t.tail()[-3:] == ["Timeout waiting for SSH.", "Stopping VM", "Deleting VM"]


def test_real_proxmox_builder_interrupt_during_ssh_wait():
    t = feed("proxmox-bundled-interrupt.log")
    assert t.interrupted and t.failed_stage == STAGE_INSTALL
    assert [s.name for s in t.spans][-2:] == [STAGE_INSTALL, STAGE_CLEANUP]


# The ui.Say strings of each step, as the builder sources print them (file in the rule's `source`).
SOURCE_STRINGS = [
    ("Creating VM", STAGE_CREATE), ("Starting VM", STAGE_CREATE), ("No VM ID given, getting next free from Proxmox", STAGE_CREATE),
    ("Starting HTTP server on port 8668", STAGE_CREATE), ("Waiting 10s for boot", STAGE_BOOT_WAIT),
    ("Waiting 1m30s for boot", STAGE_BOOT_WAIT), ("Typing the boot command", STAGE_TYPING),
    ("Waiting for SSH to become available...", STAGE_INSTALL), ("Using ssh communicator to connect: 10.99.0.150", STAGE_INSTALL),
    ("Connected to SSH!", STAGE_PROVISION), ("Provisioning with shell script: /x/packer/cleanup.sh", STAGE_PROVISION),
    ("Stopping VM", STAGE_CONVERT), ("Converting VM to template", STAGE_CONVERT),
    ("Adding a cloud-init cdrom in storage pool local", STAGE_CONVERT),
]
PLUGIN_ONLY = [("Force set, checking for existing artifact on PVE cluster", STAGE_CREATE),
               ("Generated VM ID was already allocated, retrying", STAGE_CREATE)]


@pytest.mark.parametrize("dialect", ["bundled", "plugin"])
def test_stage_table_matches_the_builders_strings(dialect):
    cases = SOURCE_STRINGS + (PLUGIN_ONLY if dialect == "plugin" else [])
    for message, stage in cases:
        assert stage_for(dialect, message) == stage, message
    assert stage_for(dialect, "some provisioner output") is None
    for rule in output.STAGE_RULES[dialect]:
        assert rule.stage in STAGE_ORDER and rule.source


def test_a_whole_successful_bundled_build_in_order_and_never_backwards():
    t = StageTracker("bundled")
    seq = ["Creating VM", "Starting VM", "Starting HTTP server on port 8100", "Waiting 10s for boot",
           "Typing the boot command", "Waiting for SSH to become available...", "Connected to SSH!",
           "Provisioning with shell script: cleanup.sh", "Uploading ./x => /tmp/y", "Stopping VM",
           "Converting VM to template", "Adding a cloud-init cdrom in storage pool local"]
    for i, message in enumerate(seq):
        t.feed(parse_line(f"{1000 + i},,ui,say,==> nixgold.proxmox.nixos: {message}"))
    t.feed(parse_line("1100,nixgold.proxmox.nixos,artifact,0,id,9100"))
    assert [s.name for s in t.spans] == [STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_INSTALL,
                                         STAGE_PROVISION, STAGE_CONVERT]
    assert t.artifact_id == "9100"


# --- the real runner ------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "CHECKPOINT_DISABLE": "1",
            "PKR_VAR_proxmox_password": SECRET, **extra}


@needs_packer
def test_runner_build_redacts_log_and_callbacks(tmp_path):
    shutil.copy(FIXTURES / "null.pkr.hcl", tmp_path)
    log = io.StringIO()
    seen: list[str] = []
    runner = PackerRunner(PACKER, env=_env(), redact=Redactor([SECRET], spellings=[output.machine_readable_spellings]), log=log, cwd=tmp_path)
    outcome = runner.build(tmp_path / "null.pkr.hcl", dialect="bundled", on_stage=lambda a, b: seen.append(b.name))
    assert outcome.ok and outcome.exit_status == 0 and outcome.tracker.artifact_id == "Null"
    assert seen == [output.STAGE_START]
    text = log.getvalue()
    assert "a value with%!(PACKER_COMMA) commas and a password: ***" in text
    assert SECRET not in text and SECRET.replace(",", output.COMMA) not in text
    assert all(SECRET not in line for line in outcome.tracker.tail())


@needs_packer
def test_runner_failure_and_validate_error(tmp_path):
    shutil.copy(FIXTURES / "null.pkr.hcl", tmp_path)
    errors: list[str] = []
    runner = PackerRunner(PACKER, env=_env(PKR_VAR_mode="fail"), redact=Redactor([SECRET], spellings=[output.machine_readable_spellings]), cwd=tmp_path)
    outcome = runner.build(tmp_path / "null.pkr.hcl", dialect="bundled", on_error_line=errors.append)
    assert not outcome.ok and outcome.exit_status == 1
    assert errors[0] == "install.sh: step partition failed: parted exited 1"
    assert len(errors) == len(set(errors))  # the summary repeats errors; shown once
    bare = PackerRunner(PACKER, env={k: v for k, v in _env().items() if k != "PKR_VAR_proxmox_password"},
                        redact=Redactor(), cwd=tmp_path)
    with pytest.raises(BuildError, match='Unset variable "proxmox_password"') as info:
        bare.validate(tmp_path / "null.pkr.hcl")
    assert info.value.stage == "validating the template"


@needs_packer
def test_interrupt_is_forwarded_and_secrets_never_reach_argv(tmp_path):
    shutil.copy(FIXTURES / "null.pkr.hcl", tmp_path)
    runner = PackerRunner(PACKER, env=_env(PKR_VAR_mode="interrupt"), redact=Redactor([SECRET], spellings=[output.machine_readable_spellings]), cwd=tmp_path)
    argvs: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 20
        while runner.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the provisioner is sleeping now
        pid = runner.pid
        assert pid is not None
        argvs.extend(procs.argvs([pid, *procs.descendants(pid)]))
        runner.interrupt("SIGINT")

    thread = threading.Thread(target=watch)
    thread.start()
    t0 = time.monotonic()
    outcome = runner.build(tmp_path / "null.pkr.hcl", dialect="bundled")
    thread.join()
    assert time.monotonic() - t0 < 20  # not the provisioner's 30 s sleep: Packer stopped it
    assert outcome.interrupted_by == "SIGINT" and outcome.tracker.interrupted and not outcome.ok
    assert len(argvs) >= 2 and any("packer" in a for a in argvs)
    assert not any(SECRET in a for a in argvs), argvs


# --- Packer's environment and the build dir (nixgold.build helpers) --------------------------------------
def test_packer_environment_holds_exactly_the_secrets_packer_needs(tmp_path):
    from nixgold.build import keys as buildkeys
    from nixgold.packer.env import packer_environment
    from nixgold.config.credentials import Credentials

    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    key = buildkeys.generate(tmp_path / "b", "bid")
    assert key.private_key_file.stat().st_mode & 0o777 == 0o600 and key.private_key_file.is_absolute()
    base = {"PATH": "/usr/bin", "PROXMOX_TOKEN_SECRET": "tok-secret", "PROXMOX_PASSWORD": "pw-secret",
            "NIXGOLD_CONFIG": "/x", "PKR_VAR_other": "y", "PACKER_LOG": "1", "HOME": "/root"}
    creds = Credentials(url="https://pve:8006/api2/json", token_id="u@pve!t", token_secret="tok-secret",
                        username="u@pve", password="pw-secret", ca_bundle=str(ca))
    env = packer_environment(base, dialect="bundled", creds=creds, private_key_file=key.private_key_file,
                             public_key=key.public_key, build_id="bid", build_vm_name="golden-build-bid", commit="abc",
                             iso_url=None, iso_sha256=None)
    assert env["PKR_VAR_proxmox_password"] == "pw-secret" and "PKR_VAR_proxmox_token" not in env
    assert env["PKR_VAR_proxmox_username"] == "u@pve" and env["PKR_VAR_build_private_key_file"] == str(key.private_key_file)
    assert env["SSL_CERT_FILE"] == str(ca.resolve()) and env["CHECKPOINT_DISABLE"] == "1"
    assert not any(k.startswith(("PROXMOX_", "NIXGOLD_", "PACKER_LOG")) for k in env) and "PKR_VAR_other" not in env
    assert "tok-secret" not in env.values()
    plugin = packer_environment(base, dialect="plugin", creds=creds, private_key_file=key.private_key_file,
                                public_key=key.public_key, build_id="bid", build_vm_name="golden-build-bid",
                                commit="abc", iso_url="https://x/n.iso", iso_sha256="a" * 64)
    assert plugin["PKR_VAR_proxmox_token"] == "tok-secret" and plugin["PKR_VAR_proxmox_username"] == "u@pve!t"
    assert plugin["PKR_VAR_build_public_key"] == key.public_key and "pw-secret" not in plugin.values()
    assert plugin["PKR_VAR_iso_url"] == "https://x/n.iso"
    assert env["PKR_VAR_build_vm_name"] == plugin["PKR_VAR_build_vm_name"] == "golden-build-bid"
    # `packer version` / `plugins installed` / `init` get no secret and none of our variables at all
    from nixgold.packer.env import tool_environment

    tools = tool_environment({**base, "AWS_SECRET_ACCESS_KEY": "aws-secret", "RANDOM_VAR": "r"})
    assert tools == {"PATH": "/usr/bin", "HOME": "/root", "CHECKPOINT_DISABLE": "1"}


def test_overlay_replaces_rendered_files_keeping_modes(tmp_path):
    from nixgold.render.files import apply_overlay

    root, overlay = tmp_path / "root", tmp_path / "overlay"
    (root / "http").mkdir(parents=True)
    (root / "http" / "install.sh").write_text("nixos")
    (overlay / "http").mkdir(parents=True)
    (overlay / "packer").mkdir()
    (overlay / "http" / "install.sh").write_text("debian")
    (overlay / "http" / "install.sh").chmod(0o755)
    (overlay / "packer" / "cleanup.sh").write_text("clean")
    assert apply_overlay(root, overlay) == ["http/install.sh", "packer/cleanup.sh"]
    assert (root / "http" / "install.sh").read_text() == "debian"
    assert (root / "http" / "install.sh").stat().st_mode & 0o777 == 0o755
    with pytest.raises(Exception, match="not a directory"):
        apply_overlay(root, tmp_path / "missing")


def test_packer_166_iso_unmount_bug_is_recognised_only_after_conversion():
    from nixgold.build.builder import UNMOUNT_BUG, Builder
    from nixgold.packer.runner import BuildOutcome

    def outcome(*messages: tuple[str, str]) -> BuildOutcome:
        t = StageTracker("bundled")
        for i, (kind, text) in enumerate(messages):
            t.feed(parse_line(f"{i},,ui,{kind},==> nixgold.proxmox.nixos: {text.replace(',', output.COMMA)}"))
        return BuildOutcome(exit_status=1, tracker=t)

    builder = Builder.__new__(Builder)
    builder.dialect = "bundled"
    done = outcome(("say", "Stopping VM"), ("say", "Converting VM to template"),
                   ("say", "Adding a cloud-init cdrom in storage pool local"), ("error", UNMOUNT_BUG))
    assert builder._packer166_unmount_bug(done)
    assert not builder._packer166_unmount_bug(outcome(("say", "Typing the boot command"), ("error", UNMOUNT_BUG)))
    assert not builder._packer166_unmount_bug(outcome(("say", "Converting VM to template"), ("error", "other")))
    builder.dialect = "plugin"
    assert not builder._packer166_unmount_bug(done)


def test_real_complete_bundled_build_and_packer_166_unmount_bug():
    from nixgold.build.builder import UNMOUNT_BUG, Builder
    from nixgold.packer.runner import BuildOutcome

    t = feed("proxmox-bundled-built-unmount-bug.log")
    assert [s.name for s in t.spans] == [STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_INSTALL, STAGE_PROVISION,
                                         STAGE_CONVERT]
    assert t.errors == [UNMOUNT_BUG] and t.failed_stage == STAGE_CONVERT and t.artifact_id is None
    builder = Builder.__new__(Builder)
    builder.dialect = "bundled"
    assert builder._packer166_unmount_bug(BuildOutcome(exit_status=1, tracker=t))


def test_a_provisioner_scripts_stderr_is_guest_output_not_a_packer_error():
    """Real output: cleanup.sh logs on stderr, which Packer 1.6.6 prints as ui,error."""
    from nixgold.build.builder import UNMOUNT_BUG, Builder
    from nixgold.packer.runner import BuildOutcome

    t = feed("proxmox-bundled-standin-cleanup-stderr.log")
    assert any("nixgold-cleanup: step 1: reset cloud-init" in line for line in t.guest_stderr)
    assert any("nixgold-cleanup: cleanup finished" in line for line in t.guest_stderr)
    assert t.errors == [UNMOUNT_BUG] and t.failed_stage == STAGE_CONVERT
    builder = Builder.__new__(Builder)
    builder.dialect = "bundled"
    assert builder._packer166_unmount_bug(BuildOutcome(exit_status=1, tracker=t))


def feed_plugin(name: str, first_stage: str = STAGE_START) -> StageTracker:
    """A plugin-dialect fixture fed the way PackerRunner.build does (its first stage set up front)."""
    tracker = StageTracker("plugin")
    tracker.start(first_stage)
    for raw in (FIXTURES / name).read_text().splitlines():
        if raw.startswith("# ") and " validate " in raw:
            continue
        line = parse_line(raw)
        if line is not None and line.message != "The configuration is valid.":
            tracker.feed(line)
    tracker.finish()
    return tracker


PLUGIN_BUILD = [STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_INSTALL, STAGE_PROVISION, STAGE_CONVERT]


@pytest.mark.parametrize(("name", "first"), [("proxmox-plugin-uefi-download-built.log", STAGE_ISO),
                                             ("proxmox-plugin-bios-volume-built.log", STAGE_START)])
def test_real_plugin_builds_map_to_the_stages_in_order(name, first):
    """Packer 1.16.0 + packer-plugin-proxmox 1.2.4 through the test bed: the stage table gives every
    stage of a build, in order; PVE's download of the ISO says nothing, so it is the first stage."""
    t = feed_plugin(name, first)
    assert [s.name for s in t.spans] == [first, *PLUGIN_BUILD]
    assert t.errors == [] and t.failed_stage is None and not t.interrupted and t.build_errors == []
    assert t.artifact_id in ("9310", "9311")
    assert any("nixgold-cleanup: cleanup finished" in line for line in t.guest_stderr)


@pytest.mark.parametrize("name", ["proxmox-plugin-uefi-download-built.log", "proxmox-plugin-bios-volume-built.log",
                                  "proxmox-plugin-install-failed.log", "proxmox-plugin-interrupt-typing.log"])
def test_every_plugin_say_line_outside_provisioning_is_a_stage_or_noise(name):
    """What the plugin and Packer say themselves (not a provisioner's output) is in the stage table,
    Packer's cleanup, or its summary: no line of the real output goes unrecognised."""
    provisioning = False
    for raw in (FIXTURES / name).read_text().splitlines():
        line = parse_line(raw)
        if line is None or line.ui_kind != "say" or line.message == "The configuration is valid.":
            continue
        message = line.message
        stage = stage_for("plugin", message)
        if stage == STAGE_PROVISION:
            provisioning = True
        elif stage is not None or message in ("Stopping VM", "Deleting VM"):
            provisioning = False
        if provisioning:
            continue
        assert (stage is not None or message in ("Stopping VM", "Deleting VM") or output.NOISE_RE.match(message)
                or line.ui_text.startswith("--> ")), message


def test_real_plugin_interrupt_while_typing():
    t = feed_plugin("proxmox-plugin-interrupt-typing.log")
    assert t.interrupted and t.failed_stage == STAGE_TYPING
    assert [s.name for s in t.spans] == [STAGE_START, STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_CLEANUP]
    assert t.errors == ["Error running boot command: context canceled"] and t.artifact_id is None


def test_real_plugin_cleanup_after_nixgold_stopped_a_failed_install():
    t = feed_plugin("proxmox-plugin-install-failed.log")
    assert t.interrupted and t.failed_stage == STAGE_INSTALL
    assert [s.name for s in t.spans][-2:] == [STAGE_INSTALL, STAGE_CLEANUP] and t.artifact_id is None


def test_a_failing_provisioner_fails_the_provisioning_stage():
    def line(i: int, kind: str, text: str) -> str:
        return f"{i},,ui,{kind},==> nixgold.proxmox.nixos: {text.replace(',', output.COMMA)}"

    t = StageTracker("bundled")
    for i, raw in enumerate([
        line(1, "say", "Connected to SSH!"),
        line(2, "say", "Provisioning with shell script: /tmp/cleanup.sh"),
        line(3, "error", "nixgold-cleanup: step 1: reset cloud-init"),
        line(4, "error", "cloud-init: command not found"),
        "5,,error,Script exited with non-zero exit status: 127.Allowed exit codes are: [0]",
    ]):
        t.feed(parse_line(raw))
    assert t.guest_stderr == ["nixgold-cleanup: step 1: reset cloud-init", "cloud-init: command not found"]
    assert t.errors == [] and t.failed_stage == STAGE_PROVISION
    assert t.build_errors == ["Script exited with non-zero exit status: 127.Allowed exit codes are: [0]"]
