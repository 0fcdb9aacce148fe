"""The boot disk: Proxmox's resize reached the guest, and the root file system grew into it."""

from __future__ import annotations

import shlex

import pytest

from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import failure, run

GROWN_FRACTION = 0.9  # partition table, ESP and file system overhead stay below 10 %
ROOT_SOURCE = "findmnt -nvo SOURCE /"
#: Every block device: path, parent's path, size in bytes (-r: one line each, blanks escaped).
BLOCK_DEVICES = "lsblk -bnrpo NAME,PKNAME,SIZE"
ROOT_SIZE = "df -B1 --output=size / | tail -n 1"


def probes(ctx):
    return [Probe(ROOT_SOURCE), Probe(BLOCK_DEVICES), Probe(ROOT_SIZE)]


def _gib(n: int) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


def root_disk(host) -> tuple[str, int]:
    """(device, size in bytes) of the whole disk that holds the root file system (the root
    device's parent, or the device itself when it has none). From the one listing of every block
    device when findmnt names the device as lsblk does; else lsblk is asked about that name (a
    /dev/disk/by-* link, a /dev/mapper name it resolves)."""
    source = run(host, ROOT_SOURCE)
    assert source.rc == 0 and source.stdout.strip(), f"cannot find the root device ({failure(source)})"
    device = source.stdout.strip().splitlines()[0]
    listing = run(host, BLOCK_DEVICES)
    devices: dict[str, tuple[str, str]] = {}
    for line in listing.stdout.splitlines() if listing.rc == 0 else ():
        fields = line.split(" ")
        if len(fields) == 3:
            devices.setdefault(fields[0], (fields[1], fields[2]))
    disk = (devices[device][0] or device) if device in devices else ""
    if disk in devices and devices[disk][1].isdigit():
        return disk, int(devices[disk][1])
    parent = run(host, f"lsblk -ndo PKNAME {shlex.quote(device)}").stdout.strip()
    disk = f"/dev/{parent}" if parent else device
    size = run(host, f"lsblk -bdno SIZE {shlex.quote(disk)}")
    assert size.rc == 0 and size.stdout.strip().isdigit(), f"cannot read the size of {disk} ({failure(size)})"
    return disk, int(size.stdout.strip())


@pytest.mark.check("disk.size", "the boot disk has the size Proxmox gave it (the resize reached the guest)")
def test_disk_has_the_proxmox_size(host, clone):
    if not clone.disk_bytes:
        pytest.skip("needs the disk size from Proxmox (runs under `invoke verify`)")
    disk, size = root_disk(host)
    assert size == clone.disk_bytes, \
        f"{disk} is {_gib(size)} ({size} bytes), Proxmox says {_gib(clone.disk_bytes)} ({clone.disk_bytes} bytes)"


@pytest.mark.check("disk.root-grown", "the root file system grew to fill the disk")
def test_root_filesystem_grew(host):
    disk, size = root_disk(host)
    df = run(host, ROOT_SIZE)
    assert df.rc == 0 and df.stdout.strip().isdigit(), f"df / failed ({failure(df)})"
    root = int(df.stdout.strip())
    assert root >= GROWN_FRACTION * size, \
        f"the root file system is {_gib(root)} on a {_gib(size)} disk ({disk}): partition or file system not grown"
