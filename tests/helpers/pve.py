"""The test bed's API credentials and small waits on the simulated PVE, shared by the client and
verify tests."""
from __future__ import annotations

import time
from typing import Any

from nixgold.config.credentials import Credentials


def bed_creds(testbed: Any, **overrides: Any) -> Credentials:
    """The bed's API token (its CA trusted), with ``overrides``."""
    values = {"url": testbed.url, "token_id": testbed.token_id, "token_secret": testbed.token_secret,
              "ca_bundle": str(testbed.ca_path)}
    values.update(overrides)
    return Credentials(**values)


def wait_for_clone_lock(client: Any, vmid: int, timeout: float = 10.0) -> None:
    """Until the clone task has written its temporary ``lock: clone`` config: qemu-server writes it
    from the task once it holds the locks (src/PVE/API2/Qemu.pm clone_vm), so not yet when the POST
    answers."""
    deadline = time.monotonic() + timeout
    while (client.find_vm(vmid) or {}).get("lock") != "clone" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.vm_config("pve", vmid).get("lock") == "clone"
