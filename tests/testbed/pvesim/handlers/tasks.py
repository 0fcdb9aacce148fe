"""/nodes/{node}/tasks: list, status, log, stop."""
from __future__ import annotations

from typing import Any

from ..errors import param_error, perm_error
from ..router import Ctx, route
from ..upid import decode

TASK = "/nodes/{node}/tasks/{upid}"


def _task(ctx: Ctx, p: dict[str, Any], priv: str = "Sys.Audit"):
    upid = decode(p["upid"])
    if upid is None:
        raise param_error({"upid": "unable to parse worker upid"})
    task = ctx.node.tasks.get(p["upid"])
    if task is None:
        raise param_error({"upid": "no such task"})
    if upid.user != ctx.ident.authid and not ctx.node.access.has(ctx.ident.authid, f"/nodes/{ctx.node.name}", [priv]):
        raise perm_error(f"/nodes/{ctx.node.name}, {priv}")
    return task


@route("GET", "/nodes/{node}/tasks")
def task_list(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    audit = node.access.has(ctx.ident.authid, f"/nodes/{node.name}", ["Sys.Audit"])
    source = p.get("source", "archive")
    items = []
    for task in reversed(node.tasks.all()):
        u = task.upid
        if not audit and u.user != ctx.ident.authid:
            continue
        if source == "archive" and task.status == "running":
            continue
        if source == "active" and task.status != "running":
            continue
        if p.get("vmid") is not None and u.id != str(p["vmid"]):
            continue
        if p.get("typefilter") and u.type != p["typefilter"]:
            continue
        if p.get("userfilter") and p["userfilter"] not in u.user:
            continue
        if p.get("errors") and task.exitstatus in (None, "OK"):
            continue
        if p.get("since") is not None and u.starttime < int(p["since"]):
            continue
        if p.get("until") is not None and u.starttime > int(p["until"]):
            continue
        item = {"upid": task.text, "node": u.node, "pid": u.pid, "pstart": u.pstart, "starttime": u.starttime,
                "type": u.type, "id": u.id, "user": u.user}
        if task.status == "stopped":
            item["status"] = task.exitstatus
            item["endtime"] = task.endtime
        items.append(item)
    ctx.extra["total"] = len(items)
    start, limit = int(p.get("start", 0)), int(p.get("limit", 50))
    return items[start : start + limit] if limit else items[start:]


@route("GET", TASK)
def task_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    _task(ctx, p)
    return [{"name": "log"}, {"name": "status"}]


@route("DELETE", TASK)
def task_stop(ctx: Ctx, p: dict[str, Any]) -> Any:
    task = _task(ctx, p, "Sys.Modify")
    task.cancel.set()
    return None


@route("GET", TASK + "/status")
def task_status(ctx: Ctx, p: dict[str, Any]) -> Any:
    return _task(ctx, p).status_dict()


@route("GET", TASK + "/log")
def task_log(ctx: Ctx, p: dict[str, Any]) -> Any:
    task = _task(ctx, p)
    lines = list(task.lines)
    start, limit = int(p.get("start", 0)), int(p.get("limit", 50))
    ctx.extra["total"] = len(lines)
    if p.get("download"):
        return "\n".join(lines) + "\n"
    chosen = lines[start : start + limit] if limit else lines[start:]
    if not chosen and start == 0 and not lines:
        return [{"n": 1, "t": "no content"}]
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(chosen)]
