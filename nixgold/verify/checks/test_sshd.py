"""sshd: running, key-only, and root login as configured."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import failure, run, sshd_dump, sshd_settings, systemd_unit, unit_probes, \
    unit_problem
from nixgold.verify.ssh import CHECK_ATTEMPTS, SSH_PORT, auth_methods
from nixgold.verify.ssh import connect as ssh_connect
from nixgold.verify.ssh import quiet as ssh_quiet

PASSWORD_METHODS = ("password", "keyboard-interactive")
#: nixpkgs sshd.nix: systemd.services.sshd (and sshd.socket with startWhenNeeded); Debian: ssh.service.
SERVICE_UNITS = ("sshd.service", "ssh.service")
SOCKET_UNITS = ("sshd.socket", "ssh.socket")
#: Listening TCP sockets, numeric, no header (iproute2's ss).
LISTENING = "ss -Htln"
#: The least a check's own connection waits for each step (standalone pytest: testinfra's backends
#: default to 10 s; invoke verify: connect_timeout, 30 s by default).
DEFAULT_TIMEOUT = 30.0


def probes(ctx):
    return [*unit_probes(*SERVICE_UNITS), *unit_probes(*SOCKET_UNITS), Probe(LISTENING),
            Probe(sshd_dump(ctx.ciuser)), Probe(sshd_dump("root"))]


def listening_addresses(ss_output: str, port: int) -> set[str]:
    """The addresses ``ss -Htln`` lists a listening socket on ``port`` for (``*`` counts as both
    ``::`` and ``0.0.0.0``; ``[...]`` dropped), as testinfra 10's LinuxSocketSS reads ``ss``."""
    found: set[str] = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != "LISTEN" or ":" not in fields[3]:
            continue
        address, _, number = fields[3].rpartition(":")
        if not number.isdigit() or int(number) != port:
            continue
        if address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        found |= {"::", "0.0.0.0"} if address == "*" else {address}
    return found


def listens_everywhere(ss_output: str, port: int) -> bool:
    """testinfra's ``host.socket("tcp://PORT").is_listening`` (modules/socket.py): a socket on
    every IPv6 address (``::``, which takes IPv4 too unless v6only), the rule the check kept."""
    return "::" in listening_addresses(ss_output, port)


@pytest.mark.check("sshd.service", "sshd is enabled, running and listening on port 22")
def test_sshd_enabled_running_listening(host):
    props = systemd_unit(host, *SERVICE_UNITS)
    socket_props = systemd_unit(host, *SOCKET_UNITS)
    service_problem = unit_problem(props, "sshd.service")
    if service_problem and socket_props and not unit_problem(socket_props, "sshd.socket"):
        service_problem = None  # socket-activated sshd (services.openssh.startWhenNeeded)
    assert service_problem is None, service_problem
    listening = run(host, LISTENING)
    assert listening.rc == 0, f"cannot list the listening sockets ({failure(listening)})"
    addresses = listening_addresses(listening.stdout, 22)
    assert addresses, "nothing listens on TCP port 22"
    assert listens_everywhere(listening.stdout, 22), \
        f"TCP port 22 is listened on only at {', '.join(sorted(addresses))}, not on every address ([::]:22)"


class Endpoint(NamedTuple):
    """Where a check's own SSH connection goes, and how long each of its waits may be (the backend's
    connect timeout: nixgold.verify.checks.plugin)."""

    address: str
    port: int
    timeout: float


def _endpoint(host: Any, clone: Any) -> Endpoint | None:
    spec = getattr(host.backend, "host", None)
    if getattr(host.backend, "NAME", "") not in ("paramiko", "ssh", "safe-ssh"):
        return None
    return Endpoint(clone.address, int(getattr(spec, "port", None) or SSH_PORT),
                    max(float(getattr(host.backend, "timeout", None) or 0), DEFAULT_TIMEOUT))


@pytest.mark.check("sshd.password-auth-off", "sshd refuses password logins")
def test_password_authentication_off(host, clone, ctx):
    settings = sshd_settings(host, ctx.ciuser)
    password = settings.get("passwordauthentication", "?")
    kbd = settings.get("kbdinteractiveauthentication", settings.get("challengeresponseauthentication", "no"))
    assert password == "no", f"sshd -T: passwordauthentication {password} (must be no)"
    assert kbd == "no", f"sshd -T: kbdinteractiveauthentication {kbd} (PAM may ask for a password; must be no)"
    endpoint = _endpoint(host, clone)
    if endpoint is None:
        return  # a local connection: nothing to probe over the network
    with ssh_quiet():  # the "none" request is refused on purpose
        methods = auth_methods(endpoint.address, ctx.ciuser, endpoint.timeout, attempts=CHECK_ATTEMPTS,
                               port=endpoint.port)
    assert methods is not None, f"the server at {endpoint.address}:{endpoint.port} let {ctx.ciuser} in without authentication"
    offered = [m for m in methods if m in PASSWORD_METHODS]
    assert not offered, f"the server offers {', '.join(offered)} to {ctx.ciuser} (offers: {', '.join(methods)})"


def _normal(value: str) -> str:
    value = value.strip().lower()
    return "prohibit-password" if value == "without-password" else value


@pytest.mark.check("sshd.root-login", "sshd's PermitRootLogin is the configured value")
def test_root_login_as_configured(host, ctx):
    actual = sshd_settings(host, "root").get("permitrootlogin", "?")
    assert _normal(actual) == _normal(ctx.permit_root_login), \
        f"sshd -T: permitrootlogin {actual}, but the config says {ctx.permit_root_login}"


def root_shell_with_key(endpoint: Endpoint, key_file: str) -> tuple[bool, str]:
    """Log in as root with ``key_file`` and run ``id -u``: (root got a shell, what happened)."""
    import paramiko

    with ssh_quiet():  # a refused key is an answer here
        try:
            client = ssh_connect(endpoint.address, "root", key_file, endpoint.timeout,
                                 attempts=CHECK_ATTEMPTS, port=endpoint.port)  # the clone's host key accepted
        except paramiko.AuthenticationException:
            return False, "the key is refused for root"
    with client:  # paramiko's SSHClient closes on exit
        _, stdout, stderr = client.exec_command("id -u", timeout=endpoint.timeout)
        first = stdout.readline().strip()
        if first != "0":
            # cloud-init's disable_root command prints "Please login as the user ..." and then
            # sleeps 10 s before exit 142: its first line is the answer, no need to wait.
            said = " ".join((first or stderr.read().decode(errors="replace")).split())[:160]
            return False, f"root's key runs something else: {said or 'no output'}"
        status = stdout.channel.recv_exit_status()
        return status == 0, f"`id -u` printed 0 (exit {status})"


@pytest.mark.check("sshd.root-key-login", "root does not get a shell with the clone's cloud-init key")
def test_root_cannot_use_the_clones_key(host, clone):
    """cloud-init's ssh module writes the instance's keys to root too (nixpkgs' module default
    ``disable_root = false``); with PermitRootLogin prohibit-password every PVE key then logs in
    as root. With ``disable_root: true`` root's copy runs cloud-init's "log in as <user>" command."""
    endpoint = _endpoint(host, clone)
    if endpoint is None or not str(clone.ssh_key_file):
        pytest.skip("needs the clone's address and the injected private key (--ssh-identity-file)")
    got_shell, what = root_shell_with_key(endpoint, str(clone.ssh_key_file))
    assert not got_shell, (f"root logs in with the clone's cloud-init key and gets a shell ({what}): cloud-init "
                           f"wrote the instance's keys to root (disable_root is false)")
