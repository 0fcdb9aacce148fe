"""What a boot_command costs: keystrokes (one ``sendkey`` API call each) and the estimated typing time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nixgold.bootcmd.grammar import KeyEvent, WaitEvent, parse_to_qemu_keys

#: Seconds the proxmox plugin sleeps after each sendkey call unless ``boot_key_interval`` is set.
DEFAULT_KEY_INTERVAL_S = 0.005

#: Assumed wall time of one ``PUT .../sendkey`` round trip (HTTPS to pveproxy, proxied to
#: pvedaemon, QMP ``send-key``), on a LAN with a kept-alive connection. An assumption, not a
#: measurement: the call is synchronous, so this adds to ``boot_key_interval`` for every key.
API_LATENCY_S = 0.015

@dataclass(frozen=True)
class Stats:
    """Cost of typing a boot_command on proxmox: one HTTPS PUT per keystroke.

    ``typing_seconds = keystrokes * (key_interval_s + api_latency_s)``; ``{{ .HTTPIP }}`` and
    ``{{ .HTTPPort }}`` are unknown until Packer runs, so they are counted as
    ``assumed_http_ip``/``assumed_http_port`` (defaults are the longest possible values).
    """

    keystrokes: int
    wait_seconds: float
    typing_seconds: float
    total_seconds: float
    key_interval_s: float
    api_latency_s: float
    assumed_http_ip: str
    assumed_http_port: int

    def __str__(self) -> str:
        return (
            f"{self.keystrokes} keystrokes (one sendkey API call each) x "
            f"({self.key_interval_s * 1000:g} ms interval + {self.api_latency_s * 1000:g} ms assumed API latency)"
            f" = {self.typing_seconds:.2f} s typing + {self.wait_seconds:g} s waits = {self.total_seconds:.2f} s;"
            f" HTTPIP/HTTPPort counted as {self.assumed_http_ip}:{self.assumed_http_port}"
        )

def stats(
    boot_command: Sequence[str],
    key_interval_s: float,
    assumed_http_ip: str = "255.255.255.255",
    assumed_http_port: int = 65535,
) -> Stats:
    """Keystrokes and estimated typing time: keys x (interval + :data:`API_LATENCY_S`) + waits."""
    events = parse_to_qemu_keys(boot_command, assumed_http_ip, assumed_http_port)
    keys = sum(isinstance(e, KeyEvent) for e in events)
    waits = sum(e.nanoseconds for e in events if isinstance(e, WaitEvent)) / 1e9
    typing = keys * (key_interval_s + API_LATENCY_S)
    return Stats(keys, waits, typing, typing + waits, key_interval_s, API_LATENCY_S, assumed_http_ip, assumed_http_port)
