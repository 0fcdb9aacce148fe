"""The stand-in installer ISO: a Debian 12 live system that plays the NixOS minimal ISO.

There is no NixOS ISO on the test machines, so ``invoke build-template`` builds its template
from this ISO instead (with the Debian ``install.sh``/``cleanup.sh`` in ``tests/testbed/standin``).
It behaves like the NixOS minimal ISO where the build depends on it:

* SeaBIOS (isolinux) and OVMF (systemd-boot, El Torito EFI image) boot it from the VM's CD
  drive into a menu whose default entry boots after 10 s, or at once on Enter (the
  boot_command's first key); the live kernel is Debian's generic one, so it finds the CD on
  PIIX IDE (``pc``) and on AHCI (``q35``: PVE puts ``ide2`` on the ICH9 AHCI controller), like
  the NixOS ISO's kernel;
* the live system autologins **root on tty1** (the console ``sendkey`` types into), has
  sudo, curl and a DHCP address on eth0, and no way in over SSH (sshd runs, but root has
  no password and no key);
* **no guest agent** runs in the live session (masked on the kernel command line), so
  Packer only finds the VM once the installed system is up;
* the installed system is the ``good`` stand-in cloud image (``build.py``), copied by
  install.sh from the ISO's base squashfs; its agent is enabled. The live layer carries what
  install.sh needs for either firmware: GRUB for BIOS, systemd-boot's EFI binary and mkfs.fat
  for UEFI (GPT + ESP, like the NixOS install).

    from tests.testbed.images.installer_iso import build_installer_iso
    info = build_installer_iso()       # cached; cold build a few minutes, then instant
    info.path                          # .../installer-iso-<recipe-hash>/installer.iso
    Path(info)                         # the same (IsoInfo is os.PathLike)

    python -m tests.testbed.images.installer_iso [--force] [--json]

ISO layout (volume id ``NIXGOLD_STANDIN``)::

    isolinux/isolinux.bin ldlinux.c32 menu.c32 libutil.c32 isolinux.cfg boot.cat
    boot/efiboot.img            El Torito EFI image (FAT): EFI/BOOT/BOOTX64.EFI = systemd-boot,
                                loader/ (menu: the live entry), live/vmlinuz + live/initrd.img
    live/vmlinuz                Debian's generic kernel (the live session's; the installed
                                system keeps its cloud kernel)
    live/initrd.img             live-boot initramfs (the installed system has its own, normal one)
    live/filesystem.squashfs    layer 1: the installed system = the good stand-in tree, untouched
    live/live.squashfs          layer 2 (on top): live-boot, the generic kernel's modules, curl,
                                parted, rsync, GRUB (BIOS), systemd-boot (UEFI), dosfstools,
                                the tty1 autologin shell, DHCP without cloud-init
    live/filesystem.module      the layer order for live-boot
    nixgold-standin.json        recipe hash, versions, command lines

In the live system the layers are mounted at ``/run/live/rootfs/filesystem.squashfs`` and
``/run/live/rootfs/live.squashfs``; install.sh copies the first one only, so nothing of the
live session (its packages, autologin, masks) reaches the installed system.

Cache: ``<cache>/installer-iso-<recipe-hash>/installer.iso`` + ``installer.json``; the
recipe hash covers the ``good`` image recipe (base tree, ``build.py``), this file and the
host's isolinux. Built in a temporary directory and renamed into place.

Host packages: squashfs-tools, xorriso, isolinux, syslinux-common, mtools (plus the image builder's);
the live layer's packages come from the Debian mirror the base tree uses.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import base, build
from .base import ImageBuildError, chroot, default_cache_dir, run

__all__ = [
    "INSTALLED_CMDLINE",
    "ISO_NAME",
    "ISO_VOLUME_ID",
    "LIVE_CMDLINE",
    "LIVE_PACKAGES",
    "LIVE_READY_MARKER",
    "IsoInfo",
    "build_installer_iso",
    "load_installer_iso",
    "recipe_hash",
]

Log = Callable[[str], None]

ISO_NAME = "installer.iso"
ISO_VOLUME_ID = "NIXGOLD_STANDIN"
PREFIX = "installer-iso"
# The installed system is this image variant's tree.
INSTALLED_VARIANT = "good"
# What the live session adds on top of the installed tree. busybox: live-boot's initramfs
# needs it; linux-image-amd64: the live kernel (the installed cloud kernel has no AHCI
# driver, and q35 puts the CD on AHCI); grub-pc-bin + grub2-common: grub-install for BIOS;
# systemd-boot-efi: the EFI boot manager of the ISO and of UEFI installs; dosfstools:
# mkfs.fat for the ESP; the rest is for install.sh.
LIVE_PACKAGES: tuple[str, ...] = (
    "live-boot",
    "live-boot-initramfs-tools",
    "busybox",
    "linux-image-amd64",
    "curl",
    "parted",
    "rsync",
    "grub-pc-bin",
    "grub2-common",
    "systemd-boot-efi",
    "dosfstools",
)
# systemd-boot's EFI binary (Debian's systemd-boot-efi), copied to the ISO's EFI image and by
# install.sh to the ESP.
SYSTEMD_BOOT_EFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
# Drivers the live initramfs needs to find the ISO (IDE CD on ide2, or SCSI/SATA CD) and
# stack its layers; the installed tree's initramfs.conf says MODULES=list.
LIVE_INITRAMFS_MODULES: tuple[str, ...] = (
    "ata_piix", "ahci", "sr_mod", "cdrom", "isofs", "squashfs", "overlay", "loop", "virtio_scsi", "sd_mod",
)
# systemd.mask=: the live session runs no guest agent (like the NixOS minimal ISO) and the
# installed image's tty1 line logger gives way to the autologin shell. Kernel command line
# only: nothing in the installed tree is changed for the live session.
# init_on_alloc=0: Debian's kernel zeroes every page it allocates (CONFIG_INIT_ON_ALLOC_DEFAULT_ON=y
# in /boot/config-*); in the live session that was 80 % of the guest's CPU (clear_page_rep, by
# sampling the vCPU's RIP) for the 11 s from switch_root to systemd's first line, and the live shell
# came 8 s later (41.5 s -> 33 s after Enter, idle machine, direct kernel boot). Installed systems
# keep the default: a clone's boot showed no difference.
LIVE_CMDLINE = (
    "boot=live live-media-path=/live console=tty0 console=ttyS0,115200 net.ifnames=0 init_on_alloc=0 "
    "systemd.mask=qemu-guest-agent.service systemd.mask=tty1-line-logger.service"
)
# What install.sh puts into GRUB's menu entry on the target disk (same as the cloud image).
INSTALLED_CMDLINE = build.CMDLINE
LIVE_HOSTNAME = "nixgold-installer"
# Printed on the serial console by root's login shell on tty1: the moment typing can start.
LIVE_READY_MARKER = "nixgold-standin: live root shell ready on /dev/tty1"
MENU_TIMEOUT_DS = 100  # isolinux TIMEOUT is in 1/10 s: 10 s, like the NixOS ISO's menu
EFI_IMAGE = "boot/efiboot.img"  # on the ISO
# 16 KiB blocks: every page fault in the live system reads and unpacks one block, and under TCG
# 256 KiB blocks (or none unpacked at all, or the whole medium in RAM) kept the live shell ~20 s
# later: 62-72 s after Enter on an idle machine, 45 s with 16 KiB (4 KiB: 44.5 s; ISO +11 %), all
# measured before LIVE_CMDLINE's init_on_alloc=0.
SQUASHFS_OPTS = ("-comp", "zstd", "-Xcompression-level", "15", "-b", "16K")
ISOLINUX_FILES = {
    "isolinux.bin": ("/usr/lib/ISOLINUX/isolinux.bin",),
    "ldlinux.c32": ("/usr/lib/syslinux/modules/bios/ldlinux.c32",),
    "menu.c32": ("/usr/lib/syslinux/modules/bios/menu.c32",),
    "libutil.c32": ("/usr/lib/syslinux/modules/bios/libutil.c32",),
}
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")


@dataclass(frozen=True)
class IsoInfo:
    """A built installer ISO. ``built``: this call built it (False: cache hit); ``seconds``:
    this call's duration; ``build_seconds``: the recorded cold build. ``os.PathLike``."""

    path: Path
    recipe_hash: str
    built: bool = False
    seconds: float = 0.0
    build_seconds: float = 0.0

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def metadata(self) -> dict:
        """The parsed ``installer.json``."""
        return json.loads((self.directory / "installer.json").read_text())


# ------------------------------------------------------------------ hashing
def _isolinux_digest() -> str:
    h = hashlib.sha256()
    for name, candidates in sorted(ISOLINUX_FILES.items()):
        for c in candidates:
            if Path(c).is_file():
                h.update(name.encode() + Path(c).read_bytes())
                break
    return h.hexdigest()


def recipe_hash(*, mirror: str | None = None) -> str:
    """16 hex digits over the installed image's recipe, this builder and the host's isolinux."""
    payload = {
        "installed": build.recipe_hash(INSTALLED_VARIANT, mirror=mirror),
        "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "isolinux": _isolinux_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------- public
def _complete(d: Path) -> bool:
    return (d / ISO_NAME).is_file() and (d / "installer.json").is_file()


def _info(d: Path, *, built: bool, seconds: float) -> IsoInfo:
    meta = json.loads((d / "installer.json").read_text())
    return IsoInfo(d / ISO_NAME, meta["recipe_hash"], built, round(seconds, 3), float(meta.get("build_seconds", 0.0)))


def load_installer_iso(cache_dir: Path | str | None = None) -> IsoInfo | None:
    """The cached ISO of the current recipe, or None (never builds)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    d = cache / f"{PREFIX}-{recipe_hash()}"
    return _info(d, built=False, seconds=0.0) if _complete(d) else None


def build_installer_iso(cache_dir: Path | str | None = None, log: Log | None = print, *, force: bool = False) -> IsoInfo:
    """Build (or reuse from cache) the stand-in installer ISO.

    ``<cache_dir>/installer-iso-<recipe_hash>/installer.iso`` (default cache dir
    ``~/.cache/nixgold-testbed/images``, shared with the stand-in images and their debootstrap
    base tree). Concurrent callers serialise on a lock file; a complete cached ISO is returned
    at once.
    """
    t0 = time.monotonic()
    logf: Log = log or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rh = recipe_hash()
    final = cache / f"{PREFIX}-{rh}"
    if not force and _complete(final):
        return _info(final, built=False, seconds=time.monotonic() - t0)
    with base.file_lock(cache / ".locks" / f"{PREFIX}-{rh}.lock"):
        if not force and _complete(final):
            return _info(final, built=False, seconds=time.monotonic() - t0)
        base.remove_dead_builds(cache, f"{PREFIX}-{rh}")
        _build(rh, cache, final, logf, t0)
    return _info(final, built=True, seconds=time.monotonic() - t0)


# -------------------------------------------------------------------- build
def _check_host() -> None:
    missing = [t for t in ("mksquashfs", "xorriso", "tar", "chroot", "mount", "mformat", "mmd", "mcopy")
               if shutil.which(t) is None]
    missing += [f"{name} ({' or '.join(c)})" for name, c in ISOLINUX_FILES.items() if not any(Path(p).is_file() for p in c)]
    if missing:
        raise ImageBuildError("cannot build the installer ISO, missing on the host: " + ", ".join(missing)
                              + " (Debian packages squashfs-tools xorriso isolinux syslinux-common mtools)")


@contextlib.contextmanager
def _mounted(argv: Sequence[str], target: Path) -> Iterator[None]:
    run(["mount", *argv, str(target)])
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.write_text(text)
    os.chmod(p, mode)
    return p


def _is_whiteout(p: Path) -> bool:
    """An overlayfs whiteout (0/0 character device): the upper layer deletes that path."""
    st = os.stat(p, follow_symlinks=False)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _clean_upper(upper: Path) -> None:
    """Drop what installing the live packages left behind (apt lists and caches, /tmp, log
    contents); in the upper dir itself, with the overlay unmounted, so no whiteouts are made."""
    for rel in ("var/cache/apt", "var/lib/apt/lists", "tmp", "var/tmp", "var/log"):
        d = upper / rel
        if not d.is_dir() or d.is_symlink():
            continue
        for p in d.rglob("*"):
            if p.is_symlink() or not p.is_file():
                continue  # directories, whiteouts, symlinks stay
            if rel == "var/log":
                p.write_bytes(b"")
            else:
                p.unlink()


def _squash(src: Path, dest: Path) -> None:
    run(["mksquashfs", str(src), str(dest), "-noappend", "-no-progress", "-quiet", "-xattrs", *SQUASHFS_OPTS],
        timeout=1800)


def _build(rh: str, cache: Path, final: Path, log: Log, t0: float) -> None:
    def stage(msg: str) -> None:
        log(f"[installer-iso {rh}] {msg} ({time.monotonic() - t0:.1f}s)")

    _check_host()
    variant = build.VARIANTS[INSTALLED_VARIANT]
    packages = (*base.PACKAGES, *getattr(variant, "extra_packages", ()))
    tarball, base_meta = base.ensure_base(cache, log, packages=packages)
    stage(f"base tree ready: {tarball}")
    scratch = Path(tempfile.mkdtemp(prefix=f"nixgold-{PREFIX}-{rh}-", dir=base.work_root(4 << 30)))
    out = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}-{rh}-", dir=cache))
    try:
        # ---- layer 1: the installed system, exactly the good stand-in image's tree
        root = scratch / "root"
        base.tar_extract(tarball, root)
        build.configure_tree(root, variant)
        installed_versions = base.package_versions(root)
        build.clean_tree(root, variant)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise ImageBuildError(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
        kver = kernels[0].name.removeprefix("vmlinuz-")
        stage(f"installed tree configured (variant {variant.name}, kernel {kver})")
        iso = scratch / "iso"
        (iso / "live").mkdir(parents=True)
        (iso / "isolinux").mkdir()
        _squash(root, iso / "live" / "filesystem.squashfs")
        stage(f"filesystem.squashfs: {(iso / 'live/filesystem.squashfs').stat().st_size >> 20} MiB")

        # ---- layer 2: the live session, built in an overlay on top of layer 1
        upper, work, merged = scratch / "live-upper", scratch / "live-work", scratch / "live-merged"
        for d in (upper, work, merged):
            d.mkdir(mode=0o755)
            os.chmod(d, 0o755)
        live_versions: dict[str, str] = {}
        efi_binary = scratch / "systemd-bootx64.efi"
        with _mounted(["-t", "overlay", "overlay", "-o",
                       f"lowerdir={root},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off,xino=off"],
                      merged):
            live_kver = _live_layer(merged, kver, base_meta["mirror"], iso / "live", stage)
            live_versions = {k: v for k, v in base.package_versions(merged).items() if installed_versions.get(k) != v}
            shutil.copy2(merged / SYSTEMD_BOOT_EFI.lstrip("/"), efi_binary)
        _clean_upper(upper)
        whiteouts = sorted(str(p.relative_to(upper)) for p in upper.rglob("*") if _is_whiteout(p))
        if whiteouts:
            stage(f"live layer hides {len(whiteouts)} path(s) of the installed tree: {', '.join(whiteouts[:10])}")
        _squash(upper, iso / "live" / "live.squashfs")
        (iso / "live" / "filesystem.module").write_text("filesystem.squashfs\nlive.squashfs\n")
        stage(f"live.squashfs: {(iso / 'live/live.squashfs').stat().st_size >> 20} MiB")

        # ---- boot files (the live kernel is in live/ already)
        for name, candidates in ISOLINUX_FILES.items():
            shutil.copy2(next(c for c in candidates if Path(c).is_file()), iso / "isolinux" / name)
        (iso / "isolinux" / "isolinux.cfg").write_text(isolinux_cfg())
        _efi_image(iso, efi_binary, scratch / "efi")
        stage(f"EFI image: {(iso / EFI_IMAGE).stat().st_size >> 20} MiB (systemd-boot)")
        meta = {
            "recipe_hash": rh,
            "volume_id": ISO_VOLUME_ID,
            "installed_variant": variant.name,
            "installed_recipe_hash": build.recipe_hash(variant.name),
            "base_hash": base_meta["base_hash"],
            "mirror": base_meta["mirror"],
            "kernel_version": kver,
            "live_kernel_version": live_kver,
            "live_cmdline": LIVE_CMDLINE,
            "efi_image": EFI_IMAGE,
            "installed_cmdline": INSTALLED_CMDLINE,
            "root_label": build.ROOT_LABEL,
            "live_ready_marker": LIVE_READY_MARKER,
            "menu_timeout_seconds": MENU_TIMEOUT_DS / 10,
            "live_packages": list(LIVE_PACKAGES),
            "live_package_versions": live_versions,
            "installed_package_versions": {
                k: installed_versions.get(k)
                for k in ("cloud-init", "openssh-server", "qemu-guest-agent", "systemd", f"linux-image-{kver}")
            },
            "whiteouts": whiteouts,
            "layers": {p.name: p.stat().st_size for p in sorted((iso / "live").glob("*.squashfs"))},
            "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (iso / "nixgold-standin.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        argv = ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out / ISO_NAME), "-V", ISO_VOLUME_ID,
                "-J", "-joliet-long", "-R",
                "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                "-eltorito-alt-boot", "-e", EFI_IMAGE, "-no-emul-boot"]
        if ISOHYBRID_MBR.is_file():
            argv += ["-isohybrid-mbr", str(ISOHYBRID_MBR), "-isohybrid-gpt-basdat"]
        run([*argv, str(iso)])
        meta["iso_size"] = (out / ISO_NAME).stat().st_size
        meta["build_seconds"] = round(time.monotonic() - t0, 1)
        base.publish(out, final, "installer.json", meta)
        stage(f"cached {final / ISO_NAME} ({meta['iso_size'] >> 20} MiB)")
    finally:
        base.safe_rmtree(scratch)
        base.safe_rmtree(out)


def systemd_boot_files() -> dict[str, str]:
    """The ISO's systemd-boot menu (in the EFI image): the live entry, 10 s, Enter boots it."""
    return {
        "loader/loader.conf": f"timeout {MENU_TIMEOUT_DS // 10}\ndefault live.conf\neditor no\n",
        "loader/entries/live.conf": ("title Stand-in live system (default; Enter boots now)\n"
                                     "linux /live/vmlinuz\ninitrd /live/initrd.img\n"
                                     f"options {LIVE_CMDLINE}\n"),
    }


def _efi_image(iso: Path, efi_binary: Path, scratch: Path) -> None:
    """``EFI_IMAGE``: a FAT image OVMF boots from the ISO's El Torito EFI entry. systemd-boot reads
    only its own file system, so the live kernel and initrd are copied into it."""
    files = {"EFI/BOOT/BOOTX64.EFI": efi_binary, "live/vmlinuz": iso / "live" / "vmlinuz",
             "live/initrd.img": iso / "live" / "initrd.img"}
    scratch.mkdir(parents=True, exist_ok=True)
    for rel, text in systemd_boot_files().items():
        files[rel] = scratch / rel.replace("/", "_")
        files[rel].write_text(text)
    size = sum(f.stat().st_size for f in files.values()) + (4 << 20)
    image = iso / EFI_IMAGE
    image.parent.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as fh:
        fh.truncate(-(-size // (1 << 20)) << 20)
    run(["mformat", "-i", str(image), "-v", "NGSTANDIN", "::"])
    dirs = sorted({"/".join(rel.split("/")[:n]) for rel in files for n in range(1, rel.count("/") + 1)})
    run(["mmd", "-i", str(image), *(f"::/{d}" for d in dirs)])
    for rel, src in files.items():
        run(["mcopy", "-i", str(image), str(src), f"::/{rel}"])


def isolinux_cfg() -> str:
    return f"""\
# nixgold stand-in installer ISO (tests/testbed/images/installer_iso.py)
SERIAL 0 115200
UI menu.c32
PROMPT 0
TIMEOUT {MENU_TIMEOUT_DS}
DEFAULT live
MENU TITLE nixgold stand-in installer (Debian 12 live)

LABEL live
  MENU LABEL Stand-in live system (default; Enter boots now)
  MENU DEFAULT
  KERNEL /live/vmlinuz
  APPEND initrd=/live/initrd.img {LIVE_CMDLINE}
"""


LIVE_SHELL_UNIT = """\
# nixgold stand-in installer (live session only): root logs in on tty1 by itself, like the
# NixOS minimal ISO's autologin, so Packer's boot_command can type into a shell.
[Unit]
Description=nixgold stand-in installer: root shell on tty1
After=systemd-user-sessions.service getty-pre.target
Before=getty.target
Conflicts=getty@tty1.service autovt@tty1.service
ConditionPathExists=/dev/tty1

[Service]
ExecStart=-/sbin/agetty --autologin root --noclear tty1 linux
Type=idle
Restart=always
RestartSec=0
UtmpIdentifier=tty1
TTYPath=/dev/tty1
TTYReset=yes
TTYVHangup=yes
TTYVTDisallocate=no
KillMode=process
IgnoreSIGPIPE=no
SendSIGHUP=yes
StandardInput=tty
StandardOutput=tty

[Install]
WantedBy=getty.target
"""

LIVE_BASH_PROFILE = f"""\
# nixgold stand-in installer (live session only)
[ -f ~/.profile ] && . ~/.profile
if [ "$(tty)" = /dev/tty1 ]; then
    echo '{LIVE_READY_MARKER}' >/dev/ttyS0 2>/dev/null || true
    echo 'nixgold stand-in installer: root shell. Install with:'
    echo '  curl -fsS http://IP:PORT/install.sh | sudo bash -s -- http://IP:PORT'
fi
"""

LIVE_NETWORK = """\
# nixgold stand-in installer (live session only; cloud-init is off in the live session)
[Match]
Name=eth* en*

[Network]
DHCP=ipv4
"""


def _live_layer(merged: Path, kver: str, mirror: str, live_dir: Path, stage: Callable[[str], None]) -> str:
    """Install the live packages and settings into ``merged`` (an overlay: changes land in its upper
    dir), put the live kernel and its live-boot initramfs into ``live_dir`` (``vmlinuz``,
    ``initrd.img``) and return the live kernel's version (``kver`` is the installed one's)."""
    # No automatic initramfs rebuild: the installed system's /boot/initrd.img stays the normal one.
    conf = merged / "etc/initramfs-tools/update-initramfs.conf"
    conf.write_text(conf.read_text().replace("update_initramfs=yes", "update_initramfs=no"))
    _write(merged, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    sources = "tmp/nixgold-live-sources.list"
    _write(merged, sources, f"deb {mirror} {base.SUITE} main\n")
    apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList=/{sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
           "-o", "APT::Install-Recommends=false", "-o", "Acquire::Retries=3"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_mounted(["-t", "proc", "proc"], merged / "proc"))
        stack.enter_context(_mounted(["-t", "sysfs", "sysfs"], merged / "sys"))
        stack.enter_context(_mounted(["--bind", "/dev"], merged / "dev"))
        stack.enter_context(_mounted(["--bind", "/etc/resolv.conf"], merged / "etc/resolv.conf"))
        chroot(merged, *apt, "update", timeout=600)
        chroot(merged, *apt, "install", "-y", *LIVE_PACKAGES, timeout=1200)
        chroot(merged, "apt-get", "clean")
        stage(f"live packages installed: {' '.join(LIVE_PACKAGES)}")
        live_kernels = [k for k in sorted((merged / "boot").glob("vmlinuz-*")) if k.name != f"vmlinuz-{kver}"]
        if len(live_kernels) != 1:
            raise ImageBuildError(f"expected one live kernel besides {kver} in /boot, found {live_kernels}")
        live_kver = live_kernels[0].name.removeprefix("vmlinuz-")

        with open(merged / "etc/initramfs-tools/modules", "a") as fh:
            fh.write("# nixgold stand-in installer: the live medium\n" + "\n".join(LIVE_INITRAMFS_MODULES) + "\n")
        chroot(merged, "mkinitramfs", "-o", "/tmp/initrd.live", live_kver, timeout=900)
        shutil.move(merged / "tmp/initrd.live", live_dir / "initrd.img")
        shutil.move(live_kernels[0], live_dir / "vmlinuz")
        # the live kernel's /boot files only live on the ISO (in the upper dir: gone, no whiteout)
        for leftover in (merged / "boot").glob(f"*-{live_kver}"):
            leftover.unlink()
        stage(f"live kernel {live_kver}, initramfs: {(live_dir / 'initrd.img').stat().st_size >> 20} MiB")
    (merged / sources).unlink()
    (merged / "usr/sbin/policy-rc.d").unlink()

    # live-boot appends its tmpfs /tmp; the installed system's root (LABEL=...) is not here.
    _write(merged, "etc/fstab", "# nixgold stand-in installer (live session)\noverlay / overlay rw 0 0\n")
    _write(merged, "etc/hostname", LIVE_HOSTNAME + "\n")
    _write(merged, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{LIVE_HOSTNAME}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    _write(merged, "etc/cloud/cloud-init.disabled", "nixgold stand-in installer: no cloud-init in the live session\n")
    _write(merged, "etc/systemd/network/90-nixgold-live.network", LIVE_NETWORK)
    _write(merged, "etc/systemd/system/nixgold-live-shell.service", LIVE_SHELL_UNIT)
    wants = merged / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "nixgold-live-shell.service").symlink_to("/etc/systemd/system/nixgold-live-shell.service")
    _write(merged, "root/.bash_profile", LIVE_BASH_PROFILE)
    _write(merged, "etc/issue", "nixgold stand-in installer (Debian 12 live) \\n \\l\n\n")
    return live_kver


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.images.installer_iso",
                                     description="Build (or show the cached) stand-in installer ISO.")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--json", action="store_true", help="print the IsoInfo as JSON")
    args = parser.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    try:
        info = build_installer_iso(args.cache_dir, log, force=args.force)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log(f"installer ISO: {'built' if info.built else 'cached'} in {info.seconds:.1f}s -> {info.path}")
    if args.json:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(info).items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
