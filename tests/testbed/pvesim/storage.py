"""Directory storages with PVE's volume naming (pve-storage ``Plugin.pm``).

Volume ids::

    local:100/vm-100-disk-0.qcow2                        disk image
    local:9004/base-9004-disk-0.qcow2                    template (base) image
    local:9004/base-9004-disk-0.qcow2/101/vm-101-disk-0.qcow2   linked clone
    local:100/vm-100-cloudinit.qcow2                     cloud-init drive
    local:iso/installer.iso                              ISO image
    local:snippets/user.yaml                             snippet

Files live under ``<path>/images/<vmid>/``, ``<path>/template/iso/`` and
``<path>/snippets/``.  Linked clones are qcow2 overlays whose backing file is
the relative ``../<basevmid>/<basename>``, exactly as PVE creates them.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ApiError, die

log = logging.getLogger(__name__)

UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
IMAGE_NAME_RE = re.compile(r"^((?:vm|base)-(\d+)-[^/\s]+?)(?:\.(raw|qcow2|vmdk|subvol))?$")
LINKED_RE = re.compile(r"^(\d+)/(\S+)/(\d+)/(\S+)$")
OWNED_RE = re.compile(r"^(\d+)/(\S+)$")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", text)
    if not m:
        raise ValueError(f"unable to parse size '{text}'")
    return int(float(m.group(1)) * UNITS.get(m.group(2) or "", 1))


def format_size(size: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides evenly."""
    for unit in ("T", "G", "M", "K"):
        if size % UNITS[unit] == 0 and size >= UNITS[unit]:
            return f"{size // UNITS[unit]}{unit}"
    return str(size)


def qcow2_header(path: Path) -> tuple[int, str | None] | None:
    """(virtual size, backing file) from a qcow2 header, or None if not qcow2."""
    try:
        with path.open("rb") as fh:
            head = fh.read(32)
            if len(head) < 32 or head[:4] != b"QFI\xfb":
                return None
            backing_off, backing_len = struct.unpack(">QI", head[8:20])
            size = struct.unpack(">Q", head[24:32])[0]
            backing = None
            if backing_off and backing_len:
                fh.seek(backing_off)
                backing = fh.read(backing_len).decode("utf-8", "replace")
            return size, backing
    except OSError:
        return None


def run(argv: list[str], timeout: float | None = None) -> str:
    log.debug("run %s", " ".join(argv))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise die(f"command '{' '.join(argv)}' failed: exit code {res.returncode}: {res.stderr.strip()}")
    return res.stdout


@dataclass
class StorageDef:
    id: str
    path: Path
    content: set[str] = field(default_factory=lambda: {"images", "iso", "snippets", "vztmpl", "backup", "rootdir", "import"})
    type: str = "dir"
    shared: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "storage": self.id,
            "type": self.type,
            "path": str(self.path),
            "content": ",".join(sorted(self.content)),
            "shared": int(self.shared),
            "digest": "0" * 40,
        }


@dataclass
class Volume:
    volid: str
    storeid: str
    volname: str
    vtype: str  # images | iso | snippets | vztmpl | import | backup
    path: Path
    vmid: int | None = None
    name: str | None = None  # file name, e.g. vm-100-disk-0.qcow2
    fmt: str | None = None
    base_vmid: int | None = None
    base_name: str | None = None

    @property
    def is_base(self) -> bool:
        return bool(self.name and self.name.startswith("base-"))

    @property
    def is_cloudinit(self) -> bool:
        return bool(self.name and re.match(r"vm-\d+-cloudinit", self.name))


class StorageManager:
    """All storages of the simulated node.  Volume operations are serialized."""

    def __init__(self, storages: list[StorageDef]) -> None:
        self.storages = {s.id: s for s in storages}
        self._lock = threading.RLock()
        for s in storages:
            for sub in ("images", "template/iso", "template/cache", "snippets", "import", "dump"):
                (s.path / sub).mkdir(parents=True, exist_ok=True)

    # -- lookup ---------------------------------------------------------------
    def get(self, storeid: str) -> StorageDef:
        s = self.storages.get(storeid)
        if s is None:
            raise die(f"storage '{storeid}' does not exist")
        return s

    def parse(self, volid: str) -> Volume:
        m = re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", volid, re.I)
        if not m:
            raise die(f"unable to parse volume ID '{volid}'")
        storeid, volname = m.group(1), m.group(2)
        s = self.get(storeid)
        if lm := LINKED_RE.match(volname):
            name = lm.group(4)
            im = IMAGE_NAME_RE.match(name)
            return Volume(volid, storeid, volname, "images", s.path / "images" / lm.group(3) / name,
                          int(lm.group(3)), name, im.group(3) if im else None, int(lm.group(1)), lm.group(2))
        if om := OWNED_RE.match(volname):
            name = om.group(2)
            im = IMAGE_NAME_RE.match(name)
            if not im:
                raise die(f"unable to parse directory volume name '{volname}'")
            return Volume(volid, storeid, volname, "images", s.path / "images" / om.group(1) / name,
                          int(om.group(1)), name, im.group(3) or "raw")
        for prefix, vtype, sub in (("iso/", "iso", "template/iso"), ("snippets/", "snippets", "snippets"),
                                   ("vztmpl/", "vztmpl", "template/cache"), ("import/", "import", "import"),
                                   ("backup/", "backup", "dump")):
            if volname.startswith(prefix) and "/" not in volname[len(prefix):]:
                name = volname[len(prefix):]
                fmt = "iso" if vtype == "iso" else name.rsplit(".", 1)[-1]
                return Volume(volid, storeid, volname, vtype, s.path / sub / name, name=name, fmt=fmt)
        raise die(f"unable to parse directory volume name '{volname}'")

    def path(self, volid: str) -> Path:
        return self.parse(volid).path

    def exists(self, volid: str) -> bool:
        try:
            return self.parse(volid).path.exists()
        except ApiError:
            return False

    def size(self, volid: str) -> int:
        vol = self.parse(volid)
        if not vol.path.exists():
            raise die(f"volume '{volid}' does not exist")
        hdr = qcow2_header(vol.path)
        return hdr[0] if hdr else vol.path.stat().st_size

    # -- allocation -----------------------------------------------------------
    def _check_content(self, s: StorageDef, content: str) -> None:
        if content not in s.content:
            raise die(f"storage '{s.id}' does not support content-type '{content}'")

    def _free_disk_name(self, s: StorageDef, vmid: int, fmt: str) -> str:
        existing = set()
        vmdir = s.path / "images" / str(vmid)
        if vmdir.is_dir():
            for f in vmdir.iterdir():
                m = re.match(rf"(?:vm|base)-{vmid}-disk-(\d+)", f.name)
                if m:
                    existing.add(int(m.group(1)))
        n = 0
        while n in existing:
            n += 1
        return f"vm-{vmid}-disk-{n}.{fmt}"

    def alloc(self, storeid: str, vmid: int, fmt: str, size: int, name: str | None = None) -> str:
        """vdisk_alloc: a new empty image; ``size`` in bytes."""
        with self._lock:
            s = self.get(storeid)
            self._check_content(s, "images")
            if fmt not in ("raw", "qcow2", "vmdk"):
                raise die(f"unsupported format '{fmt}'")
            name = name or self._free_disk_name(s, vmid, fmt)
            path = s.path / "images" / str(vmid) / name
            if path.exists():
                raise die(f"disk image '{path}' already exists")
            path.parent.mkdir(parents=True, exist_ok=True)
            run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)])
            return f"{storeid}:{vmid}/{name}"

    def alloc_cloudinit(self, storeid: str, vmid: int, fmt: str = "qcow2") -> str:
        name = f"vm-{vmid}-cloudinit.{fmt}"
        with self._lock:
            s = self.get(storeid)
            path = s.path / "images" / str(vmid) / name
            if path.exists():
                return f"{storeid}:{vmid}/{name}"
        return self.alloc(storeid, vmid, fmt, 4 * 1024 * 1024, name)

    def import_file(self, src: Path, storeid: str, vmid: int, fmt: str) -> str:
        """``import-from``: convert an existing image into a new volume."""
        if not src.exists():
            raise die(f"source '{src}' does not exist")
        with self._lock:
            s = self.get(storeid)
            self._check_content(s, "images")
            name = self._free_disk_name(s, vmid, fmt)
            path = s.path / "images" / str(vmid) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()  # reserve the name
        try:
            run(["qemu-img", "convert", "-U", "-O", fmt, str(src), str(path)])
        except ApiError:
            path.unlink(missing_ok=True)
            raise
        return f"{storeid}:{vmid}/{name}"

    def linked_clone(self, base_volid: str, vmid: int) -> str:
        """Plugin::clone_image: qcow2 overlay on a base image, relative backing path."""
        base = self.parse(base_volid)
        if not base.is_base:
            raise die("clone_image only works on base images")
        with self._lock:
            s = self.get(base.storeid)
            name = self._free_disk_name(s, vmid, "qcow2")
            path = s.path / "images" / str(vmid) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            run(["qemu-img", "create", "-q", "-b", f"../{base.vmid}/{base.name}", "-F", base.fmt or "raw",
                 "-f", "qcow2", str(path)])
            return f"{base.storeid}:{base.vmid}/{base.name}/{vmid}/{name}"

    def full_copy(self, src_volid: str, storeid: str, vmid: int, fmt: str | None = None,
                  name: str | None = None) -> str:
        src = self.parse(src_volid)
        fmt = fmt or (src.fmt if src.fmt in ("raw", "qcow2", "vmdk") else "raw")
        with self._lock:
            s = self.get(storeid)
            self._check_content(s, "images")
            name = name or self._free_disk_name(s, vmid, fmt)
            path = s.path / "images" / str(vmid) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        try:
            run(["qemu-img", "convert", "-U", "-O", fmt, str(src.path), str(path)])
        except ApiError:
            path.unlink(missing_ok=True)
            raise
        return f"{storeid}:{vmid}/{name}"

    def create_base(self, volid: str) -> str:
        """Plugin::create_base: rename vm-N-disk-M -> base-N-disk-M, chmod 0444."""
        vol = self.parse(volid)
        if vol.is_base:
            raise die("create_base not possible with base image")
        assert vol.name is not None
        newname = "base-" + vol.name[len("vm-"):]
        newpath = vol.path.with_name(newname)
        with self._lock:
            os.rename(vol.path, newpath)
            os.chmod(newpath, 0o444)
        if vol.base_vmid is not None:  # a linked clone becomes a template: keeps its backing chain
            return f"{vol.storeid}:{vol.base_vmid}/{vol.base_name}/{vol.vmid}/{newname}"
        return f"{vol.storeid}:{vol.vmid}/{newname}"

    def resize(self, volid: str, size: int) -> None:
        vol = self.parse(volid)
        run(["qemu-img", "resize", "-q", "-f", vol.fmt or "raw", str(vol.path), str(size)])

    def free(self, volid: str) -> None:
        vol = self.parse(volid)
        with self._lock:
            if vol.is_base and self.is_base_and_used(volid):
                raise die(f"base volume '{volid}' is still in use by linked cloned")
            vol.path.unlink(missing_ok=True)
            if vol.vtype == "images":
                try:
                    vol.path.parent.rmdir()
                except OSError:
                    pass

    # -- listing --------------------------------------------------------------
    def _image_volid(self, s: StorageDef, owner: int, f: Path) -> tuple[str, str | None]:
        hdr = qcow2_header(f)
        parent = hdr[1] if hdr else None
        if parent:
            m = re.fullmatch(r"\.\./(\d+)/([^/]+)", parent)
            if m:
                return f"{s.id}:{m.group(1)}/{m.group(2)}/{owner}/{f.name}", f"{m.group(2)}"
        return f"{s.id}:{owner}/{f.name}", None

    def list_images(self, storeid: str, vmid: int | None = None) -> list[dict[str, Any]]:
        s = self.get(storeid)
        out: list[dict[str, Any]] = []
        root = s.path / "images"
        for vmdir in sorted(root.iterdir()) if root.is_dir() else []:
            if not vmdir.name.isdigit() or (vmid is not None and int(vmdir.name) != vmid):
                continue
            for f in sorted(vmdir.iterdir()):
                m = IMAGE_NAME_RE.match(f.name)
                if not m or not f.is_file():
                    continue
                volid, parent = self._image_volid(s, int(vmdir.name), f)
                hdr = qcow2_header(f)
                st = f.stat()
                item = {
                    "volid": volid,
                    "content": "images",
                    "format": m.group(3) or "raw",
                    "size": hdr[0] if hdr else st.st_size,
                    "used": st.st_blocks * 512,
                    "vmid": int(vmdir.name),
                    "ctime": int(st.st_mtime),
                }
                if parent:
                    item["parent"] = parent
                out.append(item)
        return out

    def list_content(self, storeid: str, content: str | None = None, vmid: int | None = None) -> list[dict[str, Any]]:
        s = self.get(storeid)
        out: list[dict[str, Any]] = []
        if content in (None, "images") and "images" in s.content:
            out.extend(self.list_images(storeid, vmid))
        if vmid is not None:
            return out
        for ctype, sub, prefix in (("iso", "template/iso", "iso"), ("snippets", "snippets", "snippets"),
                                   ("vztmpl", "template/cache", "vztmpl"), ("import", "import", "import")):
            if content not in (None, ctype) or ctype not in s.content:
                continue
            d = s.path / sub
            for f in sorted(d.iterdir()) if d.is_dir() else []:
                if not f.is_file() or f.name.startswith("."):
                    continue
                # pve-storage Plugin.pm get_subdir_files: an ISO is listed only by its extension
                # (a download's "<name>.iso.tmp_dwnl.<pid>" is not)
                if ctype == "iso" and not re.search(r"\.(?:iso|img)$", f.name, re.I):
                    continue
                st = f.stat()
                fmt = "iso" if ctype == "iso" else ("snippet" if ctype == "snippets" else f.suffix.lstrip("."))
                out.append({"volid": f"{storeid}:{prefix}/{f.name}", "content": ctype, "format": fmt,
                            "size": st.st_size, "ctime": int(st.st_mtime)})
        return out

    def is_base_and_used(self, volid: str) -> bool:
        vol = self.parse(volid)
        if not vol.is_base:
            return False
        for item in self.list_images(vol.storeid):
            if item["volid"].startswith(f"{vol.storeid}:{vol.vmid}/{vol.name}/"):
                return True
        return False

    def owned_volumes(self, vmid: int) -> list[str]:
        out: list[str] = []
        for s in self.storages.values():
            out.extend(item["volid"] for item in self.list_images(s.id, vmid))
        return out

    def status(self, storeid: str) -> dict[str, Any]:
        s = self.get(storeid)
        st = os.statvfs(s.path)
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return {
            "storage": s.id, "type": s.type, "content": ",".join(sorted(s.content)), "shared": int(s.shared),
            "active": 1, "enabled": 1, "total": total, "avail": avail, "used": total - st.f_bfree * st.f_frsize,
            "used_fraction": round(1 - (avail / total), 6) if total else 0,
        }

    def store_file(self, storeid: str, content: str, filename: str, src: Path) -> str:
        s = self.get(storeid)
        self._check_content(s, content)
        sub = {"iso": "template/iso", "vztmpl": "template/cache", "import": "import", "snippets": "snippets"}[content]
        dest = s.path / sub / filename
        tmp = dest.with_name(f".{filename}.tmp.{time.time_ns()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        prefix = {"iso": "iso", "vztmpl": "vztmpl", "import": "import", "snippets": "snippets"}[content]
        return f"{storeid}:{prefix}/{filename}"
