"""What a golden image must not carry into its clones: shared identities, build keys, a root password."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import KEY_FILES_DUMP, describe_key, failure, fingerprint, key_files, parse_key, \
    run, sudo

MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MACHINE_ID = "cat /etc/machine-id"
HOST_KEYS = "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null"
ROOT_SHADOW = "getent shadow root"


def probes(ctx):
    return [Probe(MACHINE_ID), Probe(HOST_KEYS), Probe(KEY_FILES_DUMP, as_root=True), Probe(ROOT_SHADOW, as_root=True)]


@pytest.mark.check("hygiene.machine-id", "every clone has its own machine-id")
def test_machine_ids_are_set_and_unique(clones):
    owners: dict[str, list[str]] = defaultdict(list)
    for c in clones:
        value = run(c.host, MACHINE_ID).stdout.strip()
        assert MACHINE_ID_RE.match(value) and value != "0" * 32, \
            f"{c.name}: /etc/machine-id is {value!r}, not a 32-hex-digit id"
        owners[value].append(c.name)
    shared = {mid: names for mid, names in owners.items() if len(names) > 1}
    assert not shared, "; ".join(f"{', '.join(names)} share machine-id {mid} (baked into the image)"
                                 for mid, names in shared.items())


@pytest.mark.check("hygiene.host-keys", "every clone has its own SSH host keys")
def test_host_keys_are_unique(clones):
    owners: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in clones:
        text = run(c.host, HOST_KEYS).stdout
        keys = {k[:2] for k in map(parse_key, text.splitlines()) if k}
        assert keys, f"{c.name}: no SSH host keys in /etc/ssh/ssh_host_*_key.pub"
        for key in keys:
            owners[key].append(c.name)
    shared = {key: names for key, names in owners.items() if len(names) > 1}
    assert not shared, "; ".join(f"{', '.join(names)} share the {t} host key {fingerprint(b)} (baked into the image)"
                                 for (t, b), names in shared.items())


@pytest.mark.check("hygiene.build-key", "no build key is left: every authorized key is the injected one or configured")
def test_no_unexpected_authorized_keys(host, ctx):
    allowed = {k[:2] for k in map(parse_key, (*ctx.allowed_keys, ctx.injected_public_key)) if k}
    stray = []
    for path, lines in key_files(host).items():
        root_file = path.startswith("/root/") or path == "/etc/ssh/authorized_keys.d/root"
        for line in lines:
            key = parse_key(line)
            if key is None:
                continue
            if key[:2] not in allowed:
                stray.append(f"{describe_key(*key)} in {path}")
            elif root_file and ctx.ciuser != "root" and "command=" not in line.split(key[0], 1)[0]:
                # cloud-init's disable_root puts the injected key there behind a forced command
                stray.append(f"{describe_key(*key)} in {path} (a root login key)")
    assert not stray, f"unexpected authorized key{'s' if len(stray) > 1 else ''}: {'; '.join(stray)}"


@pytest.mark.check("hygiene.root-password", "root's password is locked")
def test_root_password_locked(host):
    shadow = sudo(host, ROOT_SHADOW)
    assert shadow.rc == 0 and shadow.stdout.count(":") >= 2, f"cannot read root's shadow entry ({failure(shadow)})"
    hashed = shadow.stdout.split(":")[1]
    if hashed.startswith(("!", "*")):
        return
    if hashed == "":
        raise AssertionError("root has an EMPTY password: anyone at the console logs in as root")
    raise AssertionError("root has a usable password (not locked with ! or *): lock it with `passwd -l root`")
