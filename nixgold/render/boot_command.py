"""The keys typed into the NixOS minimal ISO: as few as possible.

The ISO runs no guest agent and has empty passwords, so Packer cannot SSH into it. Instead
the boot_command types one line into the live system's autologin shell (user ``nixos``,
passwordless sudo, US keymap) that fetches install.sh from Packer's HTTP server and runs
it as root; install.sh does everything else inside the guest and reboots into the
installed system, which Packer then reaches through its guest agent.
"""

from __future__ import annotations

from datetime import timedelta

from nixgold.bootcmd.steps import HttpIp, HttpPort, PressKey, Step, TypeText, Wait, compile_steps
from nixgold.config.model import Config
from nixgold.render.inputs import INSTALL_SCRIPT
from nixgold.units import duration_seconds

#: Most keys the boot_command may type (worst case: a 15-character IP, a 5-digit port). Every
#: key is one ``sendkey`` API call and a chance for the live console to drop a character.
MAX_KEYSTROKES = 120

#: curl's retries while the live system's network comes up: ``--retry-all-errors`` also
#: retries "network unreachable" / "connection refused" (curl >= 7.71; ``--retry`` alone
#: only retries timeouts and HTTP 408/429/5xx), every 2 s for a minute. Without it a line
#: typed before DHCP finished fails once and the build waits for ssh_timeout.
CURL_RETRY = "--retry-all-errors --retry 30 --retry-delay 2"


def install_steps(config: Config) -> list[Step]:
    """Typed steps: boot the ISO's default menu entry, wait for the shell, type one line.

    ``u=http://IP:PORT;curl -fsS <retry> $u/install.sh|sudo bash -s $u`` — the base URL is
    typed once and reused, which pays for the retry options within :data:`MAX_KEYSTROKES`.
    """
    return [
        # Boot the default entry now instead of after the menu's 10 s timeout. If this key
        # lands before the menu is drawn it is harmless: the timeout boots the same entry.
        PressKey("enter"),
        Wait(timedelta(seconds=duration_seconds(config.build.live_boot_wait))),
        TypeText("u=http://"), HttpIp(), TypeText(":"), HttpPort(),
        TypeText(f";curl -fsS {CURL_RETRY} $u/{INSTALL_SCRIPT}|sudo bash -s $u"),
        PressKey("enter"),
    ]


def boot_command(config: Config) -> list[str]:
    """The compiled Packer ``boot_command`` (Packer-level strings, before HCL escaping)."""
    return compile_steps(install_steps(config))
