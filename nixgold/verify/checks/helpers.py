"""Small helpers for check modules (also for your own checks in ``verify.checks_dir``).

    from nixgold.verify.checks.helpers import run, sudo

    def test_something(host):
        result = sudo(host, "cat /etc/shadow")
        assert result.rc == 0, f"cannot read /etc/shadow: {first_line(result.stderr)}"

Commands a module declares in its ``probes(ctx)`` are answered from the facts gathered in one SSH
command per clone (:mod:`nixgold.verify.checks.facts`); any other command runs over SSH.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
import shlex
from typing import Any

from nixgold.verify.checks.facts import DEFAULT_TIMEOUT, Probe, run_probe

_KEY_RE = re.compile(r"(?:^|\s)((?:ssh-|ecdsa-|sk-)[\w@.-]+)\s+([A-Za-z0-9+/]+={0,2})(?:\s+(.*))?$")


def run(host: Any, command: str, *, timeout: int = DEFAULT_TIMEOUT, as_root: bool = False) -> Any:
    """Run ``command`` with /bin/sh on the guest, bounded by ``timeout`` seconds (guest-side
    ``timeout``), as root through ``sudo -n`` when ``as_root``. Returns testinfra's CommandResult
    (the gathered answer when a module declared this probe)."""
    return run_probe(host, Probe(command, as_root, timeout))


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


def sshd_dump(user: str) -> str:
    """``sshd -T`` for a connection like ours by ``user`` (Match blocks applied): the client and
    server addresses come from this session's ``$SSH_CONNECTION`` (127.0.0.1 without one), which
    sudo does not pass on (env_reset), so it is read before. ``env PATH=...``: sudo looks the
    command up in secure_path when the sudoers set one (Debian), in our PATH when not (NixOS)."""
    return ("set -- $SSH_CONNECTION; c=${1:-127.0.0.1}; s=${3:-127.0.0.1}; "
            f"sudo -n env PATH=\"$PATH\" sshd -T -C user={shlex.quote(user)},host=$c,addr=$c,laddr=$s,lport=22")


def sshd_settings(host: Any, user: str) -> dict[str, str]:
    """:func:`sshd_dump` parsed, keys lower case (a repeated key's values joined with spaces).

    Raises AssertionError when sshd cannot dump its configuration."""
    result = run(host, sshd_dump(user))
    assert result.rc == 0, f"`sshd -T` failed ({failure(result)})"
    settings: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            settings[key.lower()] = f"{settings[key.lower()]} {value}" if key.lower() in settings else value
    return settings


def unit_show(*names: str) -> str:
    """One ``systemctl show`` of ``names``: systemd prints one block of properties per name, in
    the order given, a blank line between blocks, and exit status 0 also for a unit that does
    not exist (LoadState=not-found; systemd src/systemctl/systemctl-show.c: ``show()`` calls
    ``show_one()`` per name, which prints "\\n" before every block but the first)."""
    return ("systemctl show -p Id -p LoadState -p ActiveState -p SubState -p UnitFileState "
            + " ".join(shlex.quote(name) for name in names))


def unit_probes(*names: str) -> list[Probe]:
    """The probe :func:`systemd_unit` runs for ``names``."""
    return [Probe(unit_show(*names))]


def systemd_unit(host: Any, *names: str) -> dict[str, str]:
    """The properties (Id, states) of the first of ``names`` that is loaded; {} if none is (or
    ``systemctl show`` fails). One command for all of them (:func:`unit_show`)."""
    result = run(host, unit_show(*names))
    if result.rc != 0:
        return {}
    for block in result.stdout.split("\n\n")[:len(names)]:
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("LoadState") == "loaded":
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


#: Where authorized keys live on the images nixgold makes and checks: root's and every home's
#: ~/.ssh/authorized_keys*, and NixOS' per-user files (nixpkgs nixos/modules/services/networking/ssh/sshd.nix:
#: ``AuthorizedKeysFile`` ``%h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u``).
KEY_FILES = ("/root/.ssh/authorized_keys*", "/home/*/.ssh/authorized_keys*", "/etc/ssh/authorized_keys.d/*")
#: Every regular file matching :data:`KEY_FILES` with its content, as root (one ``==> path`` line before each).
KEY_FILES_DUMP = ("for f in " + " ".join(KEY_FILES) + "; do [ -f \"$f\" ] || continue; "
                  "printf '==> %s\\n' \"$f\"; cat \"$f\"; echo; done")


def key_files(host: Any) -> dict[str, list[str]]:
    """Every authorized_keys file of :data:`KEY_FILES` on the guest -> its lines (read as root)."""
    result = sudo(host, KEY_FILES_DUMP)
    assert result.rc == 0, f"cannot read the authorized_keys files ({failure(result)})"
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.stdout.splitlines():
        if line.startswith("==> "):
            current = files.setdefault(line[4:], [])
        elif current is not None:
            current.append(line)
    return files


def glob_covers(pattern: str, path: str) -> bool:
    """Whether the shell glob ``pattern`` matches ``path`` (``*`` stays inside one path segment and
    does not match a leading dot)."""
    wanted, parts = pattern.split("/"), path.split("/")
    if len(wanted) != len(parts):
        return False
    return all(fnmatch.fnmatchcase(part, glob) and (not part.startswith(".") or glob.startswith("."))
               for glob, part in zip(wanted, parts))
