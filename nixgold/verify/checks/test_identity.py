"""Who the clone is: its hostname (set by cloud-init) and the cloud-init user."""

from __future__ import annotations

import shlex

import pytest

from nixgold.verify.checks.helpers import failure, first_line, parse_key, run, sshd_settings, sudo


@pytest.mark.check("hostname.clone-name", "the hostname is the clone's name (set by cloud-init)")
def test_hostname_is_the_clone_name(host, clone):
    if clone.vmid == 0:
        pytest.skip("needs the clone's name from Proxmox (runs under `invoke verify`)")
    actual = run(host, "hostname").stdout.strip()
    assert actual.split(".")[0] == clone.name, \
        f"hostname is {actual!r}, not the clone's name {clone.name!r} (cloud-init sets it from the Proxmox VM name)"


@pytest.mark.check("user.exists", "the cloud-init user exists with a home and a login shell")
def test_ciuser_exists(host, ctx):
    user = host.user(ctx.ciuser)
    assert user.exists, f"user {ctx.ciuser!r} does not exist: cloud-init did not create it"
    assert host.file(user.home).is_directory, f"{ctx.ciuser}'s home {user.home} does not exist"
    assert not user.shell.endswith(("nologin", "false")), f"{ctx.ciuser} has no login shell ({user.shell})"


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


@pytest.mark.check("user.injected-key", "the cloud-init user's authorized keys hold the injected key")
def test_injected_key_is_authorized(host, ctx):
    if not ctx.injected_public_key:
        pytest.skip("no injected key known (pass --ssh-identity-file)")
    wanted = parse_key(ctx.injected_public_key)
    assert wanted is not None, "the injected public key does not parse"
    user = host.user(ctx.ciuser)
    assert user.exists, f"user {ctx.ciuser!r} does not exist"
    files = authorized_keys_files(host, ctx.ciuser, user.home)
    text = sudo(host, "cat " + " ".join(shlex.quote(f) for f in files) + " 2>/dev/null").stdout
    keys = {(k[0], k[1]) for k in map(parse_key, text.splitlines()) if k}
    assert (wanted[0], wanted[1]) in keys, \
        f"the injected key is not in {', '.join(files)} ({len(keys)} other key(s) there)"


@pytest.mark.check("user.sudo", "the cloud-init user has passwordless sudo")
def test_passwordless_sudo(host, ctx):
    result = run(host, "sudo -n true")
    assert result.rc == 0, f"`sudo -n true` as {ctx.ciuser} failed ({failure(result)})"
    whoami = run(host, "sudo -n id -u")
    assert whoami.stdout.strip() == "0", f"sudo does not give root (id -u: {first_line(whoami.stdout)})"
