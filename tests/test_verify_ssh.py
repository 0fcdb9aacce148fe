"""nixgold.verify.ssh (connect, auth_methods), the check plugin's clone connection and the sshd checks'
own connections, against real sockets on this machine: a server that accepts and never sends its banner (a guest too busy to answer), one that cuts
the first connection and then is a real SSH server (paramiko's server side), and one that rejects the
key. paramiko alone waits 15 s for a banner whatever the connect timeout (``Transport.banner_timeout``);
in the n=3 run of 2026-12-02 two clones that had answered the boot.ssh login failed every check with
"Error reading SSH protocol banner" that way; in CI on 2026-12-02 (a node so busy a clone's agent took
115 s) sshd.password-auth-off's own probe, which waited 15 s once, ended as an error."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest

from nixgold.verify import keys as sshkeys
from nixgold.verify import clones, ssh
from nixgold.verify.checks import CheckContext, CloneTarget
from nixgold.verify.checks.plugin import NixgoldMode
from nixgold.verify.checks.test_sshd import Endpoint, root_shell_with_key

USER = "nixgold"
MUTE_SECONDS = 4


class _Accepts(paramiko.ServerInterface):
    def __init__(self, key: paramiko.PKey | None, none_ok: bool = False, mute: bool = False):
        self.key, self.none_ok, self.mute = key, none_ok, mute

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL if self.none_ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if self.mute:  # a server too busy to answer the login (the client's auth wait runs out)
            time.sleep(MUTE_SECONDS)
        ok = self.key is not None and username == USER and key.get_base64() == self.key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED


class Server:
    """On 127.0.0.1:<port>: ``mode`` "silent" (accept, say nothing), "flaky" (close the first
    connection at once, then serve SSH), "ssh" (serve SSH; ``key``: the one public key it accepts),
    "open" (serve SSH, letting anyone in without authentication), "mute" (serve SSH, but answer a key
    login only after MUTE_SECONDS)."""

    def __init__(self, mode: str, host_key: paramiko.PKey, key: paramiko.PKey | None = None):
        self.mode, self.host_key, self.key = mode, host_key, key
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open: list[Any] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "silent" or (self.mode == "flaky" and self.accepted == 1):
                if self.mode == "flaky":
                    conn.close()
                else:
                    self.open.append(conn)
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.open.append(transport)
            try:
                transport.start_server(server=_Accepts(self.key, none_ok=self.mode == "open", mute=self.mode == "mute"))
            except (paramiko.SSHException, EOFError, OSError):
                pass  # a port check (connect, close) or a client that gave up: serve the next one

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not, on Linux)
        self.sock.close()
        self.thread.join(5)
        for thing in self.open:
            thing.close()


@pytest.fixture
def keyfiles(tmp_path: Path) -> tuple[Path, paramiko.PKey, paramiko.PKey]:
    """(the client's private key file, its key, a host key)."""
    (tmp_path / "c").mkdir()
    (tmp_path / "h").mkdir()
    client = sshkeys.generate("client", tmp_path / "c")
    host = sshkeys.generate("host", tmp_path / "h")
    return (client.private_key_file, paramiko.Ed25519Key.from_private_key_file(str(client.private_key_file)),
            paramiko.Ed25519Key.from_private_key_file(str(host.private_key_file)))


@pytest.fixture
def serve(monkeypatch) -> Iterator[Any]:
    servers: list[Server] = []

    def start(mode: str, host_key: paramiko.PKey, key: paramiko.PKey | None = None) -> Server:
        server = Server(mode, host_key, key)
        servers.append(server)
        monkeypatch.setattr(ssh, "SSH_PORT", server.port)  # the paths without a port argument
        monkeypatch.setattr(clones, "SSH_PORT", server.port)
        monkeypatch.setattr(ssh, "RETRY_PAUSE", 0.2)
        return server

    yield start
    for server in servers:
        server.close()


def test_no_banner_fails_after_the_callers_timeout_not_paramikos_15_s(keyfiles, serve):
    key_file, _, host_key = keyfiles
    server = serve("silent", host_key)
    t0 = time.monotonic()
    with pytest.raises(paramiko.SSHException, match="Error reading SSH protocol banner"):
        ssh.connect("127.0.0.1", USER, key_file, timeout=1)
    assert time.monotonic() - t0 < 5 and server.accepted == 1
    t0 = time.monotonic()
    with pytest.raises(paramiko.SSHException, match="Error reading SSH protocol banner"):
        ssh.connect("127.0.0.1", USER, key_file, timeout=1, attempts=2)
    assert time.monotonic() - t0 < 8 and server.accepted == 3  # one more try


def test_a_cut_connection_is_tried_again_and_logs_in(keyfiles, serve):
    key_file, key, host_key = keyfiles
    server = serve("flaky", host_key, key)
    client = ssh.connect("127.0.0.1", USER, key_file, timeout=5, attempts=2)
    try:
        assert client.get_transport().is_authenticated() and server.accepted == 2
    finally:
        client.close()


def test_a_rejected_key_is_not_tried_again(keyfiles, serve):
    key_file, _, host_key = keyfiles
    server = serve("ssh", host_key, key=None)  # accepts no key
    with pytest.raises(paramiko.AuthenticationException):
        ssh.connect("127.0.0.1", USER, key_file, timeout=5, attempts=2)
    assert server.accepted == 1


def test_ssh_login_says_what_happened(keyfiles, serve):
    """boot.ssh's login: the port, then the login through connect (one try: verify polls it)."""
    key_file, key, host_key = keyfiles
    serve("silent", host_key)
    assert clones.ssh_login("127.0.0.1", USER, key_file, timeout=1) == (
        False, "SSHException: Error reading SSH protocol banner")
    serve("ssh", host_key, key)
    assert clones.ssh_login("127.0.0.1", USER, key_file, timeout=5) == (True, "ok")
    serve("ssh", host_key, key=None)
    ok, said = clones.ssh_login("127.0.0.1", USER, key_file, timeout=5)
    assert not ok and said.startswith(f"key rejected for {USER} ")


def test_auth_methods_waits_the_callers_timeout_and_tries_again(keyfiles, serve):
    """sshd.password-auth-off's probe (an SSH "none" request): what the server offers, None when it
    lets the user in; a silent server is tried ``attempts`` times, ``timeout`` each."""
    key_file, key, host_key = keyfiles
    silent = serve("silent", host_key)
    t0 = time.monotonic()
    with pytest.raises(paramiko.SSHException, match="Error reading SSH protocol banner"):
        ssh.auth_methods("127.0.0.1", USER, timeout=1, attempts=2)
    assert silent.accepted == 2 and time.monotonic() - t0 < 8
    flaky = serve("flaky", host_key, key)
    assert ssh.auth_methods("127.0.0.1", USER, timeout=5, attempts=2) == ["publickey"] and flaky.accepted == 2
    serve("open", host_key)
    assert ssh.auth_methods("127.0.0.1", USER, timeout=5) is None


def test_root_key_logins_own_connection_is_bounded_and_tried_again(keyfiles, serve):
    """sshd.root-key-login's connection: the backend's timeout and ssh.CHECK_ATTEMPTS tries while no
    banner comes (it waited paramiko's 15 s once before); a refused key is its answer, at once."""
    key_file, _, host_key = keyfiles
    silent = serve("silent", host_key)
    t0 = time.monotonic()
    with pytest.raises(paramiko.SSHException, match="Error reading SSH protocol banner"):
        root_shell_with_key(Endpoint("127.0.0.1", silent.port, 1.0), str(key_file))
    assert silent.accepted == ssh.CHECK_ATTEMPTS and time.monotonic() - t0 < 8
    refusing = serve("ssh", host_key, key=None)
    assert root_shell_with_key(Endpoint("127.0.0.1", refusing.port, 5.0), str(key_file)) == (
        False, "the key is refused for root")
    assert refusing.accepted == 1


def test_a_login_never_answered_is_no_answer_not_a_refused_key(keyfiles, serve):
    """paramiko raises AuthenticationException("Authentication timeout.") when the server never
    answers the login: that is tried again and then an SSHException, never "the key is refused"
    (root-key-login would pass on a clone that only was too busy to answer)."""
    key_file, key, host_key = keyfiles
    mute = serve("mute", host_key, key)
    with pytest.raises(paramiko.SSHException, match="no answer to the login: Authentication timeout") as err:
        ssh.connect("127.0.0.1", USER, key_file, timeout=1, attempts=2)
    assert not isinstance(err.value, paramiko.AuthenticationException) and mute.accepted == 2
    with pytest.raises(paramiko.SSHException, match="no answer to the login"):
        root_shell_with_key(Endpoint("127.0.0.1", mute.port, 1.0), str(key_file))
    ok, said = clones.ssh_login("127.0.0.1", USER, key_file, timeout=1)
    assert not ok and said == "SSHException: no answer to the login: Authentication timeout."


def _plugin(key_file: Path, timeout: int) -> tuple[NixgoldMode, CloneTarget]:
    clone = CloneTarget(vmid=100, name="c1", node="pve", address="127.0.0.1", ssh_user=USER, ssh_key_file=key_file,
                        disk_bytes=0)
    ctx = CheckContext(profile="generic", nixos_release="26.05", permit_root_login="prohibit-password", ciuser=USER,
                       injected_public_key="", allowed_keys=(), clones=(clone,), agent=lambda vmid, cmd: {},
                       connection="paramiko")
    return NixgoldMode(ctx, connect_timeout=timeout, scope="clone"), clone


def test_the_check_plugin_connects_a_clone_through_it(keyfiles, serve):
    """A silent clone: one reason for every check, after ssh.CHECK_ATTEMPTS connections of connect_timeout
    each; a clone that cuts the first connection: connected, testinfra's backend uses that client."""
    key_file, key, host_key = keyfiles
    silent = serve("silent", host_key)
    plugin, clone = _plugin(key_file, timeout=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionError) as err:
            plugin.connected(clone)
        assert str(err.value) == ("no SSH connection to nixgold@127.0.0.1: SSHException: Error reading SSH "
                                  "protocol banner")
        assert silent.accepted == ssh.CHECK_ATTEMPTS == 2 and time.monotonic() - t0 < 8
        with pytest.raises(ConnectionError):  # the later checks of that clone: at once, no new connection
            plugin.connected(clone)
        assert silent.accepted == 2
    finally:
        plugin.close()

    flaky = serve("flaky", host_key, key)
    plugin, clone = _plugin(key_file, timeout=5)
    try:
        host = plugin.connected(clone)
        assert host.backend.client.get_transport().is_authenticated() and flaky.accepted == 2
        del host.backend.client  # what testinfra's run() does when the transport dropped: connect again
        assert host.backend.client.get_transport().is_authenticated() and flaky.accepted == 3
    finally:
        plugin.close()
