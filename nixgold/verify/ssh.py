"""One SSH key login to a clone, every wait bounded by the caller's timeout.

    client = connect(address, user, key_file, timeout=30, attempts=2)   # paramiko.SSHClient

paramiko waits 15 s for the server's banner and 30 s for the authentication by default
(``Transport.banner_timeout``, ``auth_timeout``), whatever ``timeout`` (the TCP connect) says: a guest
that answers slowly (an emulated or busy node, cloud-init's last stage still running) then fails after
15 s although it would have answered. Here the TCP connect, the banner and the authentication wait
``timeout`` each; the whole negotiation (paramiko's own ``timeout``: ``start_client`` silently stops
waiting after it, and the login then fails with "No existing session") twice that, so the banner's own
error is the one that comes. ``attempts``: a connection that failed before the login (no banner, the
connection cut or refused) is tried again after :data:`RETRY_PAUSE`; a rejected key is not.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

SSH_PORT = 22
RETRY_PAUSE = 2.0  # seconds before another try: sshd restarting, or a guest busy for a moment


def connect(address: str, user: str, key_file: Path | str, timeout: float, *, attempts: int = 1,
            port: int | None = None) -> Any:
    """A connected ``paramiko.SSHClient`` (the clone's host key accepted: it is a new machine), or the
    last attempt's exception."""
    import paramiko

    for attempt in range(1, max(1, attempts) + 1):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())  # fresh clone: unknown host key
        try:
            sock = socket.create_connection((address, port or SSH_PORT), timeout=timeout)
            client.connect(address, port=port or SSH_PORT, username=user, key_filename=str(key_file), sock=sock,
                           timeout=2 * timeout, banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
                           allow_agent=False)
            return client
        except paramiko.AuthenticationException:
            client.close()
            raise
        except (paramiko.SSHException, OSError, EOFError):
            client.close()
            if attempt >= attempts:
                raise
        time.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
