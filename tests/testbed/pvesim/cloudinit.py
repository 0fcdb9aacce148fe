"""The NoCloud drive exactly as qemu-server ``PVE::QemuServer::Cloudinit`` builds it.

``user-data`` / ``network-config`` (version 1, MAC-matched, only netN that
have an ipconfigN) / ``meta-data`` (``instance-id: sha1(user . network)``) /
``vendor-data`` (empty), packed with ``genisoimage -iso-level 3 -J -R -V
cidata`` and written into the drive's volume with ``qemu-img dd``.
``cicustom`` snippets replace the generated parts.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

from .errors import die
from .vmconfig import is_flag_set

log = logging.getLogger(__name__)

WINDOWS_OSTYPES = {"wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11"}


@dataclass
class DnsDefaults:
    """What PVE reads from the host's /etc/resolv.conf when the VM sets nothing."""

    nameservers: list[str]
    search: list[str]

    @classmethod
    def from_resolv_conf(cls, path: Path = Path("/etc/resolv.conf")) -> "DnsDefaults":
        ns: list[str] = []
        search: list[str] = []
        try:
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and len(ns) < 3:
                    ns.append(parts[1])
                elif parts and parts[0] in ("search", "domain"):
                    search = parts[1:]
        except OSError:
            pass
        return cls(ns, search)


def _starts_with_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("/", 1)[0])
    except ValueError:
        return False
    return True


def ipconfig_problem(res: dict[str, str]) -> str | None:
    """The combinations qemu-server Network.pm:220-236 (parse_ipconfig) only ``warn`` about."""
    if res.get("gw") and not res.get("ip"):
        return "gateway specified without specifying an IP address"
    if res.get("gw6") and not res.get("ip6"):
        return "IPv6 gateway specified without specifying an IPv6 address"
    if res.get("gw") and res.get("ip") == "dhcp":
        return "gateway specified together with DHCP"
    if res.get("gw6") and not _starts_with_ipv6(res["ip6"]):  # auto, dhcp, manual
        return f"IPv6 gateway specified together with {res['ip6']} address"
    return None


def parse_ipconfig(text: str) -> dict[str, str]:
    """qemu-server Network::parse_ipconfig (Network.pm:211-245).

    It runs only while the cloud-init ISO is generated, never in the API (PVE accepts
    ``ip=dhcp,gw=...``): a bad combination is a warning and the interface gets no address
    configuration (``undef``, here ``{}``).
    """
    res: dict[str, str] = {}
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            res[k] = v
    problem = ipconfig_problem(res)
    if problem:
        log.warning("ipconfig '%s': %s", text, problem)
        return {}
    if not res.get("ip") and not res.get("ip6"):
        return {"ip": "dhcp", "ip6": "dhcp"}
    return res


def citype(conf: dict[str, str]) -> str:
    if conf.get("citype"):
        return conf["citype"]
    if conf.get("ostype") in WINDOWS_OSTYPES:
        return "configdrive2"
    return "nocloud"


def hostname_fqdn(conf: dict[str, str], vmid: int) -> tuple[str, str]:
    hostname = conf.get("name") or f"VM{vmid}"
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    if conf.get("searchdomain"):
        return hostname, f"{hostname}.{conf['searchdomain'].split()[0]}"
    return hostname, hostname


def dns_conf(conf: dict[str, str], dns: DnsDefaults) -> tuple[list[str], list[str]]:
    search = conf["searchdomain"].split() if conf.get("searchdomain") is not None else list(dns.search)
    if conf.get("nameserver") is not None:
        ns = conf["nameserver"].split()
    else:
        ns = list(dns.nameservers)
    return search, ns


def userdata(conf: dict[str, str], vmid: int) -> str:
    hostname, fqdn = hostname_fqdn(conf, vmid)
    out = "#cloud-config\n"
    out += f"hostname: {hostname}\n"
    out += "manage_etc_hosts: true\n"
    out += f"fqdn: {fqdn}\n"
    user = conf.get("ciuser")
    password = conf.get("cipassword")
    if user is not None:
        out += f"user: {user}\n"
        if user == "root":
            out += "disable_root: False\n"
    if password is not None:
        out += f"password: {password}\n"
    if conf.get("sshkeys") is not None:
        keys = [k.rstrip("\n") for k in unquote(conf["sshkeys"]).split("\n")]
        keys = [k for k in keys if k.strip()]
        out += "ssh_authorized_keys:\n"
        for key in keys:
            out += f"  - {key}\n"
    out += "chpasswd:\n"
    out += "  expire: False\n"
    if user is None or user != "root":
        out += "users:\n"
        out += "  - default\n"
    # Cloudinit.pm:168: !defined($conf->{ciupgrade}) || $conf->{ciupgrade}
    if conf.get("ciupgrade") is None or is_flag_set(conf["ciupgrade"]):
        out += "package_upgrade: true\n"
    return out


def _net_mac(value: str) -> str | None:
    for part in value.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k == "macaddr" or re.fullmatch(r"[a-z0-9\-_]+", k) and re.fullmatch(r"[0-9A-Fa-f:]{17}", v):
                return v
    return None


def network_config(conf: dict[str, str], dns: DnsDefaults) -> str:
    out = "version: 1\nconfig:\n"
    ifaces = sorted((k for k in conf if re.fullmatch(r"net\d+", k)))  # Perl's string sort
    for iface in ifaces:
        idx = iface[3:]
        if not conf.get(f"ipconfig{idx}"):
            continue
        ipconf = parse_ipconfig(conf[f"ipconfig{idx}"])
        mac = _net_mac(conf[iface])
        if not mac:
            raise die(f"network interface '{iface}' has no mac address")
        i = "    "
        out += f"{i}- type: physical\n{i}  name: eth{idx}\n{i}  mac_address: '{mac.lower()}'\n{i}  subnets:\n"
        i += "  "
        ip = ipconf.get("ip")
        if ip is not None:
            if ip == "dhcp":
                out += f"{i}- type: dhcp4\n"
            else:
                iface4 = ipaddress.IPv4Interface(ip)
                out += f"{i}- type: static\n{i}  address: '{iface4.ip}'\n{i}  netmask: '{iface4.netmask}'\n"
                if ipconf.get("gw"):
                    out += f"{i}  gateway: '{ipconf['gw']}'\n"
        ip6 = ipconf.get("ip6")
        if ip6 is not None:
            if ip6 == "dhcp":
                out += f"{i}- type: dhcp6\n"
            elif ip6 == "auto":
                out += f"{i}- type: ipv6_slaac\n"
            else:
                out += f"{i}- type: static6\n{i}  address: '{ip6}'\n"
                if ipconf.get("gw6"):
                    out += f"{i}  gateway: '{ipconf['gw6']}'\n"
    search, ns = dns_conf(conf, dns)
    i = "    "
    out += f"{i}- type: nameserver\n"
    if ns:
        out += f"{i}  address:\n" + "".join(f"{i}  - '{n}'\n" for n in ns)
    if search:
        out += f"{i}  search:\n" + "".join(f"{i}  - '{s}'\n" for s in search)
    return out


def metadata(user: str, network: str) -> str:
    return f"instance-id: {hashlib.sha1((user + network).encode()).hexdigest()}\n"


@dataclass
class CloudInitFiles:
    user: str
    network: str
    meta: str
    vendor: str


def generate(conf: dict[str, str], vmid: int, dns: DnsDefaults,
             read_snippet: Callable[[str], str] | None = None) -> CloudInitFiles:
    """The four NoCloud files (cicustom parts read via ``read_snippet(volid)``)."""
    custom: dict[str, str] = {}
    if conf.get("cicustom") and read_snippet is not None:
        for part in conf["cicustom"].split(","):
            if "=" in part:
                kind, volid = part.split("=", 1)
                custom[kind] = read_snippet(volid)
    user = custom.get("user") or userdata(conf, vmid)
    network = custom.get("network") or network_config(conf, dns)
    vendor = custom.get("vendor", "")
    meta = custom.get("meta") or metadata(user, network)
    if sum(map(len, (user, network, meta, vendor))) > 3 * 1024 * 1024:
        raise die("Cloud-Init sum of snippets too big (> 3 MiB)")
    return CloudInitFiles(user, network, meta, vendor)


def dump(conf: dict[str, str], vmid: int, kind: str, dns: DnsDefaults) -> str:
    """GET .../cloudinit/dump?type=user|network|meta."""
    user = userdata(conf, vmid)
    if kind == "user":
        return user
    network = network_config(conf, dns)
    if kind == "network":
        return network
    return metadata(user, network)


def write_drive(files: CloudInitFiles, volume_path: Path, fmt: str) -> None:
    """genisoimage the files and copy the ISO into the (4 MiB) drive volume."""
    if shutil.which("genisoimage") is None:
        raise die("genisoimage not installed")
    with tempfile.TemporaryDirectory(prefix="pvesim-ci-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        (root / "user-data").write_text(files.user)
        (root / "network-config").write_text(files.network)
        (root / "meta-data").write_text(files.meta)
        (root / "vendor-data").write_text(files.vendor)
        iso = Path(tmp) / "ci.iso"
        subprocess.run(["genisoimage", "-quiet", "-iso-level", "3", "-J", "-R", "-V", "cidata", "-o", str(iso),
                        str(root)], check=True, capture_output=True)
        # Debian's qemu-img has no PVE-patched ``dd -n``/``osize``: build a fresh
        # 4 MiB volume next to the old one, write the ISO into it, swap it in
        # atomically (a running QEMU keeps its open inode and image lock).
        size = max(4 * 1024 * 1024, iso.stat().st_size)
        tmpvol = volume_path.with_name(f".{volume_path.name}.new")
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(tmpvol), str(size)], check=True,
                       capture_output=True)
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", fmt, str(iso), str(tmpvol)],
                       check=True, capture_output=True)
        tmpvol.replace(volume_path)
