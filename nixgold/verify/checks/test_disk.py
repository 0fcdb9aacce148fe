"""The boot disk: Proxmox's resize reached the guest, and the root file system grew into it."""

from __future__ import annotations

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
    device's parent, or the device itself when it has none)."""
    source = run(host, ROOT_SOURCE)
    assert source.rc == 0 and source.stdout.strip(), f"cannot find the root device ({failure(source)})"
    device = source.stdout.strip().splitlines()[0]
    listing = run(host, BLOCK_DEVICES)
    assert listing.rc == 0, f"cannot list the block devices ({failure(listing)})"
    devices: dict[str, tuple[str, str]] = {}
    for line in listing.stdout.splitlines():
        fields = line.split(" ")
        if len(fields) == 3:
            devices.setdefault(fields[0], (fields[1], fields[2]))
    parent = devices.get(device, ("", ""))[0]
    disk = parent or device
    size = devices.get(disk, ("", ""))[1]
    listed = "it without a size" if disk in devices else "no such device"
    assert size.isdigit(), f"cannot read the size of {disk} (lsblk lists {listed})"
    return disk, int(size)


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
