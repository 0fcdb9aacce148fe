"""Small helpers for check modules (also for your own checks in ``verify.checks_dir``).

    from nixgold.verify.checks.helpers import run, sudo

    def test_something(host):
        result = sudo(host, "cat /etc/shadow")
        assert result.rc == 0, f"cannot read /etc/shadow: {first_line(result.stderr)}"
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from typing import Any

#: Prepended to PATH for every command: NixOS keeps its tools under /run/current-system/sw/bin and
#: sudo under /run/wrappers/bin; Debian keeps sshd in /usr/sbin.
EXTRA_PATH = "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 60

_KEY_RE = re.compile(r"(?:^|\s)((?:ssh-|ecdsa-|sk-)[\w@.-]+)\s+([A-Za-z0-9+/]+={0,2})(?:\s+(.*))?$")


def run(host: Any, command: str, *, timeout: int = DEFAULT_TIMEOUT, as_root: bool = False) -> Any:
    """Run ``command`` with /bin/sh on the guest, bounded by ``timeout`` seconds (guest-side
    ``timeout``), as root through ``sudo -n`` when ``as_root``. Returns testinfra's CommandResult."""
    inner = f"export PATH={EXTRA_PATH}:\"$PATH\"; {command}"
    prefix = "sudo -n " if as_root else ""
    return host.run(f"export PATH={EXTRA_PATH}:\"$PATH\"; timeout -k 5 {int(timeout)} "
                    f"{prefix}/bin/sh -c {shlex.quote(inner)}")


def sudo(host: Any, command: str, *, timeout: int = DEFAULT_TIMEOUT) -> Any:
    return run(host, command, timeout=timeout, as_root=True)


def first_line(text: str | bytes | None, default: str = "") -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for line in (text or "").splitlines():
        if line.strip():
            return " ".join(line.split())
    return default


def last_line(text: str | bytes | None, default: str = "") -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else default


def failure(result: Any) -> str:
    """``exit N: <last line of stderr, else of stdout>`` for a failed command (warnings come first)."""
    return f"exit {result.rc}: {last_line(result.stderr) or last_line(result.stdout) or 'no output'}"


def parse_key(line: str) -> tuple[str, str, str] | None:
    """(type, base64 blob, comment) of an authorized_keys / .pub line (options prefix allowed)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    m = _KEY_RE.search(line)
    if not m:
        return None
    return m.group(1), m.group(2), (m.group(3) or "").strip()


def fingerprint(blob: str) -> str:
    """OpenSSH's SHA256 fingerprint of a base64 key blob."""
    try:
        raw = base64.b64decode(blob, validate=False)
    except ValueError:
        raw = blob.encode()
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def describe_key(key_type: str, blob: str, comment: str = "") -> str:
    return f"{key_type} {fingerprint(blob)}" + (f" ({comment})" if comment else "")


def ssh_connection(host: Any) -> tuple[str, str]:
    """(client address, server address) of this SSH session, for ``sshd -T -C``."""
    parts = host.run("echo $SSH_CONNECTION").stdout.split()
    if len(parts) >= 4:
        return parts[0], parts[2]
    return "127.0.0.1", "127.0.0.1"


def sshd_settings(host: Any, user: str) -> dict[str, str]:
    """``sshd -T`` for a connection like ours by ``user`` (Match blocks applied), keys lower case.

    Raises AssertionError when sshd cannot dump its configuration."""
    client, server = ssh_connection(host)
    spec = f"user={user},host={client},addr={client},laddr={server},lport=22"
    result = sudo(host, f"sshd -T -C {shlex.quote(spec)}")
    assert result.rc == 0, f"`sshd -T` failed ({failure(result)})"
    settings: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            settings[key.lower()] = f"{settings[key.lower()]} {value}" if key.lower() in settings else value
    return settings


def systemd_unit(host: Any, *names: str) -> dict[str, str]:
    """``systemctl show`` of the first of ``names`` that is loaded (Id, states); {} if none is."""
    for name in names:
        result = host.run(f"systemctl show -p Id -p LoadState -p ActiveState -p SubState -p UnitFileState "
                          f"{shlex.quote(name)}")
        props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        if result.rc == 0 and props.get("LoadState") == "loaded":
            return props
    return {}


#: UnitFileState values of a unit that does not start by itself at boot.
NOT_ENABLED = ("disabled", "masked", "masked-runtime", "bad", "")


def unit_problem(props: dict[str, str], name: str) -> str | None:
    """Why a unit is not enabled-and-running (None if it is)."""
    if not props:
        return f"{name} is not installed (no such systemd unit)"
    unit = props.get("Id", name)
    state = props.get("UnitFileState", "")
    if state in NOT_ENABLED:
        return f"{unit} is {state or 'not enabled'}: it would not start at boot"
    if props.get("ActiveState") != "active":
        return f"{unit} is {props.get('ActiveState')} ({props.get('SubState')}), not running"
    return None
