"""Stand-in cloud images (tests/testbed/images): recipe hash, cache, and that the ``good``
image boots on plain QEMU (no simulator) healthy.

The guest boots (TCG) on a private netns bridge with dnsmasq DHCP and a NoCloud seed ISO, as
a Proxmox clone would; checks run over SSH (paramiko, connected from inside the namespace),
the serial log, QMP and the guest-agent socket. Images are built on first use and cached in
~/.cache/nixgold-testbed.

That each *broken* variant boots and shows its defect is proven once, where it matters: by
``tests/test_checks_cli.py``, which runs ``invoke verify`` on every variant and requires exactly
the variant's check to fail (and ``tests/test_checks_vm.py`` shows each check passing on a
healthy clone). Booting them here too cost ~6 minutes of TCG for no extra evidence.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.testbed.images import CMDLINE, VARIANTS, build_image, recipe_hash
from tests.testbed.images.base import PACKAGES, default_cache_dir
from tests.testbed.images.build import PART_START
from tests.testbed.images.guest import Guest, make_seed_iso, random_mac
from tests.testbed.net import TestbedNetwork

USER = "ops"
CLONE_DISK = 3 << 30  # the image is 2 GiB: the clone's disk was enlarged
# Generous: TCG on 2 shared cores; an idle machine needs ~1-2 min per guest.
BOOT_TIMEOUT = 900
# pytest-timeout counts fixture setup: the first test using `fleet` boots it.
FLEET_TIMEOUT = 2400
BOOT_CONCURRENCY = int(os.environ.get("NIXGOLD_TESTBED_BOOT_CONCURRENCY", "3"))

# label -> variant booted here (the broken variants boot in tests/test_checks_cli.py)
GUESTS = {"good-a": "good"}

# The health checks each variant fails (good: none; clones-alike: the two only two clones show);
# test_checks_cli.py names nixgold's checks.
EXPECTED_DEFECT = {
    "good": set(),
    "agent-off": {"qemu-guest-agent"},
    "sshd-password": {"ssh-password-auth"},
    "clones-alike": {"machine-id", "host-keys"},
    "cloud-init-fails": {"cloud-init"},
}


# ------------------------------------------------------------------ unit-ish
def test_variants_cover_the_verifier_negatives():
    assert set(VARIANTS) == set(EXPECTED_DEFECT)
    from tests.test_checks_cli import CASES

    assert {c.variant for c in CASES} == set(VARIANTS) - {"good"}


def test_recipe_hash_is_stable_and_tracks_the_recipe():
    h = recipe_hash("good")
    assert h == recipe_hash("good") == recipe_hash(VARIANTS["good"])
    assert len(h) == 16 and int(h, 16) >= 0
    assert len({recipe_hash(v) for v in VARIANTS}) == len(VARIANTS)
    # A flipped switch, an extra package, another suite or mirror: another image.
    assert recipe_hash(dataclasses.replace(VARIANTS["good"], ssh_password_auth=True)) != h
    assert recipe_hash(dataclasses.replace(VARIANTS["good"], agent_enabled=False)) != h
    assert recipe_hash("good", packages=(*PACKAGES, "vim-tiny")) != h
    assert recipe_hash("good", packages=tuple(reversed(PACKAGES))) == h  # order is irrelevant
    assert recipe_hash("good", suite="trixie") != h
    assert recipe_hash("good", mirror="http://mirror.invalid/debian") != h
    # The description is documentation, not recipe.
    assert recipe_hash(dataclasses.replace(VARIANTS["good"], description="x")) == h
    with pytest.raises(ValueError, match="unknown image variant"):
        recipe_hash("nope")


@pytest.mark.vm
@pytest.mark.slow
def test_build_is_cached(record_property):
    # this entry's only: a persistent cache may hold a killed run's, the other worker may be building
    mine = f".tmp-good-{recipe_hash('good')}-*"
    before = set(default_cache_dir().glob(mine))
    first = build_image("good")  # cold on a fresh machine, cached afterwards
    t0 = time.monotonic()
    again = build_image("good")
    elapsed = time.monotonic() - t0
    assert again.built is False
    assert elapsed < 1.0, f"cache hit took {elapsed:.2f}s"
    assert again == dataclasses.replace(first, built=False, seconds=again.seconds)
    meta = again.metadata()
    assert meta["variant"] == "good" and meta["recipe_hash"] == again.recipe_hash == recipe_hash("good")
    assert meta["cmdline"] == CMDLINE == again.cmdline
    for pkg in ("cloud-init", "openssh-server", "qemu-guest-agent"):
        assert meta["package_versions"][pkg]
    assert again.path.name == f"good-{again.recipe_hash}"
    for f in (again.disk, again.kernel, again.initrd):
        assert f.is_file() and f.parent == again.path
    left = set(again.path.parent.glob(mine)) - before
    assert not left, f"temporary build directories left: {sorted(left)}"
    record_property("cold_build_seconds", meta["build_seconds"])
    record_property("cached_seconds", round(elapsed, 3))
    print(f"\nimage good: cold build {meta['build_seconds']}s (base debootstrap {meta['base_build_seconds']}s), "
          f"cached {elapsed * 1000:.1f} ms")


def test_a_dead_builders_temporary_directories_go_with_the_next_build(tmp_path, monkeypatch):
    """Under the entry's lock no other builder of it runs: its ``.tmp-`` directory in the cache and its
    scratch tree in the work root are a killed build's (no ``finally`` ran), and the next build of that
    entry removes them; other entries' are left alone."""
    from tests.testbed.images import base
    from tests.testbed.images import build as image_build

    rh = recipe_hash("good")
    shm, tmpdir = tmp_path / "shm", tmp_path / "tmp"
    monkeypatch.setattr(base, "work_root", lambda *a, **k: shm)
    monkeypatch.setattr(base.tempfile, "gettempdir", lambda: str(tmpdir))  # where a build goes without shm
    dead = [tmp_path / f".tmp-good-{rh}-x1", shm / f"nixgold-good-{rh}-x2", tmpdir / f"nixgold-good-{rh}-x5"]
    alive = [tmp_path / f".tmp-nixos-like-{recipe_hash('nixos-like')}-x3", shm / f"nixgold-good-{'0' * 16}-x4"]
    for d in (*dead, *alive):
        (d / "sub").mkdir(parents=True)
    built = []
    monkeypatch.setattr(image_build, "_build", lambda v, *a, **k: built.append([d.exists() for d in dead]))
    monkeypatch.setattr(image_build, "_info", lambda path, **k: path)
    assert build_image("good", tmp_path, log=None) == tmp_path / f"good-{rh}"
    assert built == [[False, False, False]] and all(d.is_dir() for d in alive)


def test_console_cmdline():
    assert "console=ttyS0,115200" in CMDLINE.split()
    assert any(a.startswith("root=LABEL=") or a.startswith("root=UUID=") for a in CMDLINE.split())


# --------------------------------------------------------------- booted guests
FACTS_SCRIPT = r"""
import json, os, pwd, socket, subprocess
def sh(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()}
f = {}
# Wait for cloud-init's final stage without `cloud-init status --wait` (one
# more Python start costs seconds of CPU under TCG).
f["ci_wait"] = sh("timeout 600 sh -c 'until [ -e /run/cloud-init/result.json ]; do sleep 1; done'")
f["ci_long"] = sh("cloud-init status --long")
f["boot_finished"] = os.path.exists("/var/lib/cloud/instance/boot-finished")
try:
    f["ci_result"] = json.load(open("/run/cloud-init/result.json"))
except Exception as e:
    f["ci_result"] = {"error": str(e)}
f["hostname"] = socket.gethostname()
u = pwd.getpwnam(USER)
f["home"] = u.pw_dir
try:
    f["authorized_keys"] = open(os.path.join(u.pw_dir, ".ssh/authorized_keys")).read()
except Exception as e:
    f["authorized_keys"] = ""
f["sudo"] = sh("sudo -n true")
f["sudo_l"] = sh("sudo -n -l")
for unit in ("ssh.service", "sshd", "qemu-guest-agent", "tty1-line-logger", "serial-getty@ttyS0.service"):
    f["enabled:" + unit] = sh("systemctl is-enabled " + unit)["out"]
    f["active:" + unit] = sh("systemctl is-active " + unit)["out"]
f["listen22"] = sh("ss -Hltn 'sport = :22'")["out"]
f["sshd_T"] = sh("sudo -n sshd -T")["out"]
f["qga_port"] = os.path.exists("/dev/virtio-ports/org.qemu.guest_agent.0")
f["machine_id"] = open("/etc/machine-id").read().strip()
f["host_keys"] = sh("cat /etc/ssh/ssh_host_*_key.pub")["out"]
f["root_shadow"] = sh("sudo -n getent shadow root")["out"]
st = os.statvfs("/")
f["root_fs_bytes"] = st.f_blocks * st.f_frsize
f["disk_bytes"] = int(open("/sys/block/vda/size").read()) * 512
f["part_bytes"] = int(open("/sys/block/vda/vda1/size").read()) * 512
f["cmdline"] = open("/proc/cmdline").read().strip()
f["failed_units"] = sh("systemctl --failed --no-legend --plain")["out"]
print(json.dumps(f))
"""


def _keypair() -> tuple[paramiko.PKey, str]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{pub} nixgold-testbed"


def _ssh(net: TestbedNetwork, ip: str, pkey: paramiko.PKey, deadline: float) -> paramiko.SSHClient:
    """Connect from inside the namespace, retrying until sshd accepts our key."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with net.enter():
                sock = socket.create_connection((ip, 22), timeout=5)
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            client.connect(
                ip, username=USER, pkey=pkey, sock=sock, allow_agent=False, look_for_keys=False,
                timeout=30, banner_timeout=60, auth_timeout=60,
            )
            return client
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = exc
            time.sleep(2)
    raise TimeoutError(f"no SSH to {ip}: {last!r}")


def _run(client: paramiko.SSHClient, cmd: str, stdin: str | None = None, timeout: float = 630) -> str:
    chan_in, chan_out, chan_err = client.exec_command(cmd, timeout=timeout)
    if stdin is not None:
        chan_in.write(stdin)
        chan_in.channel.shutdown_write()
    out = chan_out.read().decode()
    rc = chan_out.channel.recv_exit_status()
    if rc != 0:
        raise AssertionError(f"{cmd!r} exited {rc}: {chan_err.read().decode()}")
    return out


def _offered_auth(net: TestbedNetwork, ip: str) -> list[str]:
    """The authentication methods sshd offers (what an attacker sees)."""
    with net.enter():
        sock = socket.create_connection((ip, 22), timeout=10)
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=60)
        try:
            t.auth_none(USER)
        except paramiko.BadAuthenticationType as exc:
            return sorted(exc.allowed_types)
        return ["none"]
    finally:
        t.close()


@dataclasses.dataclass
class Booted:
    label: str
    variant: str
    guest: Guest
    image_meta: dict
    ip: str = ""
    boot_to_ssh: float = 0.0
    boot_to_ready: float = 0.0
    facts: dict = dataclasses.field(default_factory=dict)
    server_key: str = ""
    auth_methods: list = dataclasses.field(default_factory=list)
    client: paramiko.SSHClient | None = None
    error: str = ""


@pytest.fixture(scope="module")
def images():
    return {v: build_image(v) for v in set(GUESTS.values())}


@pytest.fixture(scope="module")
def fleet(images, tmp_path_factory):
    """Boot the guests of GUESTS, a few at a time; collect facts over SSH."""
    work = tmp_path_factory.mktemp("guests")
    net = TestbedNetwork(
        netns=f"ngimg-{os.getpid()}",
        subnet="10.97.0.0/24",
        host_ip="10.97.0.1/24",
        dhcp_range=("10.97.0.100", "10.97.0.199"),
        state_dir=work / "net",
    )
    net.up()
    pkey, pub = _keypair()
    booted: dict[str, Booted] = {}

    def boot(i: int, label: str) -> None:
        variant = GUESTS[label]
        mac = random_mac()
        seed = make_seed_iso(work / label / "seed.iso", hostname=f"ngt-{label}", user=USER, ssh_pubkey=pub, mac=mac)
        with net.enter():  # QEMU must open its tap inside the namespace
            tap = net.add_tap(f"ngi{os.getpid() % 10000}t{i}")
            guest = Guest.launch(
                images[variant], work / label, tap=tap, mac=mac, seed_iso=seed, disk_size=CLONE_DISK, memory_mb=512
            )
        b = booted[label] = Booted(label, variant, guest, images[variant].metadata())
        deadline = b.guest.started + BOOT_TIMEOUT
        try:
            b.ip = net.wait_for_lease(mac, timeout=max(1, deadline - time.monotonic()))
            b.client = _ssh(net, b.ip, pkey, deadline)
            b.boot_to_ssh = time.monotonic() - b.guest.started
            key = b.client.get_transport().get_remote_server_key()
            b.server_key = f"{key.get_name()} {key.get_base64()}"
            b.facts = json.loads(_run(b.client, "python3 -", FACTS_SCRIPT.replace("USER", repr(USER))))
            b.boot_to_ready = time.monotonic() - b.guest.started
            b.auth_methods = _offered_auth(net, b.ip)
        except Exception as exc:  # reported by the tests, with the serial log tail
            b.error = f"{type(exc).__name__}: {exc}"

    try:
        t0 = time.monotonic()
        # TCG guests are CPU bound: a few at a time finish sooner than all at once
        # (less thrashing); booted guests idle at ~2% CPU until the tests end.
        with ThreadPoolExecutor(BOOT_CONCURRENCY) as pool:
            for fut in [pool.submit(boot, i, label) for i, label in enumerate(GUESTS)]:
                fut.result()
        print(f"\nboot timings (TCG, {len(booted)} guests, {BOOT_CONCURRENCY} at a time, "
              f"{time.monotonic() - t0:.0f}s in all):")
        for b in booted.values():
            print(f"  {b.label:18} ssh after {b.boot_to_ssh:6.1f}s, cloud-init finished after {b.boot_to_ready:6.1f}s"
                  + (f"  ERROR {b.error}" if b.error else ""))
        yield net, booted
    finally:
        for b in booted.values():
            if b.client is not None:
                b.client.close()
            b.guest.stop()
        net.down()


def _get(fleet, label: str) -> Booted:
    b = fleet[1][label]
    if b.error:
        pytest.fail(f"{label}: {b.error}\n--- serial console tail ---\n{b.guest.serial_text()[-3000:]}")
    return b


def _sshd_option(facts: dict, name: str) -> str:
    for line in facts["sshd_T"].splitlines():
        k, _, v = line.partition(" ")
        if k == name:
            return v
    return ""


def health_problems(b: Booted, all_booted: dict[str, Booted], pub: str | None = None) -> dict[str, str]:
    """Each verifier check that fails for this guest -> why."""
    f = b.facts
    bad: dict[str, str] = {}
    ci = f["ci_long"]["out"]
    if "status: done" not in ci or f["ci_long"]["rc"] != 0 or not f["boot_finished"] or f["ci_result"].get("v1", {}).get("errors"):
        bad["cloud-init"] = ci
    if f["hostname"] != f"ngt-{b.label}":
        bad["hostname"] = f["hostname"]
    if "nixgold-testbed" not in f["authorized_keys"] or f["sudo"]["rc"] != 0 or "NOPASSWD: ALL" not in f["sudo_l"]["out"]:
        bad["user"] = f"keys={f['authorized_keys']!r} sudo={f['sudo']}"
    if not (f["enabled:ssh.service"] == "enabled" and f["active:ssh.service"] == "active"
            and f["active:sshd"] == "active" and ":22 " in f["listen22"] + " "):
        bad["sshd"] = f"{f['enabled:ssh.service']}/{f['active:ssh.service']} listen={f['listen22']!r}"
    if _sshd_option(f, "passwordauthentication") != "no" or "password" in b.auth_methods:
        bad["ssh-password-auth"] = f"{_sshd_option(f, 'passwordauthentication')} offered={b.auth_methods}"
    if not (f["enabled:qemu-guest-agent"] == "enabled" and f["active:qemu-guest-agent"] == "active"):
        bad["qemu-guest-agent"] = f"{f['enabled:qemu-guest-agent']}/{f['active:qemu-guest-agent']}"
    mid = f["machine_id"]
    others = [o.facts.get("machine_id") for o in all_booted.values() if o is not b]
    if len(mid) != 32 or mid == b.image_meta["machine_id"] or mid in others:
        bad["machine-id"] = mid
    other_keys = [o.server_key for o in all_booted.values() if o is not b]
    if b.server_key in b.image_meta["host_keys"] or b.server_key in other_keys or b.server_key not in f["host_keys"]:
        bad["host-keys"] = b.server_key
    if not f["root_shadow"].split(":")[1].startswith(("!", "*")):
        bad["root-password"] = f["root_shadow"]
    # growpart leaves the partition end aligned, so allow a little slack.
    if not (f["disk_bytes"] == CLONE_DISK and f["part_bytes"] > CLONE_DISK - 4 * PART_START
            and f["root_fs_bytes"] > 0.95 * f["part_bytes"]):
        bad["root-fs-grown"] = f"disk={f['disk_bytes']} part={f['part_bytes']} fs={f['root_fs_bytes']}"
    if "console=ttyS0,115200" not in f["cmdline"].split() or f["active:serial-getty@ttyS0.service"] != "active":
        bad["serial-console"] = f["cmdline"]
    return bad


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(FLEET_TIMEOUT)
def test_good_image_boots_healthy(fleet):
    g = _get(fleet, "good-a")
    assert g.facts["cmdline"] == CMDLINE
    assert health_problems(g, fleet[1]) == {}
    f = g.facts
    assert "status: done" in f["ci_long"]["out"] and f["boot_finished"]
    assert f["ci_result"]["v1"]["errors"] == []
    assert f["failed_units"] == "", f["failed_units"]
    assert f["enabled:sshd"] in ("enabled", "alias")  # testinfra's is_enabled accepts both (rc 0)
    assert f["active:tty1-line-logger"] == "active"
    assert f["qga_port"]
    assert g.auth_methods == ["publickey"]
    assert g.image_meta["host_keys"] == [] and g.image_meta["machine_id"] == ""


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(FLEET_TIMEOUT)
def test_serial_console_log(fleet):
    b = _get(fleet, "good-a")
    text = b.guest.serial_text()
    assert "Linux version" in text
    assert f"Command line: {CMDLINE}" in text
    assert "ngt-good-a login:" in text  # serial getty, hostname from cloud-init
    assert "Cloud-init v." in text and "finished at" in text


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(FLEET_TIMEOUT)
def test_guest_agent_answers(fleet):
    good = _get(fleet, "good-a")
    assert good.guest.qga("guest-ping") == {}
    assert good.guest.qga("guest-get-host-name") == {"host-name": "ngt-good-a"}


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(FLEET_TIMEOUT)
def test_sendkey_lines_reach_the_guest(fleet):
    b = _get(fleet, "good-a")
    line = f"nixgold sendkey {os.getpid()} OK_-=."
    b.guest.sendkeys(line + "\n")
    deadline = time.monotonic() + 30
    while True:
        out = _run(b.client, "cat /var/log/typed-lines.log 2>/dev/null || true")
        if line in out.splitlines():
            break
        assert time.monotonic() < deadline, f"typed line not logged; log: {out!r}"
        time.sleep(1)
