"""What the QEMU guest agent tells about a guest, read the way verify and Packer need it."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def agent_addresses(interfaces: Sequence[Mapping[str, Any]], mac: str | None = None) -> list[str]:
    """Usable addresses from ``network-get-interfaces``, best first.

    Skips loopback, 127/8, ::1, link-local 169.254/16 and fe80::/10; IPv4 before IPv6;
    the interface whose MAC matches ``mac`` (the clone's net0) before others.
    """
    import ipaddress

    ranked: list[tuple[int, int, int, str]] = []
    for index, iface in enumerate(interfaces or []):
        if iface.get("name") == "lo":
            continue
        hw = str(iface.get("hardware-address") or "").lower()
        own = 0 if mac and hw == mac.lower() else 1
        for addr in iface.get("ip-addresses") or []:
            text = str(addr.get("ip-address") or "")
            try:
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
                continue
            ranked.append((0 if ip.version == 4 else 1, own, index, str(ip)))
    ranked.sort()
    seen: list[str] = []
    for *_rest, ip in ranked:
        if ip not in seen:
            seen.append(ip)
    return seen
