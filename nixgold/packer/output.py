"""What Packer says, understood: machine-readable lines, the stage each ``ui,say`` starts, the tail.

    packer = PackerRunner("/usr/bin/packer", env=packer_env, redact=redactor, log=log_file)
    packer.validate(build_dir / "packer")
    outcome = packer.build(build_dir / "packer", dialect="bundled", on_error="cleanup",
                           on_stage=lambda old, new: ..., say=progress.line)

Packer runs with ``-machine-readable -color=false``: every line is
``timestamp,target,type,data...`` with commas inside data written ``%!(PACKER_COMMA)`` and
newlines ``\\n``. Packer 1.6.6 does **not** redact ``sensitive`` variables in that mode (the human
UI prints ``<sensitive>``, ``ui,message`` lines carry the raw value; see
``tests/fixtures/packer-output/``), so every line goes through :class:`Redactor` before it
reaches the terminal or ``packer.log`` - in its escaped and its decoded form.

Stages come from :data:`STAGE_RULES`: per dialect, a table of (pattern on a ``ui,say`` message
-> nixgold stage) taken from the ``ui.Say`` strings of the builder's steps (Packer 1.6.6
``builder/proxmox/common`` + ``iso``, packer-plugin-proxmox v1.2.4 ``builder/proxmox/common``)
and of the SDK steps both use (``StepHTTPServer``, ``communicator.StepConnect``,
``StepProvision``). After a ``ui,error`` or an interrupt, ``Stopping VM`` / ``Deleting VM`` are
Packer's own cleanup (``stepStartVM.Cleanup``), not the conversion.

Packer runs in its own session on a pty (pexpect), so a terminal Ctrl-C reaches nixgold only;
:meth:`PackerRunner.interrupt` forwards SIGINT to Packer's process group and the build loop waits
for Packer's own cleanup to finish.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field
from typing import Callable

COMMA = "%!(PACKER_COMMA)"

_PREFIX_RE = re.compile(r"^(?:==> |--> |    )?(?P<target>[\w.-]+): (?P<text>.*)$", re.S)

# --- stages -------------------------------------------------------------------------------------
STAGE_ISO = "preparing the ISO"

STAGE_CREATE = "creating the VM"

STAGE_BOOT_WAIT = "boot wait"

STAGE_TYPING = "typing the boot command"

STAGE_INSTALL = "waiting for install/SSH"

STAGE_PROVISION = "provisioning"

STAGE_CONVERT = "converting to template"

STAGE_CLEANUP = "Packer cleanup"

STAGE_START = "starting Packer"

#: Stages in the order a successful build passes them.
STAGE_ORDER = (STAGE_START, STAGE_ISO, STAGE_CREATE, STAGE_BOOT_WAIT, STAGE_TYPING, STAGE_INSTALL,
               STAGE_PROVISION, STAGE_CONVERT)

@dataclass(frozen=True)
class StageRule:
    pattern: re.Pattern[str]
    stage: str
    source: str  # where the string comes from (file of the builder / SDK)

def _rule(pattern: str, stage: str, source: str) -> StageRule:
    return StageRule(re.compile(pattern), stage, source)

# Shared by both dialects (packer-plugin-sdk / Packer 1.6.6 common steps).
_SDK_RULES = (
    _rule(r"^Retrieving ISO|^Trying \S+|^Downloading ISO", STAGE_ISO, "sdk multistep/commonsteps/step_download.go"),
    _rule(r"^Starting HTTP server on port", STAGE_CREATE, "sdk multistep/commonsteps/step_http_server.go"),
    _rule(r"^Using ssh communicator|^Waiting for SSH to become available", STAGE_INSTALL,
          "sdk communicator/step_connect_ssh.go"),
    _rule(r"^Connected to SSH!|^Provisioning with |^Uploading .* => ", STAGE_PROVISION,
          "sdk communicator/step_connect_ssh.go, multistep/commonsteps/step_provision.go"),
)

#: Packer 1.6.6 (`apt install packer`): builder/proxmox/common/step_*.go and builder/proxmox/iso.
BUNDLED_RULES: tuple[StageRule, ...] = (
    _rule(r"^Uploading ISO", STAGE_ISO, "packer 1.6.6 builder/proxmox/iso/step_upload_iso.go"),
    _rule(r"^Creating VM$|^No VM ID given", STAGE_CREATE, "packer 1.6.6 builder/proxmox/common/step_start_vm.go"),
    _rule(r"^Starting VM$", STAGE_CREATE, "packer 1.6.6 builder/proxmox/common/step_start_vm.go"),
    _rule(r"^Waiting \S+ for boot$", STAGE_BOOT_WAIT, "packer 1.6.6 builder/proxmox/common/step_type_boot_command.go"),
    _rule(r"^Typing the boot command$", STAGE_TYPING, "packer 1.6.6 builder/proxmox/common/step_type_boot_command.go"),
    *_SDK_RULES,
    _rule(r"^Stopping VM$", STAGE_CONVERT, "packer 1.6.6 builder/proxmox/common/step_convert_to_template.go"),
    _rule(r"^Converting VM to template$", STAGE_CONVERT,
          "packer 1.6.6 builder/proxmox/common/step_convert_to_template.go"),
    _rule(r"^Adding a cloud-init cdrom", STAGE_CONVERT,
          "packer 1.6.6 builder/proxmox/common/step_finalize_template_config.go"),
)

#: packer-plugin-proxmox v1.2.4: the ``ui.Say`` strings of builder/proxmox/common/step_*.go, checked
#: against its real machine-readable output (tests/fixtures/packer-output/proxmox-plugin-*.log).
#: The ISO steps say nothing while they work: ``iso_download_pve`` (step_download_iso_on_pve.go)
#: only logs, and step_upload_iso.go reports with ``ui.Message`` once done; so a build that lets PVE
#: download the ISO starts in :data:`STAGE_ISO` (``PackerRunner.build(first_stage=...)``), and an
#: upload shows as the SDK's download step (``Retrieving ISO``) until ``Creating VM``.
PLUGIN_RULES: tuple[StageRule, ...] = (
    _rule(r"^Force set, checking for existing artifact|^found existing resource with ID|^Successfully deleted \d+$"
          r"|^No existing artifact found", STAGE_CREATE, "plugin v1.2.4 step_start_vm.go"),
    _rule(r"^Creating VM$|^No VM ID given|^Generated VM ID was already allocated", STAGE_CREATE,
          "plugin v1.2.4 step_start_vm.go"),
    _rule(r"^Starting VM$", STAGE_CREATE, "plugin v1.2.4 step_start_vm.go"),
    _rule(r"^Waiting \S+ for boot$", STAGE_BOOT_WAIT, "plugin v1.2.4 step_type_boot_command.go"),
    _rule(r"^Typing the boot command$", STAGE_TYPING, "plugin v1.2.4 step_type_boot_command.go"),
    *_SDK_RULES,
    _rule(r"^Stopping VM$", STAGE_CONVERT, "plugin v1.2.4 step_convert_to_template.go"),
    _rule(r"^Converting VM to template$", STAGE_CONVERT, "plugin v1.2.4 step_convert_to_template.go"),
    _rule(r"^Adding a cloud-init cdrom|^Hardware changes pending for VM|^Resuming VM$", STAGE_CONVERT,
          "plugin v1.2.4 step_finalize_config.go"),
)

STAGE_RULES: dict[str, tuple[StageRule, ...]] = {"bundled": BUNDLED_RULES, "plugin": PLUGIN_RULES}

#: What Packer says while cleaning up after an error or interrupt (stepStartVM.Cleanup, SDK).
_CLEANUP_RE = re.compile(r"^(Stopping VM|Deleting VM)$")

_INTERRUPT_RE = re.compile(r"^Cancelling build after receiving interrupt|^Interrupt received")

#: Summary lines that say nothing about the failure.
# ui,error lines during provisioning that are Packer's own (the rest is the script's stderr).
_PACKER_ERROR_RE = re.compile(r"^(?:==> |--> )?(?:[\w.-]+: )?(?:Error |Script exited with non-zero)")

NOISE_RE = re.compile(r"^(?:==> |--> )?(Wait completed after|Builds finished|Some builds didn't complete|Build '.*' (finished|errored)"
                       r"|Cleanly cancelled builds)")

def stage_for(dialect: str, message: str) -> str | None:
    """The nixgold stage a ``ui,say`` message (without the ``==> target:`` prefix) starts."""
    for rule in STAGE_RULES[dialect]:
        if rule.pattern.search(message):
            return rule.stage
    return None

# --- machine-readable lines -----------------------------------------------------------------------
@dataclass(frozen=True)
class MachineLine:
    """One ``-machine-readable`` line, decoded."""

    timestamp: int | None
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def is_ui(self) -> bool:
        return self.type == "ui" and len(self.data) >= 2

    @property
    def ui_kind(self) -> str | None:
        return self.data[0] if self.is_ui else None

    @property
    def ui_text(self) -> str:
        """The UI message as the human UI would print it (may hold newlines)."""
        return self.data[1] if self.is_ui else ""

    @property
    def message(self) -> str:
        """The UI message without Packer's ``==> build.source: `` / ``    build.source: `` prefix."""
        text = self.ui_text.lstrip("\n")
        m = _PREFIX_RE.match(text)
        return m.group("text") if m else text.strip()

def machine_readable_spellings(secret: str) -> tuple[str, ...]:
    """How ``-machine-readable`` output spells a secret: commas as ``%!(PACKER_COMMA)``, newlines as
    ``\\n`` (a redactor spelling: :meth:`nixgold.secrets.Redactor.add_spelling`)."""
    return secret.replace(",", COMMA), secret.replace("\n", "\\n").replace(",", COMMA)


def unescape(field_text: str) -> str:
    return field_text.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")

def parse_line(raw: str) -> MachineLine | None:
    """Decode one machine-readable line; None for anything else (blank lines, stray output)."""
    line = raw.rstrip("\r\n")
    parts = line.split(",")
    if len(parts) < 3 or not parts[0].isdigit() or not parts[2]:
        return None
    return MachineLine(timestamp=int(parts[0]), target=parts[1], type=parts[2],
                       data=tuple(unescape(p) for p in parts[3:]))

# --- stage tracking -----------------------------------------------------------------------------------
@dataclass
class StageSpan:
    name: str
    started: float
    ended: float | None = None

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

@dataclass
class StageTracker:
    """Feeds on machine-readable lines; knows the current stage, where it failed, the tail."""

    dialect: str
    clock: Callable[[], float] = time.monotonic
    redact: Callable[[str], str] = lambda text: text
    spans: list[StageSpan] = field(default_factory=list)
    failed_stage: str | None = None
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)  # ui,error messages (decoded, redacted)
    # What a provisioner's script wrote to stderr: Packer shows it as ui,error too, but it is the
    # guest's output (cleanup.sh logs its steps there), not a Packer error.
    guest_stderr: list[str] = field(default_factory=list)
    build_errors: list[str] = field(default_factory=list)  # "error" lines: the build's final error
    artifact: dict[str, str] = field(default_factory=dict)
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))

    def __post_init__(self) -> None:
        if self.dialect not in STAGE_RULES:
            raise ValueError(f"unknown dialect {self.dialect!r}")

    @property
    def current(self) -> str | None:
        return self.spans[-1].name if self.spans else None

    def is_guest_stderr(self, line: MachineLine) -> bool:
        """A ui,error line that is a provisioner script's stderr, not Packer's own error."""
        return (line.ui_kind == "error" and self.current == STAGE_PROVISION
                and not _PACKER_ERROR_RE.match(line.message))

    def start(self, name: str) -> tuple[StageSpan | None, StageSpan]:
        now = self.clock()
        old = self.spans[-1] if self.spans else None
        if old is not None and old.ended is None:
            old.ended = now
        span = StageSpan(name, now)
        self.spans.append(span)
        return old, span

    def finish(self) -> None:
        if self.spans and self.spans[-1].ended is None:
            self.spans[-1].ended = self.clock()

    def feed(self, line: MachineLine) -> tuple[StageSpan | None, StageSpan] | None:
        """Take one line; returns (ended span, new span) when a new stage begins."""
        if line.type == "artifact" and len(line.data) >= 3:
            self.artifact.setdefault(line.data[1], ",".join(line.data[2:]))
            return None
        if line.type == "error" and line.data:
            self.build_errors.append(self.redact(line.data[0]))
            if self.failed_stage is None and not self.interrupted:
                self.failed_stage = self.current
            return None
        if not line.is_ui:
            return None
        if line.ui_text.lstrip("\n").startswith("--> "):
            return None  # the end-of-run summary repeats each build's error or artifact
        message = line.message
        for text in line.ui_text.splitlines() or [""]:
            stripped = _PREFIX_RE.match(text.strip("\n"))
            shown = (stripped.group("text") if stripped else text).rstrip()
            if shown and not NOISE_RE.match(shown):
                shown = self.redact(shown)
                if not self.recent or self.recent[-1] != shown:
                    self.recent.append(shown)
        kind = line.ui_kind
        if kind == "error":
            if _INTERRUPT_RE.search(message):
                self.interrupted = True
                if self.failed_stage is None:
                    self.failed_stage = self.current
                return None
            if self.is_guest_stderr(line):
                self.guest_stderr.append(self.redact(message))
                return None
            if not NOISE_RE.match(message):
                self.errors.append(self.redact(message))
                if self.failed_stage is None:
                    self.failed_stage = self.current
            return None
        if kind != "say":
            return None
        if _INTERRUPT_RE.search(message):
            self.interrupted = True
            if self.failed_stage is None:
                self.failed_stage = self.current
            return None
        if (self.failed_stage is not None or self.interrupted) and _CLEANUP_RE.match(message):
            if self.current != STAGE_CLEANUP:
                return self.start(STAGE_CLEANUP)
            return None
        stage = stage_for(self.dialect, message)
        if stage is None or stage == self.current:
            return None
        if self.current is not None and self.current in STAGE_ORDER and stage in STAGE_ORDER \
                and STAGE_ORDER.index(stage) < STAGE_ORDER.index(self.current):
            return None  # e.g. a provisioner's own "Uploading" line: never go backwards
        return self.start(stage)

    def tail(self, lines: int = 15) -> list[str]:
        """The last relevant lines: recent output, ending with the errors Packer reported."""
        recent = list(self.recent)
        return recent[-lines:]

    @property
    def artifact_id(self) -> str | None:
        return self.artifact.get("id")
