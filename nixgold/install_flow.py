"""The keys typed into the NixOS minimal ISO: as few as possible.

The ISO runs no guest agent and has empty passwords, so Packer cannot SSH into it. Instead
the boot_command types one line into the live system's autologin shell (user ``nixos``,
passwordless sudo, US keymap) that fetches install.sh from Packer's HTTP server and runs
it as root; install.sh does everything else inside the guest and reboots into the
installed system, which Packer then reaches through its guest agent.
"""

from __future__ import annotations

from datetime import timedelta

from .bootcmd import HttpIp, HttpPort, PressKey, Step, TypeText, Wait, compile_steps
from .config import Config, duration_seconds
from .render_inputs import INSTALL_SCRIPT


def install_steps(config: Config) -> list[Step]:
    """Typed steps: boot the ISO's default menu entry, wait for the shell, type one line."""
    base = [TypeText("http://"), HttpIp(), TypeText(":"), HttpPort()]
    return [
        # Boot the default entry now instead of after the menu's 10 s timeout. If this key
        # lands before the menu is drawn it is harmless: the timeout boots the same entry.
        PressKey("enter"),
        Wait(timedelta(seconds=duration_seconds(config.build.live_boot_wait))),
        TypeText("curl -fsS "), *base, TypeText(f"/{INSTALL_SCRIPT} | sudo bash -s -- "), *base,
        PressKey("enter"),
    ]


def boot_command(config: Config) -> list[str]:
    """The compiled Packer ``boot_command`` (Packer-level strings, before HCL escaping)."""
    return compile_steps(install_steps(config))
