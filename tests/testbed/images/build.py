"""Stand-in cloud images for the nixgold test bed.

There is no NixOS image here, so the test bed boots a small Debian 12 guest that
behaves like a cloud template: cloud-init (NoCloud only), sshd, qemu-guest-agent,
growpart, serial console, empty machine-id, no SSH host keys.  Broken *variants*
flip one switch each so the verifier's negative tests have something to catch.

    python -m tests.testbed.images.build [--variant V | --all] [--cache-dir DIR] [--force]

Output (cached by recipe hash, built atomically)::

    ~/.cache/nixgold-testbed/images/<variant>-<recipe-hash>/
        disk.qcow2   2 GiB virtual, MBR, partition 1 = ext4 LABEL=nixgold-root
        vmlinuz      boot with -kernel/-initrd/-append CMDLINE
        initrd.img
        image.json   variant, recipe hash, cmdline, build time/duration, versions
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from nixgold.config.model import Config
from tests.testbed.standin import nixos

from . import base
from .base import ImageBuildError, chroot, default_cache_dir, run

__all__ = [
    "CMDLINE",
    "DISK_SIZE",
    "ROOT_LABEL",
    "CHECK_VARIANTS",
    "VARIANTS",
    "ImageBuildError",
    "ImageInfo",
    "Variant",
    "build_image",
    "default_cache_dir",
    "load_image",
    "prune_cache",
    "recipe_hash",
]

Log = Callable[[str], None]

DISK_SIZE = 2 << 30  # virtual size of disk.qcow2
PART_START = 1 << 20  # partition 1 starts at 1 MiB
ROOT_LABEL = "nixgold-root"
ROOT_UUID = "6e697867-6f6c-4400-8000-726f6f746673"  # fixed: reproducible image
DISK_SIGNATURE = 0x6E697867  # MBR disk identifier ("nixg")
# net.ifnames=0: the NIC is eth0, as in Proxmox's cloud-init network config.
CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200 net.ifnames=0"
BAKED_MACHINE_ID = "5eed5eed5eed5eed5eed5eed5eed5eed"
# A build key left in root's authorized_keys (public half only; the private half was never kept).
LEFT_BUILD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICsrv4C9jQWgQR5/SlIEf7Du8qdtG8F5Omn43kLhBE4B nixgold-build-testbed"
# crypt(3) SHA-512 of a throwaway password: root can log in on the console with it.
ROOT_PASSWORD_HASH = "$6$nixgoldtestbed$RqfJ5LqN7C5tmdF04JWMdnwRC4tb7vCFWl8emLYV5dGHGdYoHnC248DLIp0SggsqvAReaXRI3W5rW7K2U.u/1/"
NIXOS_LIKE_VERSION = "26.05.20261101.0000000 (Stand-in)"
TYPED_LINES_LOG = "/var/log/typed-lines.log"


@dataclass(frozen=True)
class Variant:
    """Recipe switches.  ``good`` has all defaults; each broken variant flips one (``clones-alike``: the
    two that only show across clones)."""

    name: str
    description: str
    agent_enabled: bool = True
    ssh_password_auth: bool = False
    machine_id: str = ""  # "" = zero-length /etc/machine-id (regenerated per boot of a clone)
    keep_host_keys: bool = False
    cloud_init_fails: bool = False
    # switches for nixgold.verify.checks' negative tests (CHECK_VARIANTS)
    # NixOS defect 2: /etc/hostname still holds what the build VM's first boot wrote ("nixos"), as a
    # cleanup.sh that does not delete it leaves it; cloud-init's update_hostname then keeps it.
    hostname_left: str = ""
    # NixOS defect 3: cloud-init settings without configuration.nix's disable_root = true (the
    # nixpkgs module default false): cc_ssh writes each clone's PVE keys to root as well.
    root_keys: bool = False
    grow_root: bool = True  # cloud-init growpart + resizefs
    build_key: str = ""  # a public key left in /root/.ssh/authorized_keys
    root_password_hash: str = ""  # root gets this password instead of a locked one
    nixos_like: bool = False  # /etc/NIXOS, nixos-version, /etc/nixos/configuration.nix (+ nix-bin)
    extra_packages: tuple[str, ...] = ()  # on top of base.PACKAGES (another cached base tree)

    def switches(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("description")
        return d


VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant("good", "healthy cloud template: every verifier check passes"),
        Variant(
            "agent-off",
            "qemu-guest-agent installed but disabled: it does not start although the virtio port appears",
            agent_enabled=False,
        ),
        Variant(
            "sshd-password",
            "sshd allows password authentication (sshd_config.d/00-* drop-in that wins)",
            ssh_password_auth=True,
        ),
        # the two defects only two clones show, in one image: one pair of boots shows both
        Variant(
            "clones-alike",
            f"/etc/machine-id holds the fixed id {BAKED_MACHINE_ID}, and SSH host keys are baked into the image "
            "with cloud-init told to keep them: all clones share both",
            machine_id=BAKED_MACHINE_ID,
            keep_host_keys=True,
        ),
        Variant(
            "cloud-init-fails",
            "a cloud.cfg.d bootcmd exits 1: cloud-init status is error, but boot, SSH and the user still work",
            cloud_init_fails=True,
        ),
    )
}

# Variants for nixgold.verify.checks' own tests (tests/test_checks_vm.py), kept apart from VARIANTS (the
# verifier negatives that tests/test_testbed_images.py boots one by one).
CHECK_VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "nixos-like",
            "good plus what the NixOS checks look at: /etc/NIXOS, a nixos-version script, "
            "/etc/nixos/configuration.nix and Debian's nix-bin (nix-instantiate works as root)",
            nixos_like=True,
            extra_packages=("nix-bin", "libdbi-perl"),  # libdbi-perl: the virtual perl-dbdabi-94
        ),
        Variant(
            "defects",
            "independent defects in one boot: the build VM's hostname left in /etc/hostname (NixOS defect 2), "
            "cloud-init writes the clone's keys to root (disable_root false, NixOS defect 3), root file system "
            "not grown (growpart/resizefs off), a build key left in root's authorized_keys, a root password set",
            hostname_left=nixos.DEFAULT_HOSTNAME,
            root_keys=True,
            grow_root=False,
            build_key=LEFT_BUILD_KEY,
            root_password_hash=ROOT_PASSWORD_HASH,
        ),
    )
}
_ALL_VARIANTS: Mapping[str, Variant] = {**VARIANTS, **CHECK_VARIANTS}


def _packages(v: Variant, packages: Sequence[str] | None = None) -> tuple[str, ...]:
    return (*(packages if packages is not None else base.PACKAGES), *v.extra_packages)


@dataclass(frozen=True)
class ImageInfo:
    """A built image.  ``built`` is True when this call built it (False: cache hit);
    ``seconds`` is how long this call took; ``build_seconds`` the recorded cold build."""

    variant: str
    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    recipe_hash: str
    path: Path
    built: bool = False
    seconds: float = 0.0
    build_seconds: float = 0.0

    def metadata(self) -> dict:
        """The parsed ``image.json``."""
        return json.loads((self.path / "image.json").read_text())


# ------------------------------------------------------------------ hashing
def _variant(variant: str | Variant) -> Variant:
    if isinstance(variant, Variant):
        return variant
    try:
        return _ALL_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown image variant {variant!r}; known: {', '.join(_ALL_VARIANTS)}") from None


def _source_digest() -> str:
    # This file and the NixOS emulation: base.py is covered by the base hash, and guest.py and
    # __init__.py do not shape the image.
    return hashlib.sha256(Path(__file__).read_bytes() + Path(nixos.__file__).read_bytes()).hexdigest()


def nixos_settings(v: Variant) -> dict:
    """The cloud-init settings of the configuration.nix nixgold renders by default (evaluated),
    as the variant's defect changes them."""
    settings = dict(nixos.evaluated_settings(Config()))
    if v.root_keys:
        settings.pop("disable_root", None)  # the module's mkDefault false applies
    return settings


def recipe_hash(
    variant: str | Variant = "good",
    *,
    packages: Sequence[str] | None = None,
    suite: str | None = None,
    mirror: str | None = None,
) -> str:
    """16 hex digits over everything that determines the image: the base (suite,
    mirror, package list), the variant's switches, the builder source and layout."""
    v = _variant(variant)
    payload = {
        "base": base.base_hash(packages=_packages(v, packages), suite=suite, mirror=mirror),
        "switches": v.switches(),
        "source": _source_digest(),
        "nixos_cloud_cfg": nixos.cloud_cfg(nixos_settings(v)),
        "disk_size": DISK_SIZE,
        "part_start": PART_START,
        "cmdline": CMDLINE,
        "root": [ROOT_LABEL, ROOT_UUID],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------- public
def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in ("disk.qcow2", "vmlinuz", "initrd.img", "image.json"))


def _info(path: Path, *, built: bool, seconds: float) -> ImageInfo:
    meta = json.loads((path / "image.json").read_text())
    return ImageInfo(
        variant=meta["variant"],
        disk=path / "disk.qcow2",
        kernel=path / "vmlinuz",
        initrd=path / "initrd.img",
        cmdline=meta["cmdline"],
        recipe_hash=meta["recipe_hash"],
        path=path,
        built=built,
        seconds=round(seconds, 3),
        build_seconds=float(meta.get("build_seconds", 0.0)),
    )


def load_image(variant: str = "good", cache_dir: Path | str | None = None) -> ImageInfo | None:
    """The cached image for ``variant`` if it is complete, else None (never builds)."""
    v = _variant(variant)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / f"{v.name}-{recipe_hash(v)}"
    return _info(path, built=False, seconds=0.0) if _complete(path) else None


def build_image(
    variant: str = "good",
    cache_dir: Path | str | None = None,
    log: Log | None = print,
    *,
    force: bool = False,
) -> ImageInfo:
    """Build (or reuse from cache) the stand-in image ``variant``.

    Cache: ``<cache_dir>/<variant>-<recipe_hash>/`` (default cache dir
    ``~/.cache/nixgold-testbed/images``).  A complete cached image is returned
    at once; otherwise it is built in a temporary directory and renamed into
    place.  Concurrent callers serialise on a lock file.
    """
    t0 = time.monotonic()
    v = _variant(variant)
    logf: Log = log or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rh = recipe_hash(v)
    final = cache / f"{v.name}-{rh}"
    if not force and _complete(final):
        return _info(final, built=False, seconds=time.monotonic() - t0)
    with base.file_lock(cache / ".locks" / f"{v.name}-{rh}.lock"):
        if not force and _complete(final):  # somebody else built it meanwhile
            return _info(final, built=False, seconds=time.monotonic() - t0)
        base.remove_dead_builds(cache, f"{v.name}-{rh}")
        _build(v, rh, cache, final, logf, t0)
    return _info(final, built=True, seconds=time.monotonic() - t0)


def prune_cache(cache_dir: Path | str | None = None, log: Log | None = print) -> list[Path]:
    """Delete cached images and base trees that the current recipes no longer
    produce, and stale temporary build directories.  Returns what was removed."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if not cache.is_dir():
        return []
    keep = {f"{name}-{recipe_hash(name)}" for name in _ALL_VARIANTS}
    keep |= {f"base-{base.base_hash(packages=_packages(v))}" for v in _ALL_VARIANTS.values()}
    removed = []
    for entry in sorted(cache.iterdir()):
        if entry.name in keep or entry.name == ".locks" or not entry.is_dir():
            continue
        stale_tmp = entry.name.startswith(".tmp-") and time.time() - entry.stat().st_mtime > 3600
        ours = entry.name.startswith("base-") or any(entry.name.startswith(f"{n}-") for n in _ALL_VARIANTS)
        if stale_tmp or (ours and not entry.name.startswith(".")):
            base.safe_rmtree(entry)
            removed.append(entry)
            if log:
                log(f"pruned {entry}")
    return removed


# -------------------------------------------------------------------- build
def _build(v: Variant, rh: str, cache: Path, final: Path, log: Log, t0: float) -> None:
    def stage(msg: str) -> None:
        log(f"[image {v.name}-{rh}] {msg} ({time.monotonic() - t0:.1f}s)")

    for tool in ("mke2fs", "qemu-img", "tar", "chroot"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found (see tests/testbed/images/README)")
    tarball, base_meta = base.ensure_base(cache, log, packages=_packages(v))
    stage(f"base tree ready: {tarball}")
    scratch = Path(tempfile.mkdtemp(prefix=f"nixgold-{v.name}-{rh}-", dir=base.work_root()))
    out = Path(tempfile.mkdtemp(prefix=f".tmp-{v.name}-{rh}-", dir=cache))
    try:
        root = scratch / "root"
        base.tar_extract(tarball, root)
        stage("base tree unpacked")
        configure_tree(root, v)
        versions = base.package_versions(root)
        clean_tree(root, v)
        host_keys = sorted(p.read_text().split()[0] + " " + p.read_text().split()[1]
                           for p in (root / "etc/ssh").glob("ssh_host_*_key.pub"))
        stage("tree configured")

        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise ImageBuildError(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
        shutil.copy2(kernels[0], out / "vmlinuz")
        shutil.copy2(initrds[0], out / "initrd.img")

        raw = scratch / "disk.raw"
        make_disk(root, raw)
        stage("ext4 root file system written (mke2fs -d)")
        run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
             "-m", "4", "-W", str(raw), str(out / "disk.qcow2")]
        )
        stage("disk.qcow2 written")

        meta = {
            "variant": v.name,
            "description": v.description,
            "switches": v.switches(),
            "recipe_hash": rh,
            "base_hash": base_meta["base_hash"],
            "suite": base_meta["suite"],
            "mirror": base_meta["mirror"],
            "cmdline": CMDLINE,
            "kernel_version": kernels[0].name.removeprefix("vmlinuz-"),
            "root": {"label": ROOT_LABEL, "uuid": ROOT_UUID, "fstype": "ext4", "partition": 1},
            "disk_virtual_size": DISK_SIZE,
            "disk_file_size": (out / "disk.qcow2").stat().st_size,
            "typed_lines_log": TYPED_LINES_LOG,
            "machine_id": v.machine_id,  # "" = empty file, generated at first boot
            "host_keys": host_keys,  # public host keys baked into the image ([] = none)
            "package_versions": {
                k: versions.get(k)
                for k in ("cloud-init", "openssh-server", "qemu-guest-agent", "systemd",
                          f"linux-image-{kernels[0].name.removeprefix('vmlinuz-')}")
            },
            "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_build_seconds": base_meta.get("build_seconds"),
            "build_seconds": round(time.monotonic() - t0, 1),
        }
        base.publish(out, final, "image.json", meta)
        stage(f"cached at {final}")
    finally:
        base.safe_rmtree(scratch)
        base.safe_rmtree(out)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink():
        p.unlink()
    p.write_text(text)
    os.chmod(p, mode)
    return p


def _symlink(root: Path, rel: str, target: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.symlink_to(target)


# Debian's module lists minus what a Proxmox clone on an offline test network
# cannot use (apt, snap, landscape, puppet, ...).  Notably no
# package-update-upgrade-install: Proxmox's default user-data says
# `package_upgrade: true`, which would fail without a network and turn
# cloud-init's status into error.  Fewer modules also means fewer imports.
CLOUD_MODULES = """\
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - disk_setup
  - mounts
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users-groups
  - ssh
cloud_config_modules:
  - locale
  - set-passwords
  - timezone
  - runcmd
cloud_final_modules:
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - phone-home
  - final-message
  - power-state-change
"""

QGA_UNIT = """\
# nixgold test bed: Debian's unit plus an [Install] section, so that the agent
# has a real enabled/disabled state ("static" in Debian).  Enabled = wanted by
# the virtio-serial port's device unit (as in Fedora/RHEL), started when it appears.
[Unit]
Description=QEMU Guest Agent
BindsTo=dev-virtio\\x2dports-org.qemu.guest_agent.0.device
After=dev-virtio\\x2dports-org.qemu.guest_agent.0.device

[Service]
ExecStart=-/usr/sbin/qemu-ga
Restart=always
RestartSec=0

[Install]
WantedBy=dev-virtio\\x2dports-org.qemu.guest_agent.0.device
"""

# Same as Debian's rule minus SYSTEMD_WANTS, so a disabled agent stays off.
QGA_UDEV = """\
# nixgold test bed: the agent is started through its [Install] section, not udev.
SUBSYSTEM=="virtio-ports", ATTR{name}=="org.qemu.guest_agent.0", TAG+="systemd"
"""

TTY1_LOGGER = f"""\
#!/bin/sh
# nixgold test bed: append every line typed on the tty1 console to {TYPED_LINES_LOG},
# so a test can prove that keystrokes sent to the guest (Proxmox sendkey) arrived.
printf 'typed-line logger on tty1: lines go to %s\\n' '{TYPED_LINES_LOG}'
while IFS= read -r line; do
    printf '%s\\n' "$line" >> {TYPED_LINES_LOG}
done
"""

TTY1_UNIT = """\
[Unit]
Description=nixgold test bed: log lines typed on tty1
After=systemd-user-sessions.service
Conflicts=getty@tty1.service autovt@tty1.service
ConditionPathExists=/dev/tty1

[Service]
ExecStart=/usr/local/sbin/tty1-line-logger
StandardInput=tty
StandardOutput=tty
StandardError=journal
TTYPath=/dev/tty1
TTYReset=yes
TTYVHangup=yes
TTYVTDisallocate=no
Restart=always
RestartSec=0

[Install]
WantedBy=multi-user.target
"""


def configure_tree(root: Path, v: Variant) -> None:
    """Turn the debootstrap base into a cloud template (+ the variant's defect)."""
    _write(
        root,
        "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
    )
    _write(root, "etc/fstab", f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")
    _write(root, "etc/resolv.conf", "# nixgold test bed: no DNS on the guest network\n")

    # cloud-init: NoCloud only (single-line list: ds-identify parses it), render
    # network config for systemd-networkd.
    _write(
        root,
        "etc/cloud/cloud.cfg.d/90_nixgold_testbed.cfg",
        "# nixgold test bed\n"
        "datasource_list: [ NoCloud, None ]\n"
        "system_info:\n"
        "  network:\n"
        "    renderers: ['networkd']\n"
        "# RSA key generation alone costs 2-7 s under TCG; sshd uses these two.\n"
        "ssh_genkeytypes: [ecdsa, ed25519]\n"
        + CLOUD_MODULES,
    )
    # The NixOS template's cloud-init settings and hostname handling (tests/testbed/standin/nixos.py):
    # its module lists (update_hostname, no set_hostname; ssh in the config stage), disable_root,
    # datasource_list, no host key regeneration; cloud-init always runs; no /etc/hostname (cleanup.sh
    # deleted the build VM's), os-release's DEFAULT_HOSTNAME=nixos until cloud-init sets the clone's.
    _write(root, nixos.CLOUD_CFG, nixos.cloud_cfg(nixos_settings(v)))
    _write(root, nixos.DS_IDENTIFY_CFG, nixos.DS_IDENTIFY)
    os_release = root / "usr/lib/os-release"
    os_release.write_text(os_release.read_text() + nixos.OS_RELEASE_LINE)
    (root / "etc/hostname").unlink(missing_ok=True)
    if v.hostname_left:
        _write(root, "etc/hostname", v.hostname_left + "\n")
    chroot(root, "systemctl", "enable", "systemd-networkd.service", "systemd-networkd-wait-online.service")
    # The DHCP identity is the NIC's MAC, as on the NixOS template: nixpkgs'
    # nixos/modules/services/networking/dhcpcd.nix writes a dhcpcd.conf with neither `duid` nor
    # `clientid`, so dhcpcd sends the hardware address as its client id (dhcpcd.conf(5)). networkd's
    # default DUID comes from /etc/machine-id: with the clones-alike variant every clone would ask
    # dnsmasq with one client id and get one address, a failure NixOS clones do not have.
    _write(root, "etc/systemd/networkd.conf.d/nixgold-duid.conf",
           "# nixgold test bed: DHCP client id from the MAC, like NixOS's dhcpcd\n[DHCPv4]\nDUIDType=link-layer\n")
    # Only wait for one link (eth0), and not forever.
    _write(
        root,
        "etc/systemd/system/systemd-networkd-wait-online.service.d/nixgold.conf",
        "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n",
    )

    # sshd: keys only.  Debian's sshd_config leaves PasswordAuthentication at its
    # default (yes), so the good image must say no.
    _write(
        root,
        "etc/ssh/sshd_config.d/50-nixgold-testbed.conf",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
    )
    # cloud-init's ssh module regenerates the host keys on first boot (before
    # ssh.service); should cloud-init not get that far, still start sshd.
    _write(
        root,
        "etc/systemd/system/ssh.service.d/nixgold-hostkeys.conf",
        "[Service]\nExecStartPre=\n"
        "ExecStartPre=/bin/sh -c 'for t in ed25519 ecdsa; do f=/etc/ssh/ssh_host_$${t}_key; "
        "[ -e $$f ] || ssh-keygen -q -t $$t -N \"\" -f $$f; done'\n"
        "ExecStartPre=/usr/sbin/sshd -t\n",
    )
    # No package sources: there is no network, and apt must not try one.
    _write(root, "etc/apt/sources.list", "# nixgold test bed: no network, no package sources\n")
    for f in (root / "etc/apt/sources.list.d").glob("*"):
        f.unlink()

    # qemu-guest-agent: give it an enabled/disabled state.
    _write(root, "etc/systemd/system/qemu-guest-agent.service", QGA_UNIT)
    _write(root, "etc/udev/rules.d/60-qemu-guest-agent.rules", QGA_UDEV)
    chroot(root, "update-rc.d", "-f", "qemu-guest-agent", "remove")
    chroot(root, "systemctl", "enable" if v.agent_enabled else "disable", "qemu-guest-agent.service")

    # Console: tty1 runs the line logger instead of a getty; getty on ttyS0.
    _write(root, "usr/local/sbin/tty1-line-logger", TTY1_LOGGER, 0o755)
    _write(root, "etc/systemd/system/tty1-line-logger.service", TTY1_UNIT)
    (root / "etc/systemd/system/getty.target.wants/getty@tty1.service").unlink(missing_ok=True)
    chroot(root, "systemctl", "mask", "getty@tty1.service")
    chroot(root, "systemctl", "enable", "tty1-line-logger.service", "serial-getty@ttyS0.service")

    # No network to fetch from; keep the timers from waking up under TCG.
    # e2scrub_reap alone costs ~14 s of CPU at boot under TCG.
    chroot(
        root, "systemctl", "disable", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
        "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer",
    )

    chroot(root, "passwd", "--lock", "root")

    # ---- the variant's defect
    if v.ssh_password_auth:
        # sshd takes the first value it reads; 00-* sorts before our 50-* drop-in.
        _write(root, "etc/ssh/sshd_config.d/00-allow-passwords.conf", "PasswordAuthentication yes\n")
    if v.keep_host_keys:
        # The keys debootstrap's openssh-server postinst generated stay, and
        # cloud-init (ssh_deletekeys defaults to true) must not replace them.
        _write(root, "etc/cloud/cloud.cfg.d/95_keep_host_keys.cfg", "ssh_deletekeys: false\n")
    if not v.grow_root:
        _write(root, "etc/cloud/cloud.cfg.d/95_no_grow.cfg", "growpart:\n  mode: 'off'\nresize_rootfs: false\n")
    if v.build_key:
        _write(root, "root/.ssh/authorized_keys", v.build_key + "\n", 0o600)
        os.chmod(root / "root/.ssh", 0o700)
    if v.root_password_hash:
        chroot(root, "usermod", "-p", v.root_password_hash, "root")
    if v.nixos_like:
        _write(root, "etc/NIXOS", "")
        _write(root, "usr/local/bin/nixos-version", f"#!/bin/sh\necho '{NIXOS_LIKE_VERSION}'\n", 0o755)
        _write(root, "etc/nixos/configuration.nix",
               "# nixgold test bed (nixos-like): a stand-in, not a NixOS system\n{ ... }:\n{\n}\n")
    if v.cloud_init_fails:
        _write(
            root,
            "etc/cloud/cloud.cfg.d/95_failing_bootcmd.cfg",
            "# nixgold test bed (cloud-init-fails): a module error, nothing else breaks\n"
            "bootcmd:\n"
            "  - [sh, -c, 'echo nixgold-testbed: deliberate bootcmd failure >&2; exit 1']\n",
        )


def clean_tree(root: Path, v: Variant) -> None:
    """`cloud-init clean`, empty machine-id, no host keys, no logs or caches."""
    for rel in ("var/lib/cloud", "var/log/cloud-init.log", "var/log/cloud-init-output.log"):
        p = root / rel
        if p.is_dir():
            shutil.rmtree(p)
            p.mkdir()
        else:
            p.unlink(missing_ok=True)
    _write(root, "etc/machine-id", (v.machine_id + "\n") if v.machine_id else "", 0o444)
    _symlink(root, "var/lib/dbus/machine-id", "/etc/machine-id")
    if not v.keep_host_keys:
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
    elif not list((root / "etc/ssh").glob("ssh_host_*_key")):
        raise ImageBuildError(f"{v.name}: the base tree has no SSH host keys to keep")
    for rel in ("var/lib/systemd/random-seed", "var/lib/systemd/credential.secret", "root/.bash_history"):
        (root / rel).unlink(missing_ok=True)
    for d in ("tmp", "var/tmp", "var/cache/apt", "var/lib/dhcp"):
        p = root / d
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for log in (root / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink():
            log.write_bytes(b"")


def mbr(disk_size: int, part_start: int, signature: int) -> bytes:
    """A DOS partition table with one bootable Linux partition to the end of the disk."""
    first = part_start // 512
    count = disk_size // 512 - first
    sector = bytearray(512)
    struct.pack_into("<I", sector, 440, signature)
    # status, CHS first (LBA-only marker), type 0x83, CHS last, LBA first, sectors
    sector[446:462] = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", first, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def make_disk(root: Path, raw: Path) -> None:
    """Sparse raw disk: MBR + ext4 (populated from ``root`` by ``mke2fs -d``,
    no mounting) filling partition 1."""
    with open(raw, "wb") as fh:
        fh.truncate(DISK_SIZE)
        fh.write(mbr(DISK_SIZE, PART_START, DISK_SIGNATURE))
    blocks = (DISK_SIZE - PART_START) // 4096
    run(
        [
            "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096",
            "-L", ROOT_LABEL, "-U", ROOT_UUID,
            "-E", f"offset={PART_START},root_owner=0:0,lazy_itable_init=0",
            "-d", str(root),
            str(raw), str(blocks),
        ]
    )


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.images.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=list(_ALL_VARIANTS), help="repeatable; default: good")
    parser.add_argument("--all", action="store_true", help="build every variant")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--json", action="store_true", help="print ImageInfo records as JSON")
    parser.add_argument("--prune", action="store_true", help="delete cached images of older recipes")
    args = parser.parse_args(argv)
    if args.prune:
        prune_cache(args.cache_dir)
        if not (args.variant or args.all):
            return 0
    names = list(_ALL_VARIANTS) if args.all else (args.variant or ["good"])
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    infos = []
    for name in names:
        try:
            info = build_image(name, args.cache_dir, log, force=args.force)
        except ImageBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        infos.append(info)
        log(f"{name}: {'built' if info.built else 'cached'} in {info.seconds:.1f}s -> {info.path}")
    if args.json:
        print(json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(i).items()} for i in infos], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
