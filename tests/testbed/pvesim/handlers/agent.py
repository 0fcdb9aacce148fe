"""/nodes/{node}/qemu/{vmid}/agent/*: forwarded to the guest's qemu-guest-agent.

Generic commands answer ``{"result": <QGA return>}``; ``exec`` answers
``{"pid": N}`` and ``exec-status`` the decoded status, unwrapped, as
qemu-server's API2/Qemu/Agent.pm does.
"""
from __future__ import annotations

import base64
from typing import Any

from ..errors import param_error
from ..router import HANDLERS, Ctx, route
from ..schema import load_schema

AGENT = "/nodes/{node}/qemu/{vmid}/agent"
SPECIAL = {"exec", "exec-status", "file-read", "file-write", "set-user-password"}
MAX_READ = 16 * 1024 * 1024


@route("GET", AGENT)
def agent_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    names = sorted({path.rsplit("/", 1)[1] for (_m, path) in HANDLERS if path.startswith(AGENT + "/")})
    return [{"name": n} for n in names]


@route("POST", AGENT)
def agent_generic(ctx: Ctx, p: dict[str, Any]) -> Any:
    return {"result": ctx.node.agent_cmd(p["vmid"], p["command"])}


def _simple(cmd: str):
    def handler(ctx: Ctx, p: dict[str, Any]) -> Any:
        return {"result": ctx.node.agent_cmd(p["vmid"], cmd)}

    return handler


def _register_simple() -> None:
    schema = load_schema()
    for (method, path) in schema.endpoints:
        if path.startswith(AGENT + "/"):
            cmd = path.rsplit("/", 1)[1]
            if cmd not in SPECIAL:
                route(method, path)(_simple(cmd))


_register_simple()


@route("POST", AGENT + "/exec")
def agent_exec(ctx: Ctx, p: dict[str, Any]) -> Any:
    command = p.get("command")
    if isinstance(command, str):
        command = [command]
    if not command and p.get("input-data") is None:
        raise param_error({"command": "command or input-data (or both) required"})
    args: dict[str, Any] = {"capture-output": True}
    if command:
        args["path"] = command[0]
        args["arg"] = list(command[1:])
    if p.get("input-data") is not None:
        args["input-data"] = base64.b64encode(str(p["input-data"]).encode()).decode()
    res = ctx.node.agent_cmd(p["vmid"], "exec", args)
    return {"pid": res["pid"]}


@route("GET", AGENT + "/exec-status")
def agent_exec_status(ctx: Ctx, p: dict[str, Any]) -> Any:
    res = ctx.node.agent_cmd(p["vmid"], "exec-status", {"pid": int(p["pid"])})
    out: dict[str, Any] = {"exited": 1 if res.get("exited") else 0}
    for key in ("exitcode", "signal"):
        if key in res:
            out[key] = res[key]
    for key in ("out-data", "err-data"):
        if key in res:
            out[key] = base64.b64decode(res[key]).decode("utf-8", "replace")
    for key in ("out-truncated", "err-truncated"):
        if key in res:
            out[key] = 1 if res[key] else 0
    return out


@route("GET", AGENT + "/file-read")
def agent_file_read(ctx: Ctx, p: dict[str, Any]) -> Any:
    node, vmid = ctx.node, p["vmid"]
    handle = node.agent_cmd(vmid, "file-open", {"path": p["file"], "mode": "r"})
    data = b""
    truncated = False
    try:
        while True:
            chunk = node.agent_cmd(vmid, "file-read", {"handle": handle, "count": 1024 * 1024})
            data += base64.b64decode(chunk.get("buf-b64", ""))
            if chunk.get("eof"):
                break
            if len(data) >= MAX_READ:
                truncated = True
                break
    finally:
        node.agent_cmd(vmid, "file-close", {"handle": handle})
    out: dict[str, Any] = {"content": data.decode("utf-8", "replace")}
    if truncated:
        out["truncated"] = 1
    return out


@route("POST", AGENT + "/file-write")
def agent_file_write(ctx: Ctx, p: dict[str, Any]) -> Any:
    node, vmid = ctx.node, p["vmid"]
    content = str(p["content"])
    encode = p.get("encode", True)
    buf = base64.b64encode(content.encode()).decode() if encode else content
    handle = node.agent_cmd(vmid, "file-open", {"path": p["file"], "mode": "wb"})
    try:
        node.agent_cmd(vmid, "file-write", {"handle": handle, "buf-b64": buf})
    finally:
        node.agent_cmd(vmid, "file-close", {"handle": handle})
    return None


@route("POST", AGENT + "/set-user-password")
def agent_set_password(ctx: Ctx, p: dict[str, Any]) -> Any:
    args = {"username": p["username"], "password": base64.b64encode(str(p["password"]).encode()).decode(),
            "crypted": bool(p.get("crypted"))}
    return {"result": ctx.node.agent_cmd(p["vmid"], "set-user-password", args)}
