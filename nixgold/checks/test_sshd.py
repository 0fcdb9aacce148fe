"""sshd: running, key-only, and root login as configured."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from nixgold.checks.helpers import sshd_settings, systemd_unit, unit_problem

PASSWORD_METHODS = ("password", "keyboard-interactive")


@pytest.mark.check("sshd.service", "sshd is enabled, running and listening on port 22")
def test_sshd_enabled_running_listening(host):
    props = systemd_unit(host, "sshd.service", "ssh.service")
    socket_props = systemd_unit(host, "sshd.socket", "ssh.socket")
    service_problem = unit_problem(props, "sshd.service")
    if service_problem and socket_props and not unit_problem(socket_props, "sshd.socket"):
        service_problem = None  # socket-activated sshd (services.openssh.startWhenNeeded)
    assert service_problem is None, service_problem
    assert host.socket("tcp://22").is_listening, "nothing listens on TCP port 22"


def offered_methods(address: str, port: int, user: str, timeout: float = 15.0) -> list[str] | None:
    """The authentication methods the server offers ``user`` (SSH "none" request); None: it let us in."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        return None
    finally:
        transport.close()
        sock.close()


def _endpoint(host: Any, clone: Any) -> tuple[str, int] | None:
    spec = getattr(host.backend, "host", None)
    if getattr(host.backend, "NAME", "") not in ("paramiko", "ssh", "safe-ssh"):
        return None
    return clone.address, int(getattr(spec, "port", None) or 22)


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
    logger = logging.getLogger("paramiko")  # it logs refused auth as errors
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        methods = offered_methods(*endpoint, ctx.ciuser)
    finally:
        logger.setLevel(level)
    assert methods is not None, f"the server at {endpoint[0]}:{endpoint[1]} let {ctx.ciuser} in without authentication"
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
