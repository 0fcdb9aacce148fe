"""Who the clone is: its hostname (set by cloud-init) and the cloud-init user."""

from __future__ import annotations

import shlex

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import KEY_FILES, KEY_FILES_DUMP, failure, first_line, glob_covers, key_files, \
    parse_key, run, sshd_dump, sshd_settings, sudo

HOSTNAME = "hostname"
SUDO_UID = "sudo -n id -u"  # its exit status: sudo works without a password; its output: as root


def passwd_entry(user: str) -> str:
    return f"getent passwd {shlex.quote(user)}"


def home_is_directory(user: str) -> str:
    return f'test -d "$(getent passwd {shlex.quote(user)} | cut -d: -f6)"'


def probes(ctx):
    return [Probe(HOSTNAME), Probe(passwd_entry(ctx.ciuser)), Probe(home_is_directory(ctx.ciuser)),
            Probe(sshd_dump(ctx.ciuser)), Probe(KEY_FILES_DUMP, as_root=True), Probe(SUDO_UID)]


@pytest.mark.check("hostname.clone-name", "the hostname is the clone's name (set by cloud-init)")
def test_hostname_is_the_clone_name(host, clone):
    if clone.vmid == 0:
        pytest.skip("needs the clone's name from Proxmox (runs under `invoke verify`)")
    actual = run(host, HOSTNAME).stdout.strip()
    assert actual.split(".")[0] == clone.name, \
        f"hostname is {actual!r}, not the clone's name {clone.name!r} (cloud-init sets it from the Proxmox VM name)"


def user_entry(host, user: str) -> tuple[str, str] | None:
    """(home, login shell) of ``user`` from the passwd database (NSS); None: no such user."""
    entry = run(host, passwd_entry(user))
    fields = first_line(entry.stdout).split(":")
    if entry.rc != 0 or len(fields) < 7:
        return None
    return fields[5], fields[6]


@pytest.mark.check("user.exists", "the cloud-init user exists with a home and a login shell")
def test_ciuser_exists(host, ctx):
    entry = user_entry(host, ctx.ciuser)
    assert entry is not None, f"user {ctx.ciuser!r} does not exist: cloud-init did not create it"
    home, shell = entry
    assert run(host, home_is_directory(ctx.ciuser)).rc == 0, f"{ctx.ciuser}'s home {home} does not exist"
    assert not shell.endswith(("nologin", "false")), f"{ctx.ciuser} has no login shell ({shell})"


def authorized_keys_files(host, user: str, home: str) -> list[str]:
    """The files sshd reads keys from for ``user`` (AuthorizedKeysFile, %h/%u/%% expanded)."""
    try:
        patterns = sshd_settings(host, user).get("authorizedkeysfile", "").split()
    except AssertionError:
        patterns = []
    patterns = patterns or [".ssh/authorized_keys", ".ssh/authorized_keys2"]
    files = []
    for pattern in patterns:
        path = pattern.replace("%%", "\0").replace("%h", home).replace("%u", user).replace("\0", "%")
        files.append(path if path.startswith("/") else f"{home.rstrip('/')}/{path}")
    return files


def authorized_keys_text(host, files: list[str]) -> str:
    """What ``files`` hold, read as root (missing files count as empty): from the dump of every
    authorized_keys file when that covers them all, else with ``cat``."""
    if all(any(glob_covers(pattern, f) for pattern in KEY_FILES) for f in files):
        dump = key_files(host)
        return "\n".join(line for f in files for line in dump.get(f, []))
    return sudo(host, "cat " + " ".join(shlex.quote(f) for f in files) + " 2>/dev/null").stdout


@pytest.mark.check("user.injected-key", "the cloud-init user's authorized keys hold the injected key")
def test_injected_key_is_authorized(host, ctx):
    if not ctx.injected_public_key:
        pytest.skip("no injected key known (pass --ssh-identity-file)")
    wanted = parse_key(ctx.injected_public_key)
    assert wanted is not None, "the injected public key does not parse"
    entry = user_entry(host, ctx.ciuser)
    assert entry is not None, f"user {ctx.ciuser!r} does not exist"
    files = authorized_keys_files(host, ctx.ciuser, entry[0])
    text = authorized_keys_text(host, files)
    keys = {(k[0], k[1]) for k in map(parse_key, text.splitlines()) if k}
    assert (wanted[0], wanted[1]) in keys, \
        f"the injected key is not in {', '.join(files)} ({len(keys)} other key(s) there)"


@pytest.mark.check("user.sudo", "the cloud-init user has passwordless sudo")
def test_passwordless_sudo(host, ctx):
    whoami = run(host, SUDO_UID)
    assert whoami.rc == 0, f"`{SUDO_UID}` as {ctx.ciuser} failed ({failure(whoami)})"
    assert whoami.stdout.strip() == "0", f"sudo does not give root (id -u: {first_line(whoami.stdout)})"
