"""Every guest check of nixgold.verify.checks passes on a healthy clone and FAILS on a broken one.

Boots are the cost (TCG, 2 cores), so few guests do all the work:

* ``healthy``: one clone of ``good`` and one of ``nixos-like`` (good + /etc/NIXOS, nixos-version,
  configuration.nix, Debian's nix) run the suite together: everything passes on both, except the
  four NixOS checks on the Debian ``good`` clone (they fail there: that is their negative);
  ``--profile generic`` skips exactly those. Then runtime defects are put into the ``good`` clone
  over SSH and the suite runs again (see nixgold/verify/checks/README.md for which defect proves what);
* ``defects``: one clone of the ``defects`` variant (several independent image defects in one boot)
  with the agent switched off and ``console=ttyS0`` dropped in its Proxmox config;
* the required ``invoke verify --profile generic`` runs, one per broken stand-in variant, in pairs.
"""
from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from nixgold.verify import keys as sshkeys
from nixgold.verify.checks import AGENT_COMMANDS, AgentAnswers, CheckContext, CheckResult, CloneTarget, run_checks
from nixgold.config.credentials import Credentials
from nixgold.proxmox.client import ProxmoxClient
from nixgold.verify.clones import boot_disk, net0_mac, ssh_login

REPO = Path(__file__).resolve().parents[1]
USER = "nixgold"
GROW = "+1G"
BOOT_TIMEOUT = 900  # seconds to SSH under TCG on a loaded 2-core box


# ----------------------------------------------------------------------------- boot helpers
def client_for(testbed: Any) -> ProxmoxClient:
    return ProxmoxClient(Credentials(url=testbed.url, token_id=testbed.token_id, token_secret=testbed.token_secret,
                                     ca_bundle=str(testbed.ca_path)))


@dataclass
class CloneSpec:
    source: int  # template vmid
    vmid: int
    name: str
    config: dict[str, Any]  # extra PVE config for the clone (token-settable)
    cmdline: Callable[[str], str] | None = None  # rewrites the kernel command line (root@pam: args)


def start_clone(testbed: Any, client: ProxmoxClient, spec: CloneSpec, key: sshkeys.EphemeralKey) -> tuple[str, int]:
    """Clone like `invoke verify` does (cloud-init user + key, grown disk) and start it: (mac, disk bytes)."""
    node = testbed.node
    client.wait_task(client.clone(node, spec.source, spec.vmid, name=spec.name), 300)
    config = client.wait_unlocked(node, spec.vmid, 120)
    client.set_config(node, spec.vmid, ciuser=USER, sshkeys=[key.public_key], ciupgrade=False, **spec.config)
    if spec.cmdline is not None:
        args = config["args"]
        head, _, append = args.partition("-append ")
        new = spec.cmdline(shlex.split(append)[0])
        testbed.root_api().nodes(node).qemu(spec.vmid).config.put(args=f"{head}-append {shlex.quote(new)}")
    disk, _ = boot_disk(config)
    upid = client.resize(node, spec.vmid, disk, GROW)
    if upid:
        client.wait_task(upid, 120)
    _, size = boot_disk(client.vm_config(node, spec.vmid))
    client.wait_task(client.start(node, spec.vmid), 120)
    return str(net0_mac(config)).lower(), int(size or 0)


def wait_for_ssh(testbed: Any, mac: str, key: sshkeys.EphemeralKey, deadline: float) -> str:
    """The clone's address from the bed's DHCP leases (no guest agent needed), once SSH takes the key."""
    address = testbed.net.wait_for_lease(mac, timeout=max(1.0, deadline - time.monotonic()))
    last = ""
    while time.monotonic() < deadline:
        ok, last = ssh_login(address, USER, key.private_key_file, timeout=10)
        if ok:
            return address
        time.sleep(2)
    raise TimeoutError(f"no SSH key login on {address} ({mac}): {last}")


def boot(testbed: Any, specs: Sequence[CloneSpec], key: sshkeys.EphemeralKey) -> list[CloneTarget]:
    """Start every clone, then wait for all of them in parallel (inside the bed's namespace)."""
    client = client_for(testbed)
    with testbed.enter():
        started = [start_clone(testbed, client, s, key) for s in specs]
    deadline = time.monotonic() + BOOT_TIMEOUT

    def wait(mac: str) -> str:
        with testbed.enter():
            return wait_for_ssh(testbed, mac, key, deadline)

    with ThreadPoolExecutor(len(specs)) as pool:
        addresses = list(pool.map(wait, [mac for mac, _ in started]))
    return [CloneTarget(vmid=s.vmid, name=s.name, node=testbed.node, address=a, ssh_user=USER,
                        ssh_key_file=key.private_key_file, disk_bytes=size)
            for s, a, (_, size) in zip(specs, addresses, started)]


def destroy(testbed: Any, vmids: Sequence[int]) -> None:
    client = client_for(testbed)
    with testbed.enter():
        for vmid in vmids:
            if client.find_vm(vmid) is None:
                continue
            if client.vm_status(testbed.node, vmid).get("status") != "stopped":
                client.wait_task(client.stop(testbed.node, vmid), 120)
            client.wait_task(client.destroy(testbed.node, vmid), 120)


def context(testbed: Any, clones: Sequence[CloneTarget], key: sshkeys.EphemeralKey, **changes: Any) -> CheckContext:
    """Like `invoke verify` builds it: the guest agent's answers are asked now, through the API."""
    client = client_for(testbed)
    answers = AgentAnswers()
    with testbed.enter():
        for c in clones:
            for command in AGENT_COMMANDS:
                answers.record(c.vmid, command, lambda: client.agent(testbed.node, c.vmid, command))
    ctx = CheckContext(profile="nixos", nixos_release="26.05", permit_root_login="prohibit-password", ciuser=USER,
                       injected_public_key=key.public_key, allowed_keys=(), clones=tuple(clones), agent=answers)
    return replace(ctx, **changes)


def checks(testbed: Any, ctx: CheckContext, extra: Sequence[Path] = (),
           one_by_one: dict[str, list[str]] | None = None) -> dict[tuple[str, str], CheckResult]:
    """The suite over ``ctx.clones``; ``one_by_one``: the commands each clone may run outside the
    facts gathered in one command (checked when given)."""
    with testbed.enter():
        run = run_checks(ctx, extra)
    results = run.results
    if one_by_one is not None:
        assert set(run.one_by_one) == set(one_by_one), run.one_by_one
        assert all(set(asked) <= set(one_by_one[name]) for name, asked in run.one_by_one.items()), run.one_by_one
    table = {(r.id, r.target): r for r in results}
    assert len(table) == len(results), "a check id appears twice for one target"
    return table


def outcomes(table: dict[tuple[str, str], CheckResult], target: str) -> dict[str, str]:
    return {cid: r.outcome for (cid, t), r in table.items() if t == target}


# ----------------------------------------------------------------------------- the guests
GOOD, NIXOS_LIKE, DEFECTS = "good", "nixos-like", "defects"
TEMPLATES = {NIXOS_LIKE: 9301, DEFECTS: 9302}  # `good` is the bed's template 9004
NOT_NIXOS = {"nixos.marker", "nixos.release", "nixos.configuration", "nixos.nix"}
# the defects clone: image defects (variant) + agent off and no serial console (its PVE config)
DEFECTS_FAIL = {"hostname.clone-name", "sshd.root-key-login", "disk.root-grown", "hygiene.build-key",
                "hygiene.root-password", "agent.service", "agent.virtio-port", "agent.ping", "agent.host-name",
                "console.serial"}
# runtime defects put into the good clone over SSH (as root), and the checks they break
MUTATIONS = {
    "systemctl disable ssh.service": {"sshd.service"},
    "printf 'PermitRootLogin yes\\n' > /etc/ssh/sshd_config.d/00-permit-root.conf": {"sshd.root-login"},
    "hostnamectl set-hostname not-the-clone-name": {"hostname.clone-name", "agent.host-name"},
    "passwd -d root": {"hygiene.root-password"},
    "echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvHbr7V0e3Z0CqTjZcN3c2uJrHn2Yb6Hq4mYbT1bD7x stray' "
    ">> /home/nixgold/.ssh/authorized_keys": {"hygiene.build-key"},
}


@dataclass
class Guests:
    key: sshkeys.EphemeralKey
    good: CloneTarget
    nixos_like: CloneTarget
    defects: CloneTarget
    boot_seconds: float


@pytest.fixture(scope="module")
def guests(testbed, tmp_path_factory) -> Iterator[Guests]:
    key = sshkeys.generate("nixgold-checks-test", tmp_path_factory.mktemp("key"))
    for variant, vmid in TEMPLATES.items():
        testbed.import_variant(variant, vmid, name=f"nixgold-testbed-{variant}")
    specs = [
        CloneSpec(testbed.template_vmid, 9350, "checks-good", {}),
        CloneSpec(TEMPLATES[NIXOS_LIKE], 9351, "checks-nixos-like", {}),
        CloneSpec(TEMPLATES[DEFECTS], 9352, "checks-defects", {"agent": "0"},
                  cmdline=lambda c: " ".join(a for a in c.split() if not a.startswith("console=ttyS"))),
    ]
    try:
        t0 = time.monotonic()
        good, nixos_like, defects = boot(testbed, specs, key)
        yield Guests(key, good, nixos_like, defects, time.monotonic() - t0)
    finally:
        destroy(testbed, [s.vmid for s in specs])
        destroy(testbed, list(TEMPLATES.values()))
        key.remove()


def as_root(testbed: Any, clone: CloneTarget, command: str) -> None:
    import paramiko

    with testbed.enter():
        ssh = paramiko.SSHClient()
        ssh.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())
        ssh.connect(clone.address, username=clone.ssh_user, key_filename=str(clone.ssh_key_file),
                    look_for_keys=False, allow_agent=False, timeout=30)
        try:
            _, out, err = ssh.exec_command(f"sudo -n sh -c {shlex.quote(command)}", timeout=120)
            rc = out.channel.recv_exit_status()
            assert rc == 0, f"{command}: exit {rc}: {err.read().decode()}"
        finally:
            ssh.close()


def failed(table: dict[tuple[str, str], CheckResult], target: str) -> set[str]:
    return {cid for cid, outcome in outcomes(table, target).items() if outcome in ("failed", "error")}


def test_every_check_passes_on_healthy_clones(testbed, guests, record_property):
    """good + nixos-like under the nixos profile: all pass, except the NixOS checks on Debian."""
    record_property("boot_seconds", round(guests.boot_seconds, 1))
    t0 = time.monotonic()
    from nixgold.verify.checks.test_nixos import EVALUATE

    # every command from the facts gathered in one go, but root's retry of nix where the user's fails
    asked = {guests.good.name: [EVALUATE], guests.nixos_like.name: [EVALUATE]}
    table = checks(testbed, context(testbed, [guests.good, guests.nixos_like], guests.key), one_by_one=asked)
    record_property("checks_seconds", round(time.monotonic() - t0, 1))
    nixos_like, good = outcomes(table, guests.nixos_like.name), outcomes(table, guests.good.name)
    reasons = {k: r.reason for k, r in table.items() if r.outcome != "passed"}
    assert set(nixos_like.values()) == {"passed"}, reasons
    assert len(nixos_like) == 22 and set(good) == set(nixos_like)
    assert {cid for cid, o in good.items() if o != "passed"} == NOT_NIXOS, reasons
    assert all(good[cid] == "failed" for cid in NOT_NIXOS)
    assert outcomes(table, "clones") == {"hygiene.machine-id": "passed", "hygiene.host-keys": "passed"}
    target = guests.good.name
    assert table["nixos.marker", target].reason == "/etc/NIXOS is missing: this is not a NixOS system"
    assert table["nixos.release", target].reason.startswith("nixos-version failed (exit 127")
    assert table["nixos.configuration", target].reason.startswith("/etc/nixos/configuration.nix is missing")
    assert "did not print 2" in table["nixos.nix", target].reason


def test_the_defects_clone_fails_exactly_its_defects(testbed, guests):
    """Image defects (variant `defects`) and PVE config defects (agent: 0, no console=ttyS0) in one boot."""
    table = checks(testbed, context(testbed, [guests.defects], guests.key, profile="generic"))
    target = guests.defects.name
    got = outcomes(table, target)
    reasons = {cid: r.reason for (cid, t), r in table.items() if r.outcome != "passed"}
    assert failed(table, target) == DEFECTS_FAIL, reasons
    assert {cid for cid, o in got.items() if o == "skipped"} == NOT_NIXOS
    assert all(table[cid, target].reason == "profile generic" for cid in NOT_NIXOS)
    assert all(table[cid, target].outcome == "failed" for cid in DEFECTS_FAIL), reasons  # not errors
    # NixOS defect 2: the build VM's "nixos" left in /etc/hostname, which update_hostname keeps
    assert reasons["hostname.clone-name"] == ("hostname is 'nixos', not the clone's name 'checks-defects' "
                                              "(cloud-init sets it from the Proxmox VM name)")
    # NixOS defect 3: without disable_root cloud-init gives root the clone's key, unprefixed
    assert reasons["sshd.root-key-login"].startswith("root logs in with the clone's cloud-init key and gets a shell")
    assert reasons["disk.root-grown"].startswith("the root file system is ") and "on a 3.00 GiB disk" in reasons[
        "disk.root-grown"]
    assert "nixgold-build-testbed" in reasons["hygiene.build-key"] and "/root/.ssh/authorized_keys" in reasons[
        "hygiene.build-key"]
    assert reasons["hygiene.root-password"].startswith("root has a usable password")
    assert reasons["agent.service"] == "qemu-guest-agent.service is inactive (dead), not running"
    assert reasons["agent.virtio-port"].startswith("/dev/virtio-ports/org.qemu.guest_agent.0 is missing")
    # `agent: 0` is a key that is present: PVE's agent_available (Agent.pm) says "No QEMU guest agent
    # configured" only when the key is absent, else checks the running VM's agent socket
    assert "QEMU guest agent is not running" in reasons["agent.ping"]
    assert reasons["console.serial"] == "no console=ttyS0 on the kernel command line (consoles: console=tty0)"


def test_runtime_defects_and_context_mismatches_fail_their_checks(testbed, guests):
    """Mutations in the good clone (nixos-like untouched) + a context the clones do not match."""
    for command in MUTATIONS:
        as_root(testbed, guests.good, command)
    grown = replace(guests.good, disk_bytes=guests.good.disk_bytes + 1024 ** 3)  # "Proxmox says" 1 GiB more
    table = checks(testbed, context(testbed, [grown, guests.nixos_like], guests.key, profile="generic",
                                    ciuser="ghost"))
    reasons = {(cid, t): r.reason for (cid, t), r in table.items() if r.outcome != "passed"}
    from_mutations = set().union(*MUTATIONS.values())
    from_context = {"user.exists", "user.injected-key"}
    assert failed(table, grown.name) == from_mutations | from_context | {"disk.size"}, reasons
    assert failed(table, guests.nixos_like.name) == from_context, reasons
    assert failed(table, "clones") == set()
    good = grown.name
    assert reasons["sshd.service", good] == "ssh.service is disabled: it would not start at boot"
    assert reasons["sshd.root-login", good] == "sshd -T: permitrootlogin yes, but the config says prohibit-password"
    assert reasons["agent.host-name", good] == f"the agent reports host name 'not-the-clone-name', not '{good}'"
    assert reasons["hygiene.root-password", good] == ("root has an EMPTY password: anyone at the console logs in "
                                                      "as root")
    assert reasons["hygiene.build-key", good].startswith("unexpected authorized key: ssh-ed25519 SHA256:")
    assert reasons["hygiene.build-key", good].endswith("(stray) in /home/nixgold/.ssh/authorized_keys")
    assert reasons["user.exists", good] == "user 'ghost' does not exist: cloud-init did not create it"
    assert reasons["disk.size", good] == (f"/dev/sda is 3.00 GiB ({guests.good.disk_bytes} bytes), Proxmox says "
                                          f"4.00 GiB ({grown.disk_bytes} bytes)")


def test_sudo_and_the_injected_key(testbed, guests):
    """Last (it takes root away): the good clone loses its sudo rule; the nixos-like clone is told
    another key was injected than the one cloud-init installed."""
    as_root(testbed, guests.good, "rm -f /etc/sudoers.d/90-cloud-init-users")
    other = sshkeys.generate("not-injected", guests.key.directory)
    table = checks(testbed, context(testbed, [guests.good, guests.nixos_like], guests.key, profile="generic",
                                    injected_public_key=other.public_key))
    good, nixos_like = guests.good.name, guests.nixos_like.name
    assert table["user.sudo", good].outcome == "failed"
    assert table["user.sudo", good].reason == "`sudo -n id -u` as nixgold failed (exit 1: sudo: a password is required)"
    assert table["user.sudo", nixos_like].outcome == "passed"
    key_check = table["user.injected-key", nixos_like]
    assert (key_check.outcome, key_check.reason) == (
        "failed", "the injected key is not in /home/nixgold/.ssh/authorized_keys, "
                  "/home/nixgold/.ssh/authorized_keys2 (1 other key(s) there)")
    assert table["hygiene.build-key", nixos_like].outcome == "failed"  # the key cloud-init did install
