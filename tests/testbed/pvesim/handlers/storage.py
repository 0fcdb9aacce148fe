"""/nodes/{node}/storage/...: storages, content, upload, download-url."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import TaskError, die, param_error, perm_error
from ..router import Ctx, route

ST = "/nodes/{node}/storage/{storage}"
ISO_NAME_RE = re.compile(r"^[^/]+\.(?:iso|img)$", re.I)


def _visible(ctx: Ctx, sid: str) -> bool:
    return ctx.node.access.has(ctx.ident.authid, f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"], True)


@route("GET", "/nodes/{node}/storage")
def storage_list(ctx: Ctx, p: dict[str, Any]) -> Any:
    out = []
    wanted = set(re.split(r"[,;\s]+", p["content"])) if p.get("content") else None
    for sid, s in ctx.node.storage.storages.items():
        if p.get("storage") and p["storage"] != sid:
            continue
        if wanted and not (wanted & s.content):
            continue
        if not _visible(ctx, sid):
            continue
        item = ctx.node.storage.status(sid)
        if p.get("format"):
            item["format"] = {"default": "raw", "supported": ["qcow2", "raw", "vmdk"]}
        out.append(item)
    return out


@route("GET", ST)
def storage_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    ctx.node.storage.get(p["storage"])
    return [{"subdir": s} for s in ("content", "download-url", "file-restore", "import-metadata", "prunebackups",
                                     "rrd", "rrddata", "status", "upload")]


@route("GET", ST + "/status")
def storage_status(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.storage.status(p["storage"])


@route("GET", ST + "/content")
def storage_content(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    items = node.storage.list_content(p["storage"], p.get("content"), p.get("vmid"))
    out = []
    for item in items:
        vmid = item.get("vmid")
        if vmid is not None and not node.access.has(ctx.ident.authid, f"/vms/{vmid}", ["VM.Audit"]) \
                and not node.access.has(ctx.ident.authid, f"/storage/{p['storage']}", ["Datastore.Allocate"]):
            continue
        out.append(item)
    return out


@route("POST", ST + "/content")
def allocate_disk(ctx: Ctx, p: dict[str, Any]) -> Any:
    """pve-storage API2/Storage/Content.pm ``create``: allocate an empty disk image, return its volid.

    Packer 1.6.6 (Telmate proxmox-api-go) calls it before creating a VM on a directory storage."""
    vmid, name, sizestr = int(p["vmid"]), str(p["filename"]), str(p["size"])
    m = re.fullmatch(r"(\d+)([MG]?)", sizestr)
    if not m:
        raise param_error({"size": f"unable to parse size '{sizestr}'"})
    kib = int(m.group(1)) * {"": 1, "M": 1024, "G": 1024 * 1024}[m.group(2)]
    fmt = p.get("format")
    fm = re.search(r"\.(raw|qcow2|vmdk)$", name)
    if fm:
        if fmt and fmt != fm.group(1):
            raise param_error({"format": f"different storage formats ({fmt} != {fm.group(1)})"})
        fmt = fm.group(1)
    if not name.startswith(f"vm-{vmid}-") and not name.startswith(f"base-{vmid}-"):
        raise die(f"illegal name '{name}' - should be 'vm-{vmid}-*'")
    return ctx.node.storage.alloc(p["storage"], vmid, fmt or "raw", kib * 1024, name)


def _volid(p: dict[str, Any]) -> str:
    volume = p["volume"]
    return volume if ":" in volume else f"{p['storage']}:{volume}"


@route("GET", ST + "/content/{volume}")
def volume_info(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    volid = _volid(p)
    vol = node.storage.parse(volid)
    if not vol.path.exists():
        raise die(f"volume '{volid}' does not exist")
    size = node.storage.size(volid)
    out = {"path": str(vol.path), "size": size, "used": vol.path.stat().st_blocks * 512,
           "format": vol.fmt or "raw"}
    if vol.base_name:
        out["parent"] = vol.base_name
    return out


@route("DELETE", ST + "/content/{volume}")
def volume_delete(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    volid = _volid(p)
    vol = node.storage.parse(volid)
    if not node.access.has(ctx.ident.authid, f"/storage/{vol.storeid}", ["Datastore.Allocate"]):
        raise perm_error(f"/storage/{vol.storeid}, Datastore.Allocate")
    if not vol.path.exists():
        raise die(f"volume '{volid}' does not exist")
    if vol.vmid is not None and node.exists(vol.vmid):
        conf = node.try_load(vol.vmid)
        if conf is not None and any(volid in v for v in conf.values.values()):
            raise die(f"unable to delete volume '{volid}' - volume is still in use by VM {vol.vmid}")

    def worker(task: Any) -> None:
        node.storage.free(volid)
        task.log(f"Removed volume '{volid}'")

    return node.tasks.spawn("imgdel", "", ctx.ident.authid, worker).text


def _checksum(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(content: str, filename: str) -> None:
    if content == "iso" and not ISO_NAME_RE.match(filename):
        raise param_error({"filename": "wrong file extension"})
    if "/" in filename or filename.startswith("."):
        raise param_error({"filename": "invalid filename"})


@route("POST", ST + "/upload")
def upload(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    content, filename = p["content"], Path(str(p["filename"])).name
    _check_name(content, filename)
    node.storage.get(p["storage"])
    upload_file: Path | None = ctx.files.get("filename")
    if upload_file is None:
        raise die("upload failed - no file data")

    def worker(task: Any) -> None:
        try:
            if p.get("checksum"):
                got = _checksum(upload_file, p["checksum-algorithm"])
                if got.lower() != str(p["checksum"]).lower():
                    raise TaskError(f"checksum mismatch: got '{got}' != expect '{p['checksum']}'")
                task.log(f"calculating checksum of uploaded file...OK, checksum verified")
            task.log(f"starting file import from: {upload_file}")
            volid = node.storage.store_file(p["storage"], content, filename, upload_file)
            task.log(f"target file: {node.storage.path(volid)}")
            task.log(f"file size is: {upload_file.stat().st_size}")
        finally:
            upload_file.unlink(missing_ok=True)

    return node.tasks.spawn("imgcopy", "", ctx.ident.authid, worker).text


def normalize_content_filename(filename: str) -> str:
    """pve-storage Storage.pm normalize_content_filename: chomp, strip any path, and every character
    but ``[a-zA-Z0-9_.-]`` becomes ``_``."""
    filename = filename[:-1] if filename.endswith("\n") else filename
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", re.sub(r"^.*[/\\]", "", filename, flags=re.S))


def encode_text(text: str) -> str:
    """pve-common ParseUtils.pm encode_text: control and high-bit characters, ``:`` and ``%``
    percent-encoded (a worker id must not hold ``:``)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7e and c not in ":%" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _assert_iso_content(path: Path) -> None:
    """pve-storage Storage.pm assert_iso_content -> Plugin.pm file_size_info(path, undef,
    'auto-detect', untrusted=1): qemu-img must read it, and an untrusted image has no backing file."""
    import json
    import subprocess

    res = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                         timeout=60)
    if res.returncode != 0 or not res.stdout.strip():
        raise TaskError("failed to verify file: failed to query file information with qemu-img")
    if json.loads(res.stdout).get("backing-filename"):
        raise TaskError(f"failed to verify file: backing file not allowed for untrusted image '{path}'!")


@route("POST", ST + "/download-url")
def download_url(ctx: Ctx, p: dict[str, Any]) -> Any:
    """pve-storage API2/Storage/Status.pm download_url (privileges: the schema's ``permissions``)
    and pve-common Tools.pm download_file_from_url, which it runs in a ``download`` worker."""
    node = ctx.node
    content, url, storage = p["content"], str(p["url"]), p["storage"]
    scfg = node.storage.get(storage)
    if content not in scfg.content:  # Status.pm: before the filename is looked at
        raise die(f"storage '{storage}' is not configured for content-type '{content}'")
    filename = normalize_content_filename(str(p["filename"]))
    # Status.pm: the extension per content type (Storage.pm ISO_EXT_RE_0, VZTMPL_EXT_RE_1,
    # SAFE_CHAR_CLASS_RE + UPLOAD_IMPORT_EXT_RE_1, each matched at the end)
    if content == "iso" and not re.search(r"[^/]+\.(?:iso|img)$", filename, re.I):
        raise param_error({"filename": "wrong file extension"})
    if content == "vztmpl" and not re.search(r"[^/]+\.(?:tar(?!\.)|tar\.(?:gz|xz|zst|bz2))$", filename, re.I):
        raise param_error({"filename": "wrong file extension"})
    if content == "import" and not re.search(r"[a-zA-Z0-9\-.+=_]+\.(?:ova|qcow2|raw|vmdk)$", filename):
        raise param_error({"filename": "invalid filename or wrong extension"})
    if content not in ("iso", "vztmpl", "import"):
        raise param_error({"content": f"upload content-type '{content}' is not allowed"})
    dest = node.storage.path(f"{storage}:{content}/{filename}")
    dest.parent.mkdir(parents=True, exist_ok=True)  # Status.pm: File::Path::make_path
    algo = p.get("checksum-algorithm")
    expected = str(p["checksum"]) if p.get("checksum") else None
    # verify-certificates defaults to 1: wget checks the server against the node's trust store
    verify = p.get("verify-certificates") is not False

    def worker(task: Any) -> None:
        import ssl

        task.log(f"downloading {url} to {dest}")
        if dest.exists():  # Tools.pm: an existing file is kept when its checksum matches, else refused
            if expected:
                task.log("calculating checksum of existing file...")
                got = _checksum(dest, algo)
                if got.lower() == expected.lower():
                    task.log("OK, got correct file already, no need to download")
                    return
                raise TaskError(f"checksum mismatch: got '{got}' != expect '{expected}', aborting")
            raise TaskError(f"refusing to override existing file '{dest}'")
        tmp = dest.with_name(f"{dest.name}.tmp_dwnl.{threading.get_native_id()}")
        try:
            sslctx = ssl.create_default_context()
            if node.trusted_cas:  # the node's system trust store (what update-ca-certificates adds)
                sslctx.load_verify_locations(cadata="\n".join(node.trusted_cas))
            if not verify:  # wget --no-check-certificate
                sslctx.check_hostname = False
                sslctx.verify_mode = ssl.CERT_NONE
            try:
                with urllib.request.urlopen(url, timeout=60, context=sslctx) as resp, tmp.open("wb") as out:  # noqa: S310
                    shutil.copyfileobj(resp, out)
            except Exception as exc:
                raise TaskError(f"download failed: {exc}") from None
            if expected:
                got = _checksum(tmp, algo)
                if got.lower() != expected.lower():
                    raise TaskError(f"checksum mismatch: got '{got}' != expect '{expected}'")
                task.log("calculating checksum...OK, checksum verified")
            if content == "iso":
                _assert_iso_content(tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        task.log(f"download of '{url}' to '{dest}' finished")

    return node.tasks.spawn("download", encode_text(filename), ctx.ident.authid, worker).text
