"""SSH to a clone, every wait bounded by the caller's timeout: a key login, an auth-methods probe.

    client = connect(address, user, key_file, timeout=30, attempts=2)   # paramiko.SSHClient
    methods = auth_methods(address, user, timeout=30, attempts=2)       # ["publickey"], None: let in

paramiko waits 15 s for the server's banner and 30 s for the authentication by default
(``Transport.banner_timeout``, ``auth_timeout``), whatever ``timeout`` (the TCP connect) says: a guest
that answers slowly (an emulated or busy node, cloud-init's last stage still running) then fails after
15 s although it would have answered. Here the TCP connect, the banner and the authentication wait
``timeout`` each; the whole negotiation (paramiko's own ``timeout``: ``start_client`` silently stops
waiting after it, and the login then fails with "No existing session") twice that, so the banner's own
error is the one that comes. ``attempts``: a connection that got no answer (no banner, the connection
cut or refused, the login never answered) is tried again after :data:`RETRY_PAUSE`; a rejected key is
not. :func:`quiet` mutes paramiko's tracebacks for refusals the caller reports itself.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

SSH_PORT = 22
RETRY_PAUSE = 2.0  # seconds before another try: sshd restarting, or a guest busy for a moment
CHECK_ATTEMPTS = 2  # the checks' connections to a clone that has answered boot.ssh: one more try
#: paramiko's AuthenticationException when the server never answered the login (paramiko 5.1
#: auth_handler.py wait_for_response: the auth wait ran out, or the transport ended first): not a
#: refusal. Raised on as an SSHException, so no caller takes it for "the key is refused".
NO_ANSWER = ("Authentication timeout.", "Authentication failed: transport shut down or saw EOF")

T = TypeVar("T")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """paramiko logs every refused banner or authentication as an ERROR with a traceback (while sshd
    starts, or when a check is refused on purpose): the caller reports what happened itself."""
    logger = logging.getLogger("paramiko")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _tries(attempts: int, once: Callable[[], T]) -> T:
    """``once()``, tried ``attempts`` times while it fails without an answer (no banner, the connection
    cut or refused: SSHException, OSError, EOFError; no answer to the login: :data:`NO_ANSWER`),
    :data:`RETRY_PAUSE` apart; a refused authentication is an answer and is raised at once."""
    import paramiko

    for attempt in range(1, max(1, attempts) + 1):
        try:
            return once()
        except paramiko.AuthenticationException as exc:
            if str(exc) not in NO_ANSWER:
                raise
            if attempt >= attempts:
                raise paramiko.SSHException(f"no answer to the login: {exc}") from None
        except (paramiko.SSHException, OSError, EOFError):
            if attempt >= attempts:
                raise
        time.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def connect(address: str, user: str, key_file: Path | str, timeout: float, *, attempts: int = 1,
            port: int | None = None) -> Any:
    """A connected ``paramiko.SSHClient`` (the clone's host key accepted: it is a new machine), or the
    last attempt's exception."""
    import paramiko

    def once() -> Any:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())  # fresh clone: unknown host key
        try:
            sock = socket.create_connection((address, port or SSH_PORT), timeout=timeout)
            client.connect(address, port=port or SSH_PORT, username=user, key_filename=str(key_file), sock=sock,
                           timeout=2 * timeout, banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
                           allow_agent=False)
        except BaseException:
            client.close()
            raise
        return client

    return _tries(attempts, once)


def auth_methods(address: str, user: str, timeout: float, *, attempts: int = 1,
                 port: int | None = None) -> list[str] | None:
    """The authentication methods the server offers ``user`` (an SSH "none" request, RFC 4252 5.2),
    every wait bounded as in :func:`connect`; None: it let ``user`` in without any."""
    import paramiko

    def once() -> list[str] | None:
        sock = socket.create_connection((address, port or SSH_PORT), timeout=timeout)
        try:
            transport = paramiko.Transport(sock)
        except BaseException:
            sock.close()
            raise
        transport.banner_timeout = timeout  # paramiko's own: 15 s whatever start_client's timeout
        transport.auth_timeout = timeout    # and 30 s for the answer to the request
        try:
            transport.start_client(timeout=2 * timeout)
            try:
                transport.auth_none(user)
            except paramiko.BadAuthenticationType as exc:
                return list(exc.allowed_types)
            return None
        finally:
            transport.close()
            sock.close()

    return _tries(attempts, once)
