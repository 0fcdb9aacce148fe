"""/nodes/{node}/storage/...: storages, content, upload, download-url."""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
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


@route("POST", ST + "/download-url")
def download_url(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    content, filename = p["content"], str(p["filename"])
    _check_name(content, filename)
    node.storage.get(p["storage"])
    url = str(p["url"])

    def worker(task: Any) -> None:
        import ssl

        task.log(f"downloading {url} to {filename}")
        # The simulator always verifies TLS peers (system CAs); verify-certificates=0 is not honoured.
        sslctx = ssl.create_default_context()
        if p.get("verify-certificates") is False:
            task.warn("verify-certificates=0 ignored: the simulator always verifies certificates")
        with tempfile.NamedTemporaryFile(dir=node.state, delete=False) as tmp:
            tmp_path = Path(tmp.name)
            try:
                with urllib.request.urlopen(url, timeout=60, context=sslctx) as resp:  # noqa: S310 (test bed)
                    shutil.copyfileobj(resp, tmp)
            except Exception as exc:
                tmp_path.unlink(missing_ok=True)
                raise TaskError(f"download failed: {exc}") from None
        try:
            if p.get("checksum"):
                got = _checksum(tmp_path, p["checksum-algorithm"])
                if got.lower() != str(p["checksum"]).lower():
                    raise TaskError(f"checksum mismatch: got '{got}' != expect '{p['checksum']}'")
            volid = node.storage.store_file(p["storage"], content, filename, tmp_path)
            task.log(f"download of '{url}' to '{node.storage.path(volid)}' finished")
        finally:
            tmp_path.unlink(missing_ok=True)

    return node.tasks.spawn("download", "", ctx.ident.authid, worker).text
