"""Where a build comes from: its id and the git commit of the configuration it was made from."""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import signal
import subprocess
from pathlib import Path

log = logging.getLogger("nixgold.build")

#: Seconds each git command may take. Provenance is a label in the manifest: a slow or hanging
#: git (a network file system, a lock, a hook) must never cost the build.
GIT_TIMEOUT = 10.0


def new_build_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _git(directory: Path, *args: str, timeout: float) -> str | None:
    """stdout of ``git -C directory args`` when it exits 0 within ``timeout``, else None.

    git runs in its own process group, killed as a whole on timeout: a child it started
    (a hook, fsmonitor) would otherwise keep the output pipe open and the wait going.
    """
    try:
        proc = subprocess.Popen(["git", "-C", str(directory), *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True)
    except OSError:
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # a process outside the group holds the pipe: give up on it
            proc.kill()
            proc.wait()
        log.warning("`git %s` in %s took longer than %.0fs; not asked again", " ".join(args), directory, timeout)
        return None
    return out if proc.returncode == 0 else None


def git_commit(directory: Path, timeout: float = GIT_TIMEOUT) -> str:
    """``<12-digit commit>``, ``<commit>-dirty`` with uncommitted changes to tracked files, or
    ``unknown`` (not a git checkout, no git, or git did not answer within ``timeout`` seconds).
    When only the dirty check fails the commit is given without ``-dirty``."""
    head = _git(directory, "rev-parse", "--short=12", "HEAD", timeout=timeout)
    if head is None or not head.strip():
        return "unknown"
    status = _git(directory, "status", "--porcelain", "--untracked-files=no", timeout=timeout)
    return head.strip() + ("-dirty" if status is not None and status.strip() else "")
