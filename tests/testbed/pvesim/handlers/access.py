"""/access: ticket login and effective permissions."""
from __future__ import annotations

import time
from typing import Any

from ..errors import ApiError, perm_error
from ..router import Ctx, route


@route("POST", "/access/ticket")
def create_ticket(ctx: Ctx, p: dict[str, Any]) -> Any:
    acl = ctx.node.access
    userid = acl.login(p["username"], p["password"], p.get("realm"))
    if userid is None:
        time.sleep(ctx.node.cfg.unauth_delay)
        raise ApiError(401, "authentication failure\n")
    out = {"username": userid, "ticket": acl.create_ticket(userid), "CSRFPreventionToken": acl.csrf_token(userid)}
    if ctx.node.cfg.cluster_name:
        out["clustername"] = ctx.node.cfg.cluster_name
    return out


@route("GET", "/access/permissions")
def permissions(ctx: Ctx, p: dict[str, Any]) -> Any:
    target = p.get("userid") or ctx.ident.authid
    own = target == ctx.ident.authid or (target.startswith(ctx.ident.userid + "!") and ctx.ident.tokenname is None)
    if not own and not ctx.node.access.has(ctx.ident.authid, "/access", ["Sys.Audit"]):
        raise perm_error("/access, Sys.Audit")
    return ctx.node.access.effective_permissions(target, p.get("path"))
