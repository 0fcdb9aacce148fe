"""Packer as a subprocess: version, init, validate, and ``build`` under pexpect, every line redacted and logged."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from nixgold.errors import BuildError, PreflightError
from nixgold.packer.output import NOISE_RE, STAGE_START, StageSpan, StageTracker, parse_line
from nixgold.signals import Cancel


# --- running Packer ----------------------------------------------------------------------------------
@dataclass
class BuildOutcome:
    exit_status: int | None
    tracker: StageTracker
    interrupted_by: str | None = None  # signal name when nixgold forwarded an interrupt
    killed: bool = False  # Packer did not finish its cleanup in time and was killed
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.interrupted_by and not self.tracker.errors

@dataclass
class CommandResult:
    argv: list[str]
    exit_status: int
    output: str  # redacted

class PackerRunner:
    """Packer as a subprocess: secrets only in ``env``, every output line redacted and logged."""

    def __init__(self, path: str, *, env: Mapping[str, str], redact: Callable[[str], str],
                 log: TextIO | None = None, cwd: Path | None = None):
        self.path = path
        self.env = dict(env)
        self.redact = redact
        self.log = log
        self.cwd = cwd
        self._child = None  # the running pexpect child during build()
        self.interrupts: list[str] = []
        self._shown_errors: set[str] = set()

    # -- plain commands ---------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.log is not None:
            self.log.write(self.redact(text).rstrip("\n") + "\n")
            self.log.flush()

    def run(self, args: Sequence[str], timeout: float = 300.0) -> CommandResult:
        argv = [self.path, *args]
        self._log(f"# {' '.join(argv)}")
        try:
            proc = subprocess.run(argv, env=self.env, cwd=self.cwd, capture_output=True, text=True,
                                  timeout=timeout, errors="replace")
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PreflightError(f"`{' '.join(argv)}` did not run: {self.redact(str(exc))}") from exc
        output = self.redact((proc.stdout or "") + (proc.stderr or ""))
        self._log(output)
        self._log(f"# exit status {proc.returncode}")
        return CommandResult(argv, proc.returncode, output)

    def validate(self, template_dir: Path) -> CommandResult:
        """`packer validate` (BuildError naming the problem when Packer refuses the template)."""
        result = self.run(["validate", "-machine-readable", str(template_dir)], timeout=120)
        if result.exit_status != 0:
            lines = [p.message for p in map(parse_line, result.output.splitlines()) if p is not None and p.is_ui]
            text = "\n".join(lines) or result.output
            raise BuildError(f"packer validate rejected the rendered template:\n{text.strip()}",
                             stage="validating the template")
        return result

    def plugins_installed(self) -> str:
        result = self.run(["plugins", "installed"], timeout=60)
        return result.output if result.exit_status == 0 else ""

    def init(self, template_dir: Path) -> CommandResult:
        result = self.run(["init", str(template_dir)], timeout=600)
        if result.exit_status != 0:
            raise PreflightError(f"`packer init {template_dir}` failed (exit {result.exit_status}): the proxmox plugin "
                                 f"is not installed and could not be installed:\n{result.output.strip()[-1500:]}")
        return result

    # -- the build ------------------------------------------------------------------------------------
    def interrupt(self, signame: str = "SIGINT") -> bool:
        """Forward an interrupt to Packer (its process group). False when Packer is not running."""
        self.interrupts.append(signame)
        return self._forward_sigint()

    def _forward_sigint(self) -> bool:
        child = self._child
        if child is None or not child.isalive():
            return False
        try:
            os.killpg(child.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        child = self._child
        if child is not None and child.isalive():
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def build(self, template_dir: Path, *, dialect: str, on_error: str = "cleanup",
              on_stage: Callable[[StageSpan | None, StageSpan], None] | None = None,
              on_error_line: Callable[[str], None] | None = None,
              on_guest_line: Callable[[str], None] | None = None,
              on_tick: Callable[[StageTracker], None] | None = None,
              cancel: Cancel | None = None, say: Callable[[str], None] = lambda text: None,
              cleanup_timeout: float = 900.0, clock: Callable[[], float] = time.monotonic,
              first_stage: str = STAGE_START) -> BuildOutcome:
        """`packer build` under pexpect; returns when Packer exits (after its cleanup, if interrupted).

        ``cancel`` (:mod:`nixgold.signals`): the first signal is forwarded to Packer as SIGINT (it
        cleans up: stops and deletes the VM), the second only warns, the third kills Packer; so does
        the cleanup deadline. Everything runs in this loop, after every line and every quiet half
        second, so a Packer that prints all the time cannot starve it. ``first_stage``: the stage
        until Packer's first stage line (:data:`STAGE_ISO` when the PVE node downloads the ISO,
        which Packer does silently before ``Creating VM``).
        """
        import pexpect

        if on_error not in ("cleanup", "abort"):
            raise ValueError(f"on_error must be cleanup or abort, got {on_error!r}")
        cancel = cancel or Cancel()
        args = ["build", "-machine-readable", "-color=false", f"-on-error={on_error}", str(template_dir)]
        self._log(f"# {self.path} {' '.join(args)}")
        tracker = StageTracker(dialect, clock=clock, redact=self.redact)
        started = clock()
        first = tracker.start(first_stage)
        if on_stage:
            on_stage(*first)
        self._child = child = pexpect.spawn(self.path, args, env=self.env, cwd=str(self.cwd) if self.cwd else None,
                                            encoding="utf-8", codec_errors="replace", timeout=None, echo=False,
                                            dimensions=(50, 1000))
        interrupted_at: float | None = None
        killed = False
        signals_seen = 0
        last_tick = clock()
        if self.interrupts:  # interrupt() before Packer existed: forward it now
            self._forward_sigint()
        try:
            while True:
                index = child.expect(["\r?\n", pexpect.EOF, pexpect.TIMEOUT], timeout=0.5)
                if index == 0:
                    self._line(child.before, tracker, on_stage, on_error_line, on_guest_line)
                elif index == 1:
                    if child.before:
                        self._line(child.before, tracker, on_stage, on_error_line, on_guest_line)
                    break
                while signals_seen < cancel.count:
                    signals_seen += 1
                    name = cancel.interrupted_by or "SIGINT"
                    if signals_seen == 1:
                        say(f"{name} received: asking Packer to stop; waiting for its cleanup (it destroys the "
                            "build VM)")
                        self.interrupt(name)
                    elif signals_seen == 2:
                        say(f"{name} again: still waiting for Packer's cleanup; once more kills Packer "
                            "(nixgold then destroys the VM through the API)")
                    elif not killed:
                        say(f"{name}: killing Packer")
                        self.kill()
                        killed = True
                now = clock()
                if self.interrupts and interrupted_at is None:
                    interrupted_at = now
                if interrupted_at is not None and not killed and now - interrupted_at > cleanup_timeout:
                    self._log(f"# nixgold: Packer did not finish its cleanup within {cleanup_timeout:.0f}s; killing it")
                    say(f"Packer did not finish its cleanup within {cleanup_timeout:.0f}s: killing it")
                    self.kill()
                    killed = True
                if on_tick and now - last_tick >= 1.0:
                    last_tick = now
                    on_tick(tracker)
        except BaseException:
            # A bug in a callback or an unexpected exception: never leave Packer running alone.
            if child.isalive():
                self.interrupt("nixgold-error")
                try:
                    child.expect(pexpect.EOF, timeout=cleanup_timeout)
                except (pexpect.TIMEOUT, pexpect.EOF):
                    pass
            child.close(force=True)
            self._child = None
            raise
        try:
            child.wait()
        except pexpect.ExceptionPexpect:
            pass  # already reaped
        child.close()
        self._child = None
        tracker.finish()
        status = child.exitstatus if child.exitstatus is not None else (128 + (child.signalstatus or 0))
        self._log(f"# exit status {status}")
        return BuildOutcome(exit_status=status, tracker=tracker,
                            interrupted_by=self.interrupts[0] if self.interrupts else None,
                            killed=killed, seconds=clock() - started)

    def _line(self, raw: str, tracker: StageTracker, on_stage: Callable[..., None] | None,
              on_error_line: Callable[[str], None] | None,
              on_guest_line: Callable[[str], None] | None = None) -> None:
        raw = raw.rstrip("\r")
        if not raw:
            return
        self._log(raw)
        parsed = parse_line(raw)
        if parsed is None:
            return
        change = tracker.feed(parsed)
        if change is not None and on_stage:
            on_stage(*change)
        if tracker.is_guest_stderr(parsed):  # error lines never change the stage: same answer as in feed
            if on_guest_line:
                on_guest_line(self.redact(parsed.message.strip()))
        elif parsed.ui_kind == "error" and on_error_line:
            message = parsed.message.strip()
            if message and not NOISE_RE.match(message) and message not in self._shown_errors:
                self._shown_errors.add(message)
                on_error_line(self.redact(message))
