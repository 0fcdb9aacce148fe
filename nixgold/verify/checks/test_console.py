"""The serial console (Proxmox's xterm.js console on serial0: socket)."""

from __future__ import annotations

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import run

CMDLINE = "cat /proc/cmdline"


def probes(ctx):
    return [Probe(CMDLINE)]


@pytest.mark.check("console.serial", "the kernel console is on the serial port (console=ttyS0)")
def test_serial_console_on_the_kernel_command_line(host):
    cmdline = run(host, CMDLINE).stdout.split()
    consoles = [arg for arg in cmdline if arg.startswith("console=")]
    assert any(c.split("=", 1)[1].split(",")[0] == "ttyS0" for c in consoles), \
        f"no console=ttyS0 on the kernel command line (consoles: {', '.join(consoles) or 'none'})"
