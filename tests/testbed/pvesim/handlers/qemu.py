"""/nodes/{node}/qemu/...: VM list, create, config, clone, template, power, resize, sendkey, cloud-init."""
from __future__ import annotations

from typing import Any

from .. import cloudinit
from ..errors import die
from ..router import Ctx, route
from ..vmconfig import CLOUDINIT_KEYS

VM = "/nodes/{node}/qemu/{vmid}"


@route("GET", "/nodes/{node}/qemu")
def vmlist(ctx: Ctx, p: dict[str, Any]) -> Any:
    out = []
    for vmid in ctx.node.vmids():
        if not ctx.node.access.has(ctx.ident.authid, f"/vms/{vmid}", ["VM.Audit"]):
            continue
        conf = ctx.node.try_load(vmid)
        if conf is None:
            continue
        st = ctx.node.vm_status(vmid, conf)
        st.pop("running-qemu", None)
        st.pop("running-machine", None)
        st.pop("qmpstatus", None) if not p.get("full") else None
        out.append(st)
    return out


@route("POST", "/nodes/{node}/qemu")
def create_vm(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.create_vm(p, ctx.ident).text


@route("GET", VM)
def vm_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    ctx.node.load(p["vmid"])
    return [{"subdir": s} for s in ("config", "pending", "status", "unlink", "vncproxy", "termproxy", "migrate",
                                     "resize", "move", "rrd", "rrddata", "monitor", "agent", "snapshot",
                                     "spiceproxy", "sendkey", "firewall", "mtunnel", "remote_migrate", "cloudinit")]


@route("DELETE", VM)
def destroy_vm(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.destroy_vm(p["vmid"], p, ctx.ident).text


@route("GET", VM + "/config")
def vm_config(ctx: Ctx, p: dict[str, Any]) -> Any:
    if p.get("snapshot"):
        ctx.node.load(p["vmid"])
        raise die(f"snapshot '{p['snapshot']}' does not exist")
    return ctx.node.config_api(p["vmid"], bool(p.get("current")))


@route("PUT", VM + "/config")
def update_vm_sync(ctx: Ctx, p: dict[str, Any]) -> Any:
    prep = ctx.node.prepare_update(p["vmid"], p, ctx.ident)
    ctx.node.apply_update(p["vmid"], prep, ctx.ident, lambda line: None)
    return None


@route("POST", VM + "/config")
def update_vm_async(ctx: Ctx, p: dict[str, Any]) -> Any:
    node, vmid = ctx.node, p["vmid"]
    prep = node.prepare_update(vmid, p, ctx.ident)
    node.load(vmid)
    task = node.tasks.spawn("qmconfig", str(vmid), ctx.ident.authid,
                            lambda t: node.apply_update(vmid, prep, ctx.ident, t.log))
    delay = p.get("background_delay")
    if delay:
        if task.done.wait(float(delay)):
            if task.exitstatus == "OK" or (task.exitstatus or "").startswith("WARNINGS"):
                return None
            raise die(f"failed to update VM {vmid}: {task.exitstatus}")
    return task.text


@route("GET", VM + "/pending")
def vm_pending(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.pending_api(p["vmid"])


@route("POST", VM + "/clone")
def clone_vm(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.clone_vm(p["vmid"], p, ctx.ident, ctx.fired).text


@route("POST", VM + "/template")
def template_vm(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.template_vm(p["vmid"], p, ctx.ident).text


@route("GET", VM + "/feature")
def vm_feature(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    conf = node.load(p["vmid"])
    feature = p["feature"]
    ok = True
    for key in conf.drives():
        value = conf.values[key]
        if node.is_cdrom(value) or node.is_cloudinit_value(value):
            continue
        volid = node.drive_volume(value)
        if volid is None:
            continue
        vol = node.storage.parse(volid)
        if feature == "clone":
            ok &= vol.is_base
        elif feature == "snapshot":
            ok &= vol.fmt == "qcow2"
    return {"hasFeature": 1 if ok else 0, "nodes": [node.name]}


@route("PUT", VM + "/resize")
def resize_vm(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.resize_vm(p["vmid"], p, ctx.ident).text


@route("PUT", VM + "/sendkey")
def sendkey(ctx: Ctx, p: dict[str, Any]) -> Any:
    ctx.node.sendkey(p["vmid"], p["key"], bool(p.get("skiplock")), ctx.ident)
    return None


@route("GET", VM + "/status")
def status_index(ctx: Ctx, p: dict[str, Any]) -> Any:
    ctx.node.load(p["vmid"])
    return [{"subdir": s} for s in ("current", "start", "stop", "reset", "shutdown", "suspend", "reboot")]


@route("GET", VM + "/status/current")
def status_current(ctx: Ctx, p: dict[str, Any]) -> Any:
    node = ctx.node
    conf = node.load(p["vmid"])
    st = node.vm_status(p["vmid"], conf)
    st["ha"] = {"managed": 0}
    if node.agent_enabled(conf.values):
        st["agent"] = 1
    return st


@route("POST", VM + "/status/start")
def vm_start(ctx: Ctx, p: dict[str, Any]) -> Any:
    for opt in ("stateuri", "migratedfrom", "migration_type", "migration_network", "targetstorage", "force-cpu"):
        if p.get(opt) is not None and ctx.ident.authid != "root@pam":
            from ..errors import param_error

            raise param_error({opt: "Only root may use this option."})
    return ctx.node.start_vm(p["vmid"], p, ctx.ident, ctx.fired).text


@route("POST", VM + "/status/stop")
def vm_stop(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.stop_vm(p["vmid"], p, ctx.ident).text


@route("POST", VM + "/status/shutdown")
def vm_shutdown(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.shutdown_vm(p["vmid"], p, ctx.ident).text


@route("POST", VM + "/status/reboot")
def vm_reboot(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.reboot_vm(p["vmid"], p, ctx.ident).text


@route("POST", VM + "/status/reset")
def vm_reset(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.node.reset_vm(p["vmid"], p, ctx.ident).text


@route("GET", VM + "/cloudinit")
def cloudinit_pending(ctx: Ctx, p: dict[str, Any]) -> Any:
    conf = ctx.node.load(p["vmid"])
    keys = sorted({k for k in conf.values if CLOUDINIT_KEYS.match(k)} | set(conf.special_cloudinit))
    out: list[dict[str, Any]] = []
    for key in keys:
        item: dict[str, Any] = {"key": key}
        if key in conf.special_cloudinit:
            old = conf.special_cloudinit[key]
            if old != "":
                item["value"] = old
            if key in conf.values:
                item["pending"] = conf.values[key]
            else:
                item["delete"] = 1
        else:
            item["value"] = conf.values[key]
        if key == "cipassword":
            for k in ("value", "pending"):
                if k in item:
                    item[k] = "**********"
        out.append(item)
    return out


@route("PUT", VM + "/cloudinit")
def cloudinit_update(ctx: Ctx, p: dict[str, Any]) -> Any:
    node, vmid = ctx.node, p["vmid"]
    with node.locks.hold(vmid):
        conf = node.load(vmid)
        node.check_lock(conf)
        if node.regenerate_cloudinit(conf, lambda line: None):
            node.write(conf)
    return None


@route("GET", VM + "/cloudinit/dump")
def cloudinit_dump(ctx: Ctx, p: dict[str, Any]) -> Any:
    conf = ctx.node.load(p["vmid"])
    values = dict(conf.values)
    if "cipassword" in values:
        values["cipassword"] = "**********"
    return cloudinit.dump(values, p["vmid"], p["type"], ctx.node.dns)
