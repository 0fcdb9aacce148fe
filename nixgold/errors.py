"""One error root for nixgold, and the one place where errors become exit codes.

Library code raises subclasses of :class:`NixgoldError`; ``tasks.py`` turns them into
``invoke.Exit(message, code)`` through :func:`exit_code_for`. Anything that is not a
``NixgoldError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Documented exit codes (README "Exit codes")."""

    OK = 0
    INTERNAL = 1  # a bug: unexpected exception, traceback shown
    CONFIG = 2  # bad config file, flag, lock file or environment
    PREFLIGHT = 3  # something checked before touching the cluster is wrong
    BUILD = 4  # packer build failed
    VERIFY = 5  # the template was checked and at least one check failed
    INFRA = 6  # Proxmox API / network / guest never came up (not the image's fault)
    LOCKED = 7  # refresh: another refresh of this template is running
    NOT_PROMOTED = 8  # refresh: the candidate passed and is staged, but linked clones pin the template
    PROMOTED = 10  # refresh: a new verified template is in place (success, like terraform's "changes")
    INTERRUPTED = 130  # SIGINT / SIGTERM; cleanup ran
    # `invoke refresh` outcomes that share a code with the above (README "Exit codes"):
    UP_TO_DATE = 0  # nothing to build: the promoted template was built from the same inputs and passed
    BUILD_FAILED_OLD_KEPT = 4  # the candidate's build failed; the promoted template was not touched
    VERIFY_FAILED_OLD_KEPT = 5  # the candidate failed verification; the promoted template was not touched


class NixgoldError(Exception):
    """Root of every error nixgold reports to a user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    @property
    def cleanup_problems(self) -> list[str]:
        return list(getattr(self, "_cleanup_problems", []))

    def add_cleanup_problem(self, text: str) -> None:
        """Attach a problem of the cleanup that followed this error: the error (and its exit code)
        stays what is reported, the cleanup's trouble is said after it."""
        self._cleanup_problems = [*self.cleanup_problems, text]
        first = self.args[0] if self.args else ""
        self.args = (f"{first}\n  and the cleanup after it: {text}", *self.args[1:])


class Hidden:
    """Stands in for a value that must not be printed (it holds or may hold a secret)."""

    def __init__(self, why: str):
        self.why = why

    def __repr__(self) -> str:
        return f"<not shown: {self.why}>"


@dataclass(frozen=True)
class ConfigIssue:
    """One bad value: where it is, what it was, what was expected."""

    key: str
    value: object
    expected: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: expected {self.expected}"


class ConfigError(NixgoldError, ValueError):
    """The config (file, env or flags) is invalid. Carries every issue found."""

    exit_code = ExitCode.CONFIG

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue, source: str | None = None):
        self.issues = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid configuration{where}:"] + [f"  - {i}" for i in self.issues]
        super().__init__("\n".join(lines))


class LockError(NixgoldError):
    """nixgold.lock is missing, stale, or cannot be resolved (e.g. offline)."""

    exit_code = ExitCode.CONFIG


class RenderError(NixgoldError):
    """A template failed to render or produced output that does not validate."""

    exit_code = ExitCode.INTERNAL


class BootCommandError(NixgoldError, ValueError):
    """A boot_command step or string breaks Packer's grammar or our lint rules."""

    exit_code = ExitCode.CONFIG


class PreflightError(NixgoldError):
    """A check before the build failed (packer missing, privilege missing, ...)."""

    exit_code = ExitCode.PREFLIGHT


class BuildError(NixgoldError):
    """packer build failed; ``stage`` names where and ``tail`` holds the last lines."""

    exit_code = ExitCode.BUILD

    def __init__(self, message: str, stage: str | None = None, tail: list[str] | None = None,
                 tail_title: str = "last packer output"):
        self.stage = stage
        self.tail = tail or []
        text = message if stage is None else f"build failed during '{stage}': {message}"
        if self.tail:
            text += f"\n  {tail_title}:\n" + "\n".join(f"    {line}" for line in self.tail)
        super().__init__(text)


class ProxmoxError(NixgoldError):
    """The Proxmox API answered with an error or could not be reached."""

    exit_code = ExitCode.INFRA

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class ProxmoxTaskError(ProxmoxError):
    """A Proxmox task (UPID) ended with an exitstatus other than OK/WARNINGS, or was no longer waited
    for (``still_running``: a timeout or a cancel ended the wait, not the task)."""

    def __init__(self, upid: str, exitstatus: str, log_tail: list[str] | None = None, *,
                 still_running: bool = False):
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_tail = log_tail or []
        self.still_running = still_running
        text = f"task {upid} failed: {exitstatus}"
        if self.log_tail:
            text += "\n  task log:\n" + "\n".join(f"    {line}" for line in self.log_tail)
        super().__init__(text)


class VerifyError(NixgoldError):
    """At least one verification check failed (the image is bad)."""

    exit_code = ExitCode.VERIFY


class RefreshLocked(NixgoldError):
    """Another refresh of the same template holds the lock (locally or in the cluster)."""

    exit_code = ExitCode.LOCKED


class NotPromoted(NixgoldError):
    """The candidate passed verification but was not promoted (linked clones pin the template)."""

    exit_code = ExitCode.NOT_PROMOTED


class Interrupted(NixgoldError):
    """SIGINT/SIGTERM arrived; cleanup has run."""

    exit_code = ExitCode.INTERRUPTED


def exit_code_for(exc: BaseException) -> int:
    """Map any exception to the process exit code (the single mapping point)."""
    if isinstance(exc, NixgoldError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INTERNAL)
