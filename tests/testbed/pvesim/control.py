"""``/_sim/*``: the simulator's own control API (outside ``/api2/json``).

Authorization: ``Authorization: PVESimAdmin <secret>`` (``sim_admin_secret``
of the config).  ``GET /_sim/health`` needs no auth (readiness probe).

    GET    /_sim/health
    GET    /_sim/state                    VMs, QEMU pids, TAPs, running tasks
    GET    /_sim/faults                   POST (add one)   DELETE (clear all)
    DELETE /_sim/faults/<id>
    POST   /_sim/agent-delay              {"vmid": 100 | null, "seconds": 30, "name": "glob" (optional)}
    POST   /_sim/vms                      {"vmid": 123}  another client takes this id
    GET    /_sim/requests?since=<seq>     request log (method, path, status, user, error)
    GET    /_sim/unimplemented            501s seen (method, path, exists in PVE 9.1)
    POST   /_sim/tokens                   {"tokenid": "u@pve!t", "privsep": true, "roles": [...], "privs": [...],
                                           "path": "/"} -> {"tokenid", "secret"}
    POST   /_sim/users                    {"userid": "u@pve", "password": "...", "roles": [...], "path": "/"}
    POST   /_sim/trusted-cas              {"pem": "-----BEGIN CERTIFICATE-----..."}: the node trusts this CA
                                          (its system trust store, as after update-ca-certificates)
    POST   /_sim/shutdown                 stop every guest and exit
"""
from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from .server import ApiServer

log = logging.getLogger(__name__)


def _json_body(headers: Any, rfile: BinaryIO) -> dict[str, Any]:
    length = int(headers.get("Content-Length") or 0)
    if not length:
        return {}
    data = json.loads(rfile.read(length) or b"{}")
    if not isinstance(data, dict):
        raise ValueError("JSON object expected")
    return data


def _grant(server: "ApiServer", ugid: str, spec: dict[str, Any]) -> None:
    access = server.node.access
    roles = list(spec.get("roles") or [])
    if spec.get("privs"):
        role = f"sim-{uuid.uuid4().hex[:8]}"
        access.add_role(role, spec["privs"])
        roles.append(role)
    for role in roles:
        access.add_acl(spec.get("path", "/"), ugid, role, bool(spec.get("propagate", True)))


def handle_control(server: "ApiServer", method: str, path: str, query: str, headers: Any,
                   rfile: BinaryIO) -> tuple[int, Any]:
    node = server.node
    if path == "/_sim/health":
        return 200, {"data": {"ok": True, "node": node.name, "url": node.cfg.url}}
    auth = headers.get("Authorization") or ""
    secret = auth[len("PVESimAdmin "):] if auth.startswith("PVESimAdmin ") else ""
    if not secret or not hmac.compare_digest(secret, node.cfg.sim_admin_secret):
        return 401, {"error": "sim-admin authorization required"}
    try:
        body = _json_body(headers, rfile) if method in ("POST", "PUT") else {}
        q = dict(parse_qsl(query))
        if path == "/_sim/state" and method == "GET":
            vms = []
            for vmid in node.vmids():
                inst = node.runtime.get(vmid)
                vms.append({"vmid": vmid, "running": inst is not None, "pid": inst.pid if inst else None,
                            "taps": inst.taps if inst else [], "rundir": str(node.runtime.run_dir / str(vmid))})
            return 200, {"data": {"vms": vms, "qemu_pids": [i.pid for i in list(node.runtime.instances.values())],
                                  "running_tasks": [t.text for t in node.tasks.running()]}}
        if path == "/_sim/faults":
            if method == "GET":
                return 200, {"data": node.faults.snapshot()}
            if method == "POST":
                return 200, {"data": node.faults.add(body).to_dict()}
            if method == "DELETE":
                node.faults.clear()
                return 200, {"data": None}
        if path.startswith("/_sim/faults/") and method == "DELETE":
            ok = node.faults.remove(int(path.rsplit("/", 1)[1]))
            return (200, {"data": None}) if ok else (404, {"error": "no such fault"})
        if path == "/_sim/agent-delay" and method == "POST":
            node.faults.set_agent_delay(body.get("vmid"), float(body["seconds"]), body.get("name"))
            return 200, {"data": node.faults.snapshot()["agent_delay"]}
        if path == "/_sim/vms" and method == "POST":
            vmid = int(body["vmid"])
            if node.exists(vmid):
                return 409, {"error": f"VM {vmid} already exists"}
            node.write_raw(vmid, f"#{body.get('description', 'taken by another client')}\nname: "
                                 f"{body.get('name', 'other-client')}\n")
            return 200, {"data": {"vmid": vmid}}
        if path == "/_sim/requests" and method == "GET":
            since = int(q.get("since", 0))
            return 200, {"data": [r for r in list(server.requests) if r["seq"] > since]}
        if path == "/_sim/unimplemented" and method == "GET":
            return 200, {"data": list(server.unimplemented)}
        if path == "/_sim/tokens" and method == "POST":
            token_secret = body.get("secret") or str(uuid.uuid4())
            node.access.add_token(body["tokenid"], token_secret, bool(body.get("privsep", True)))
            _grant(server, body["tokenid"], body)
            return 200, {"data": {"tokenid": body["tokenid"], "secret": token_secret}}
        if path == "/_sim/users" and method == "POST":
            from .auth import User

            userid = body["userid"]
            with node.access._lock:
                node.access.users[userid] = User(userid, body.get("password") or secrets.token_urlsafe(12))
            _grant(server, userid, body)
            return 200, {"data": {"userid": userid}}
        if path == "/_sim/trusted-cas" and method == "POST":
            pem = str(body["pem"])
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise ValueError("pem: a PEM certificate expected")
            node.trusted_cas.append(pem)
            return 200, {"data": len(node.trusted_cas)}
        if path == "/_sim/shutdown" and method == "POST":
            if server.on_shutdown_request:
                threading.Thread(target=server.on_shutdown_request, daemon=True).start()
            return 200, {"data": None}
    except (KeyError, ValueError, TypeError) as exc:
        return 400, {"error": f"{exc.__class__.__name__}: {exc}"}
    return 404, {"error": f"no such control endpoint {method} {path}"}
