"""The debootstrap base tree shared by every stand-in image variant.

``ensure_base()`` runs debootstrap once per *base hash* (suite, mirror, package
list, this file's source) and caches the resulting root tree as
``<cache>/base-<hash>/rootfs.tar[.zst]``; the variants unpack it instead of
re-running debootstrap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

SUITE = "bookworm"
ARCH = "amd64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCALE = "en_US.UTF-8"

# debootstrap --variant=minbase plus these; debootstrap resolves plain
# dependencies (first alternative) but NOT virtual packages, hence the explicit
# python3-cffi-backend (python3-cryptography needs python3-cffi-backend-api-*),
# without which cloud-init stays unconfigured.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "netbase",
    "iproute2",
    "openssh-server",
    "cloud-init",
    "python3-cffi-backend",
    "qemu-guest-agent",
    "locales",
    "sudo",
    "cloud-guest-utils",  # growpart
    "fdisk",  # sfdisk, used by growpart
    "e2fsprogs",  # resize2fs
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",  # initramfs compression
)

# Disk controllers a Proxmox VM may use for its root disk: virtio0, scsi0 on
# virtio-scsi-pci, ide0 (ata_piix); SATA (ahci) is not in the cloud kernel.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ata_piix")

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """Building a stand-in image failed."""


# ---------------------------------------------------------------- helpers
def default_cache_dir() -> Path:
    """``$NIXGOLD_TESTBED_CACHE/images`` or ``~/.cache/nixgold-testbed/images``."""
    env = os.environ.get("NIXGOLD_TESTBED_CACHE")
    if env:
        return Path(env) / "images"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "nixgold-testbed" / "images"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (``$NIXGOLD_TESTBED_MIRROR`` wins)."""
    env = os.environ.get("NIXGOLD_TESTBED_MIRROR")
    if env:
        return env.rstrip("/")
    candidates: list[str] = []
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for f in files:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
                if m and m.group(2) in (SUITE, "stable") and "main" in m.group(3).split():
                    candidates.append(m.group(1))
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", f.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                if (SUITE in suites or "stable" in suites) and "main" in fields.get("components", "").split():
                    candidates.extend(fields.get("uris", "").split())
    for uri in candidates:
        # Skip security/updates-only mirrors: debootstrap wants the main archive.
        if "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def base_hash(*, packages: Sequence[str] | None = None, suite: str | None = None, mirror: str | None = None) -> str:
    """Hash of everything that determines the debootstrap base tree."""
    return _sha(
        {
            "suite": suite or SUITE,
            "arch": ARCH,
            "mirror": mirror or debian_mirror(),
            "packages": sorted(packages if packages is not None else PACKAGES),
            "locale": LOCALE,
            "source": Path(__file__).read_text(),
        }
    )[:16]


def run(argv: Sequence[str], *, log: Log | None = None, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise ImageBuildError with its output tail."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ImageBuildError(f"command failed (exit {proc.returncode}): {' '.join(map(str, argv))}\n{tail}")
    return proc


def chroot(root: Path, *argv: str, **kw) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "SYSTEMD_OFFLINE": "1",
    }
    return run(["chroot", str(root), *argv], env=env, **kw)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (serialises concurrent builds of the same thing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == real or mnt.startswith(real + "/"):
                out.append(mnt)
    return out


def safe_rmtree(path: Path) -> None:
    """Remove a build tree: unmount whatever debootstrap left mounted first, and
    never cross into another file system (a bind-mounted /dev or /proc)."""
    if not os.path.lexists(path):
        return
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    if _mounts_under(path):
        raise ImageBuildError(f"refusing to delete {path}: still has mounts {_mounts_under(path)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def remove_dead_builds(cache: Path, entry: str) -> list[Path]:
    """Call with the lock of cache entry ``entry`` (``<name>-<recipe hash>``) held: no other builder of
    it runs, so its temporary directories (``<cache>/.tmp-<entry>-*``, and the scratch trees
    ``nixgold-<entry>-*`` in the RAM-backed work root, or in the temporary directory where a build
    went when that was too small) are a killed build's (no ``finally`` ran: a CI job out of time, a
    SIGKILL). Removes them (unmounting what debootstrap left) and returns them."""
    dead = sorted(cache.glob(f".tmp-{entry}-*"))
    for scratch in {work_root(0), Path(tempfile.gettempdir())} - {None}:
        dead += sorted(scratch.glob(f"nixgold-{entry}-*"))
    for d in dead:
        safe_rmtree(d)
    return dead


def publish(out: Path, final: Path, meta_name: str, meta: dict) -> None:
    """Finish a cache entry: write its metadata file into ``out``, then move ``out`` to ``final``
    in one rename (replacing a stale entry), so readers see a complete entry or none."""
    (out / meta_name).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.chmod(out, 0o755)
    if final.exists():
        safe_rmtree(final)
    os.rename(out, final)


def work_root(min_free: int = 3 << 30) -> Path | None:
    """A RAM-backed scratch directory (dpkg's fsyncs cost nothing there), if big enough."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= min_free and os.access(shm, os.W_OK):
            return shm
    return None


def _compressor() -> tuple[list[str], str]:
    if shutil.which("zstd"):
        return ["zstd", "-T0", "-3", "-q"], ".zst"
    return [], ""


def tar_create(root: Path, dest: Path) -> None:
    comp, _ = _compressor()
    tar = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-C", str(root), "-cf", "-", "."]
    with open(dest, "wb") as out:
        if comp:
            p1 = subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            p2 = subprocess.Popen(comp, stdin=p1.stdout, stdout=out, stderr=subprocess.PIPE)
            assert p1.stdout is not None
            p1.stdout.close()
            _, err2 = p2.communicate()
            err1 = p1.stderr.read() if p1.stderr else b""
            p1.wait()
            if p1.returncode or p2.returncode:
                raise ImageBuildError(f"tar of {root} failed: {err1.decode()} {err2.decode()}")
        else:
            proc = subprocess.run(tar, stdout=out, stderr=subprocess.PIPE)
            if proc.returncode:
                raise ImageBuildError(f"tar of {root} failed: {proc.stderr.decode()}")


def tar_extract(archive: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    argv = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-p", "-C", str(root)]
    if archive.name.endswith(".zst"):
        argv += ["-I", "zstd -T0 -q"]
    run([*argv, "-xf", str(archive)])


def package_versions(root: Path) -> dict[str, str]:
    proc = chroot(root, "dpkg-query", "-W", "-f", "${Package}\t${Version}\n")
    return dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)


# ------------------------------------------------------------------- base
def _find_base(cache_dir: Path, h: str) -> Path | None:
    d = cache_dir / f"base-{h}"
    if not (d / "base.json").is_file():
        return None
    meta = json.loads((d / "base.json").read_text())
    tar = d / meta["tarball"]
    return tar if tar.is_file() else None


def ensure_base(cache_dir: Path, log: Log, *, packages: Sequence[str] | None = None, mirror: str | None = None) -> tuple[Path, dict]:
    """Return (tarball, base.json metadata), running debootstrap if not cached."""
    packages = tuple(packages if packages is not None else PACKAGES)
    mirror = mirror or debian_mirror()
    h = base_hash(packages=packages, mirror=mirror)
    final = cache_dir / f"base-{h}"
    with file_lock(cache_dir / ".locks" / f"base-{h}.lock"):
        tar = _find_base(cache_dir, h)
        if tar is not None:
            return tar, json.loads((final / "base.json").read_text())
        remove_dead_builds(cache_dir, f"base-{h}")
        return _build_base(cache_dir, final, h, packages, mirror, log)


def _build_base(cache_dir: Path, final: Path, h: str, packages: tuple[str, ...], mirror: str, log: Log) -> tuple[Path, dict]:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap not found (Debian package debootstrap)")
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"nixgold-base-{h}-", dir=work_root()))
    out = Path(tempfile.mkdtemp(prefix=f".tmp-base-{h}-", dir=cache_dir))
    try:
        root = scratch / "root"
        log(f"[base {h}] debootstrap {SUITE} from {mirror} ({len(packages)} extra packages)...")
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--arch={ARCH}",
            "--components=main",
            "--include=" + ",".join(packages),
            SUITE,
            str(root),
            mirror,
        ]
        for attempt in (1, 2):
            try:
                run(argv, timeout=1800)
                break
            except ImageBuildError:
                if attempt == 2:
                    log_file = root / "debootstrap" / "debootstrap.log"
                    if log_file.exists():
                        log(log_file.read_text()[-3000:])
                    raise
                log(f"[base {h}] debootstrap failed, retrying once")
                safe_rmtree(root)
        log(f"[base {h}] debootstrap done ({time.monotonic() - t0:.1f}s)")

        # Locale: without en_US.UTF-8 cloud-init's locale module fails and
        # `cloud-init status` reports error.
        gen = root / "etc/locale.gen"
        text = gen.read_text()
        text = re.sub(rf"^#\s*({re.escape(LOCALE)} UTF-8)$", r"\1", text, flags=re.M)
        gen.write_text(text)
        chroot(root, "locale-gen")
        chroot(root, "update-locale", f"LANG={LOCALE}")
        # A small initramfs: only the disk drivers Proxmox-style guests use (the
        # "most" default loads ~190 modules, seconds of boot under TCG); udev
        # loads everything else from the root file system.
        conf = root / "etc/initramfs-tools/initramfs.conf"
        conf.write_text(re.sub(r"^MODULES=.*$", "MODULES=list", conf.read_text(), flags=re.M))
        with open(root / "etc/initramfs-tools/modules", "a") as fh:
            fh.write("\n".join(INITRAMFS_MODULES) + "\n")
        chroot(root, "update-initramfs", "-u", "-k", "all")
        chroot(root, "apt-get", "clean")
        versions = package_versions(root)
        for sub in ("var/lib/apt/lists",):
            for p in (root / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        # Documentation is dead weight in a throw-away test guest.
        for sub in ("usr/share/doc", "usr/share/man", "usr/share/info"):
            d = root / sub
            if d.is_dir():
                shutil.rmtree(d)
                d.mkdir()
        for p in (root / "usr/share/locale").glob("*"):
            if p.is_dir() and not p.name.startswith(("en", "locale.alias")):
                shutil.rmtree(p)
        log(f"[base {h}] configured locale {LOCALE}, cleaned apt cache ({time.monotonic() - t0:.1f}s)")

        _, ext = _compressor()
        tarball = out / f"rootfs.tar{ext}"
        tar_create(root, tarball)
        meta = {
            "base_hash": h,
            "suite": SUITE,
            "arch": ARCH,
            "mirror": mirror,
            "packages": list(packages),
            "tarball": tarball.name,
            "package_versions": versions,
            "build_seconds": round(time.monotonic() - t0, 1),
            "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        size_mib = tarball.stat().st_size >> 20
        publish(out, final, "base.json", meta)
        log(f"[base {h}] cached {final} ({size_mib} MiB, {time.monotonic() - t0:.1f}s)")
        return final / tarball.name, meta
    finally:
        safe_rmtree(scratch)
        safe_rmtree(out)
