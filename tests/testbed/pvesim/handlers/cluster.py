"""/version, /nodes, /cluster/*, /storage."""
from __future__ import annotations

import os
import time
from typing import Any

from ..errors import die, param_error
from ..router import Ctx, route


@route("GET", "/version")
def version(ctx: Ctx, p: dict[str, Any]) -> Any:
    cfg = ctx.node.cfg
    return {"version": cfg.pve_version, "release": cfg.pve_version.rsplit(".", 1)[0], "repoid": cfg.repoid,
            "console": "xtermjs"}


def _node_entry(ctx: Ctx) -> dict[str, Any]:
    load = os.getloadavg()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"node": ctx.node.name, "status": "online", "type": "node", "id": f"node/{ctx.node.name}",
            "cpu": round(load[0] / (os.cpu_count() or 1), 4), "maxcpu": os.cpu_count() or 1,
            "mem": 0, "maxmem": mem, "uptime": int(time.time() - ctx.node.started), "level": "",
            "ssl_fingerprint": ""}


@route("GET", "/nodes")
def nodes(ctx: Ctx, p: dict[str, Any]) -> Any:
    entry = _node_entry(ctx)
    entry.pop("type")
    return [entry]


@route("GET", "/nodes/{node}")
def node_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    return [{"name": n} for n in ("qemu", "storage", "tasks", "status", "network", "version")]


@route("GET", "/nodes/{node}/status")
def node_status(ctx: Ctx, p: dict[str, Any]) -> Any:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return {"uptime": int(time.time() - ctx.node.started), "loadavg": [f"{x:.2f}" for x in os.getloadavg()],
            "cpu": 0, "cpuinfo": {"cpus": os.cpu_count() or 1, "model": "QEMU TCG (simulated)", "sockets": 1,
                                  "cores": os.cpu_count() or 1},
            "memory": {"total": mem, "free": free, "used": mem - free},
            "pveversion": f"pve-manager/{ctx.node.cfg.pve_version}/{ctx.node.cfg.repoid}",
            "kversion": os.uname().release}


@route("GET", "/nodes/{node}/network")
def node_network(ctx: Ctx, p: dict[str, Any]) -> Any:
    out = []
    for bridge in ctx.node.cfg.bridges:
        if p.get("type") not in (None, "bridge", "any_bridge"):
            continue
        out.append({"iface": bridge, "type": "bridge", "active": 1, "autostart": 1, "bridge_ports": "",
                    "families": ["inet"], "method": "static"})
    return out


@route("GET", "/cluster/status")
def cluster_status(ctx: Ctx, p: dict[str, Any]) -> Any:
    return [{"type": "node", "id": f"node/{ctx.node.name}", "name": ctx.node.name, "online": 1, "local": 1,
             "nodeid": 0, "ip": ctx.node.cfg.listen, "level": ""}]


@route("GET", "/cluster/nextid")
def nextid(ctx: Ctx, p: dict[str, Any]) -> Any:
    """A JSON *string* like PVE's (Telmate/proxmox-api-go, i.e. Packer, asserts ``.(string)``)."""
    used = set(ctx.node.vmids())
    if p.get("vmid") is not None:
        vmid = int(p["vmid"])
        if vmid in used:
            raise param_error({"vmid": f"VM {vmid} already exists"})
        return str(vmid)
    cfg = ctx.node.cfg
    for vmid in range(cfg.nextid_lower, cfg.nextid_upper):
        if vmid not in used:
            return str(vmid)
    raise die(f"unable to get any free VMID in range [{cfg.nextid_lower}, {cfg.nextid_upper}]")


@route("GET", "/cluster/resources")
def resources(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    typ = p.get("type")
    out: list[dict[str, Any]] = []
    if typ in (None, "vm"):
        for vmid in node.vmids():
            if not node.access.has(ctx.ident.authid, f"/vms/{vmid}", ["VM.Audit"]):
                continue
            conf = node.try_load(vmid)
            if conf is None:
                continue
            st = node.vm_status(vmid, conf)
            item = {"id": f"qemu/{vmid}", "type": "qemu", "vmid": vmid, "node": node.name, "name": st["name"],
                    "status": st["status"], "template": 1 if conf.is_template else 0, "maxcpu": st["cpus"],
                    "maxmem": st["maxmem"], "mem": st["mem"], "maxdisk": st["maxdisk"], "disk": 0, "cpu": 0,
                    "uptime": st["uptime"], "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0}
            if conf.values.get("tags"):
                item["tags"] = conf.values["tags"]
            if conf.lock:
                item["lock"] = conf.lock
            out.append(item)
    if typ in (None, "node"):
        out.append(_node_entry(ctx))
    if typ in (None, "storage"):
        for sid in node.storage.storages:
            if not node.access.has(ctx.ident.authid, f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"], True):
                continue
            st = node.storage.status(sid)
            out.append({"id": f"storage/{node.name}/{sid}", "type": "storage", "storage": sid, "node": node.name,
                        "status": "available", "plugintype": st["type"], "content": st["content"],
                        "shared": st["shared"], "disk": st["used"], "maxdisk": st["total"]})
    if typ == "sdn":
        out.append({"id": f"sdn/{node.name}/localnetwork", "type": "sdn", "sdn": "localnetwork",
                    "node": node.name, "status": "ok"})
    return out


@route("GET", "/storage")
def storage_config(ctx: Ctx, p: dict[str, Any]) -> Any:
    out = []
    for sid, s in ctx.node.storage.storages.items():
        if p.get("type") not in (None, s.type):
            continue
        if ctx.node.access.has(ctx.ident.authid, f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"], True):
            out.append(s.to_api())
    return out
