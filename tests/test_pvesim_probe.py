"""Probes of PVE 9.1 rules the simulator follows.

One test per rule; each docstring names the PVE source line the simulator copies (Q =
qemu-server ``src/PVE/API2/Qemu.pm``, QS = ``src/PVE/QemuServer.pm``, qemu-server 9.1.19).
Guests that have to run are diskless VMs with no OS (SeaBIOS finds nothing to boot): they
start in well under a second even under TCG and never answer ACPI or a guest agent.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

TEMPLATE = 9004


def wait(prox: ProxmoxAPI, upid: str, timeout: float = 120) -> dict[str, Any]:
    status = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.2)
    assert status is not None, f"task {upid} still running after {timeout}s"
    return status


def raises(fn: Callable[[], Any], status: int) -> ResourceException:
    with pytest.raises(ResourceException) as info:
        fn()
    assert info.value.status_code == status, (info.value.status_code, info.value.content)
    return info.value


def task_log(node: Any, upid: str) -> list[str]:
    return [line["t"] for line in node.tasks(upid).log.get()]


def public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def api(testbed):
    with testbed.enter():
        prox = testbed.proxmoxer()
        yield prox, prox.nodes(testbed.node)


@pytest.fixture(autouse=True)
def _no_faults_left(testbed):
    yield
    with testbed.enter():
        testbed.sim_admin.clear_faults()


@contextlib.contextmanager
def vm(api: tuple[ProxmoxAPI, Any], vmid: int, *, start: bool = False, **params: Any) -> Iterator[Any]:
    """A fresh VM (64 MiB, no OS unless given disks), destroyed afterwards whatever its state."""
    prox, node = api
    assert wait(prox, node.qemu.post(vmid=vmid, name=f"probe-{vmid}", memory=64, **params))["exitstatus"] == "OK"
    try:
        if start:
            assert wait(prox, node.qemu(vmid).status.start.post())["exitstatus"] == "OK"
        yield node.qemu(vmid)
    finally:
        remove(prox, node, vmid)


def remove(prox: ProxmoxAPI, node: Any, vmid: int) -> None:
    if not any(v["vmid"] == vmid for v in node.qemu.get()):
        return
    wait(prox, node.qemu(vmid).status.stop.post())
    if node.qemu(vmid).config.get().get("protection"):
        node.qemu(vmid).config.put(delete="protection")
    assert wait(prox, node.qemu(vmid).delete())["exitstatus"] == "OK"


def raw(testbed, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"PVEAPIToken={testbed.token_id}={testbed.token_secret}"}
    return requests.request(method, f"{testbed.url}{path}", headers=headers, verify=str(testbed.ca_path),
                            timeout=30, **kwargs)


def wait_stopped(vmapi: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while vmapi.status.current.get()["status"] != "stopped":
        assert time.monotonic() < deadline, "VM still running"
        time.sleep(0.2)


# ------------------------------------------------------------ booleans are 1/0
def test_ciupgrade_0_is_stored_as_0_and_drops_package_upgrade(testbed, api):
    """Booleans are stored 1/0 (JSONSchema.pm:1243,1253); Cloudinit.pm:168 upgrades unless ciupgrade is false."""
    with vm(api, 400, ciupgrade=0) as qemu:
        conf_file = testbed.sim_dir / "etc/pve/nodes" / testbed.node / "qemu-server/400.conf"
        assert "ciupgrade: 0\n" in conf_file.read_text()
        assert qemu.config.get()["ciupgrade"] == 0
        assert "package_upgrade" not in qemu.cloudinit.dump.get(type="user")
        with testbed.enter():  # a JSON body's true/false is a boolean too, stored as 1/0
            resp = raw(testbed, "PUT", f"/nodes/{testbed.node}/qemu/400/config", json={"ciupgrade": True})
        assert resp.status_code == 200, resp.reason
        assert "ciupgrade: 1\n" in conf_file.read_text()
        assert "package_upgrade: true\n" in qemu.cloudinit.dump.get(type="user")


def test_protection_1_refuses_destroy(api):
    """Q:2798 check_protection: DELETE of a protected VM is a synchronous 500."""
    with vm(api, 401, protection=1) as qemu:
        assert qemu.config.get()["protection"] == 1
        err = raises(qemu.delete, 500)
        assert err.content == "can't remove VM 401 - protection mode enabled"
        assert qemu.config.get()["name"] == "probe-401"


def test_template_1_on_create_makes_a_template(api):
    """create_vm stores template: 1; QS:5494 refuses to start a template."""
    prox, node = api
    with vm(api, 402, template=1) as qemu:
        assert qemu.config.get()["template"] == 1
        assert [v.get("template") for v in node.qemu.get() if v["vmid"] == 402] == [1]
        assert wait(prox, qemu.status.start.post())["exitstatus"] == "you can't start a vm if it's a template"


# ------------------------------------------------------------- stop and agent
def test_api_stop_commits_pending_changes_but_a_guest_exit_does_not(testbed, api):
    """QS:6214 vm_stop_cleanup(..., 1) after an API stop (QS:6280, QS:6311) applies pending changes,
    so a template made afterwards (and its clones) keeps them; `qm cleanup` after a guest exit does not."""
    prox, node = api
    disk = f"{testbed.storage}:1,format=qcow2"
    with vm(api, 410, start=True) as qemu:
        qemu.config.put(memory=96, scsi1=disk)
        assert {p["key"] for p in qemu.pending.get() if "pending" in p} == {"memory", "scsi1"}
        assert wait(prox, qemu.status.stop.post())["exitstatus"] == "OK"
        assert not [p for p in qemu.pending.get() if "pending" in p or "delete" in p]
        assert qemu.config.get(current=1)["memory"] == "96"
        assert wait(prox, qemu.template.post())["exitstatus"] == "OK"
        try:
            assert wait(prox, qemu.clone.post(newid=411, name="probe-411"))["exitstatus"] == "OK"
            clone = node.qemu(411).config.get()
            assert clone["memory"] == "96" and clone["scsi1"].startswith(f"{testbed.storage}:410/base-410-disk-0")
        finally:
            remove(prox, node, 411)
    with vm(api, 412, start=True) as qemu:
        qemu.config.put(memory=96)
        os.kill(qemu.status.current.get()["pid"], signal.SIGTERM)  # QEMU exits on its own
        wait_stopped(qemu)
        assert {p["key"]: p for p in qemu.pending.get()}["memory"] == {"key": "memory", "value": "64",
                                                                      "pending": "96"}


def test_shutdown_without_a_running_agent_falls_back_to_acpi(api):
    """QS:6252-6256: guest-shutdown only if the agent answers guest-ping, else system_powerdown; then
    QS:6272-6278: the timeout fails the task, or forceStop terminates the VM."""
    prox, node = api
    with vm(api, 413, start=True, agent=1) as qemu:
        t0 = time.monotonic()
        status = wait(prox, qemu.status.shutdown.post(timeout=2))
        assert status["exitstatus"] == "VM quit/powerdown failed - got timeout"
        assert time.monotonic() - t0 >= 2  # 3 s guest-ping, then the 2 s timeout
        assert ("QEMU Guest Agent is not running - VM 413 qmp command 'guest-ping' failed - got timeout"
                in task_log(node, status["upid"]))
        assert qemu.status.current.get()["status"] == "running"
        status = wait(prox, qemu.status.shutdown.post(timeout=2, forceStop=1))
        assert status["exitstatus"] == "WARNINGS: 1"
        assert "WARN: VM still running - terminating now with SIGTERM" in task_log(node, status["upid"])
        assert qemu.status.current.get()["status"] == "stopped"


def test_agent_0_on_a_stopped_vm_is_not_running(api):
    """Agent.pm:110: only an absent `agent` key is "No QEMU guest agent configured"."""
    with vm(api, 414, agent=0) as qemu:
        err = raises(qemu.agent.ping.post, 500)
        assert err.content == "VM 414 is not running"
    with vm(api, 415) as qemu:
        err = raises(qemu.agent.ping.post, 500)
        assert err.content == "No QEMU guest agent configured"


# ----------------------------------------------------------- config updates
def test_config_change_on_a_locked_vm_fails_at_once(testbed, api):
    """Q:2562 runs $load_and_check_config (check_lock, Q:2198) before forking or locking: PUT and POST
    on a clone target answer "VM is locked (clone)" at once instead of waiting on the flock."""
    prox, node = api
    testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=4)
    upid = node.qemu(TEMPLATE).clone.post(newid=416, name="probe-416")
    try:
        deadline = time.monotonic() + 10
        while not any(v["vmid"] == 416 for v in node.qemu.get()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        err = raises(lambda: node.qemu(416).config.put(name="during-clone"), 500)
        assert err.content == "VM is locked (clone)"
        err = raises(lambda: node.qemu(416).config.post(name="during-clone"), 500)
        assert err.content == "VM is locked (clone)"
        assert time.monotonic() - t0 < 3
        assert node.tasks(upid).status.get()["status"] == "running"
        assert wait(prox, upid)["exitstatus"] == "OK"
        assert node.qemu(416).config.get()["name"] == "probe-416"
    finally:
        wait(prox, upid)
        remove(prox, node, 416)


def test_bad_digest_fails_config_at_once_and_resize_in_its_task(testbed, api):
    """Q:2180 (checked early at Q:2562) for PUT/POST config; Q:5984 inside the resize worker."""
    prox, _ = api
    message = "checksum mismatch (file change by other user?)"
    with vm(api, 417, scsi0=f"{testbed.storage}:1,format=qcow2") as qemu:
        err = raises(lambda: qemu.config.put(name="x", digest="0" * 40), 500)
        assert err.content == message
        err = raises(lambda: qemu.config.post(name="x", digest="0" * 40), 500)
        assert err.content == message
        upid = qemu.resize.put(disk="scsi0", size="+1G", digest="0" * 40)
        assert wait(prox, upid)["exitstatus"] == message
        assert qemu.config.get()["name"] == "probe-417" and qemu.config.get()["scsi0"].endswith(",size=1G")


# ---------------------------------------------------------------- validation
def test_sshkeys_lines_are_checked_like_ssh_keygen(api):
    """pve-common Tools.pm:1104-1119: `ssh-keygen -l` on every non-blank line, a plain 500 on failure."""
    prox, node = api
    good = public_key()
    with vm(api, 418) as qemu:
        assert qemu.config.put(sshkeys=quote(f"\n{good} a@b\n\n", safe="")) is None
        for bad in (f"{good}\n# a comment line\n", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB a@b"):
            err = raises(lambda: qemu.config.put(sshkeys=quote(bad, safe="")), 500)
            assert err.content == "SSH public key validation error" and not err.errors
    err = raises(lambda: node.qemu.post(vmid=419, sshkeys=quote("junk", safe="")), 500)
    assert err.content == "SSH public key validation error"
    assert not any(v["vmid"] == 419 for v in node.qemu.get())


def test_boot_order_devices_must_exist(testbed, api):
    """Q:2509-2520: each device of `boot: order=` must be configured, pending or in the request, and
    not deleted by it; the update function dies (PUT: 500; POST: the task fails)."""
    prox, _ = api
    with vm(api, 420, ide2="none,media=cdrom") as qemu:
        err = raises(lambda: qemu.config.put(boot="order=scsi5"), 500)
        assert err.content == "invalid bootorder: device 'scsi5' does not exist'"
        err = raises(lambda: qemu.config.put(boot="order=ide2", delete="ide2"), 500)
        assert err.content == "invalid bootorder: device 'ide2' does not exist'"
        assert qemu.config.put(boot="order=ide2;net0", net0=f"virtio,bridge={testbed.bridge}") is None
        assert qemu.config.get()["boot"] == "order=ide2;net0"
        status = wait(prox, qemu.config.post(boot="order=scsi5"))
        assert status["exitstatus"] == "invalid bootorder: device 'scsi5' does not exist'"


def test_balloon_must_not_exceed_memory(api):
    """Q:2208-2217 (in $load_and_check_config, so before forking): balloon <= the new, pending or
    current memory."""
    message = "balloon value too large (must be smaller than assigned memory)"
    with vm(api, 421) as qemu:
        qemu.config.put(memory=512)
        err = raises(lambda: qemu.config.put(balloon=4096), 500)
        assert err.content == message
        err = raises(lambda: qemu.config.post(balloon=4096), 500)
        assert err.content == message
        assert qemu.config.put(balloon=256) is None
        err = raises(lambda: qemu.config.put(memory=128), 500)
        assert err.content == message
        assert qemu.config.get()["memory"] == "512" and qemu.config.get()["balloon"] == 256


def test_ipconfig_dhcp_with_a_gateway_is_accepted(testbed, api):
    """Network.pm:228: parse_ipconfig only warns (at ISO generation) and the interface gets no subnet."""
    with vm(api, 422, net0=f"virtio,bridge={testbed.bridge}") as qemu:
        assert qemu.config.put(ipconfig0="ip=dhcp,gw=10.99.0.1") is None
        assert qemu.config.get()["ipconfig0"] == "ip=dhcp,gw=10.99.0.1"
        network = qemu.cloudinit.dump.get(type="network")
        assert "name: eth0" in network and "type: dhcp4" not in network and "gateway" not in network


def test_query_parameters_win_over_the_body(testbed, api):
    """pve-http-server AnyEvent.pm:940-944: query-string values overwrite body values."""
    with vm(api, 423) as qemu, testbed.enter():
        resp = raw(testbed, "PUT", f"/nodes/{testbed.node}/qemu/423/config?name=from-query",
                   data={"name": "from-body", "description": "body only"})
        assert resp.status_code == 200, resp.reason
        conf = qemu.config.get()
        assert conf["name"] == "from-query" and conf["description"] == "body only"


def test_a_uri_parameter_repeated_in_the_body_must_agree(testbed, api):
    """pve-manager PVE/HTTPServer.pm:160-167: a body parameter that is also in the URI is accepted
    when equal (Telmate's proxmox-api-go sends `storage` again to download-url), else 400."""
    with vm(api, 430) as qemu, testbed.enter():
        path = f"/nodes/{testbed.node}/qemu/430/config"
        resp = raw(testbed, "PUT", path, data={"vmid": "430", "node": testbed.node, "name": "same"})
        assert resp.status_code == 200, resp.reason
        assert qemu.config.get()["name"] == "same"
        resp = raw(testbed, "PUT", path, data={"vmid": "431", "name": "other"})
        assert resp.status_code == 400, resp.reason
        assert resp.json()["errors"] == {"vmid": "duplicate parameter (already defined in URI) with conflicting values!"}


def test_a_repeated_parameter_is_an_array(testbed, api):
    """AnyEvent.pm:908-915 makes `k=a&k=b` an array; RESTHandler.pm:499 joins it only for `-list`
    formats, so validation refuses it for a plain string: 400 "got ARRAY"."""
    path = f"/nodes/{testbed.node}/qemu/424/config"
    with vm(api, 424, tags="a;b", description="x") as qemu, testbed.enter():
        for where in ("data", "params"):  # in the body or in the query string
            resp = raw(testbed, "PUT", path, **{where: [("name", "a"), ("name", "b")]})
            assert resp.status_code == 400, resp.reason
            assert resp.json()["errors"] == {"name": "type check ('string') failed - got ARRAY"}
        resp = raw(testbed, "PUT", path, data=[("delete", "tags"), ("delete", "description")])
        assert resp.status_code == 200, resp.reason
        conf = qemu.config.get()
        assert "tags" not in conf and "description" not in conf


def test_failed_authentication_says_authentication_failed(testbed):
    """pve-manager HTTPServer.pm:87-91 (token) and :100-103 (ticket): the reason is only logged."""
    url = f"{testbed.url}/version"
    headers = [{"Authorization": f"PVEAPIToken={testbed.token_id}=wrong-secret"},
               {"Authorization": "PVEAPIToken=nixgold@pve!no-such-token=x"},
               {"Cookie": "PVEAuthCookie=PVE:nixgold@pve:00000000::forged"}]
    with testbed.enter(), ThreadPoolExecutor(len(headers)) as pool:  # each 401 is delayed 3 s
        answers = list(pool.map(lambda h: requests.get(url, headers=h, verify=str(testbed.ca_path), timeout=30),
                                headers))
    assert [(r.status_code, r.reason) for r in answers] == [(401, "Authentication failed!")] * 3


def test_linked_clone_refusal_names_the_volume(testbed, api):
    """Q:4521-4540: "Linked clone feature is not supported for '<volid>' (<drive>)"."""
    _, node = api
    with vm(api, 425, scsi0=f"{testbed.storage}:1,format=qcow2") as qemu:
        err = raises(lambda: qemu.clone.post(newid=426, full=0), 500)
        assert err.content == (f"Linked clone feature is not supported for '{testbed.storage}:425/vm-425-disk-0.qcow2' "
                               "(scsi0)")
        assert not any(v["vmid"] == 426 for v in node.qemu.get())


# ------------------------------------------------------------- what the nightly refresh relies on
def test_a_template_takes_name_tags_description_and_protection(testbed, api):
    """update_vm_api never asks is_template (only moving a disk refuses templates, Q:4994): a template's
    name, tags, description and protection (general options, Q:799-817) change like any VM's."""
    prox, node = api
    with vm(api, 427, scsi0=f"{testbed.storage}:1,format=qcow2") as qemu:
        assert wait(prox, qemu.template.post())["exitstatus"] == "OK"
        qemu.config.put(name="renamed-427", tags="nixgold;nixgold-archive", description='{"note": 1}', protection=1)
        conf = qemu.config.get()
        assert (conf["template"], conf["name"], conf["tags"], conf["description"], conf["protection"]) == \
            (1, "renamed-427", "nixgold;nixgold-archive", '{"note": 1}', 1)
        qemu.config.put(delete="protection")
        assert "protection" not in qemu.config.get()


def test_a_full_clone_of_a_protected_template_is_protected_and_no_template(testbed, api):
    """Q:4458 full = $param->{full} // !is_template; the clone copies every other option (Q:4554 "copy
    everything else"), protection too, drops template (Q:4579), keeps the source's description unless a
    non-empty one is given (Q:4587 `if ($param->{description})`); its disk is a copy, not a base."""
    prox, node = api
    with vm(api, 428, scsi0=f"{testbed.storage}:1,format=qcow2", description="source notes") as qemu:
        assert wait(prox, qemu.template.post())["exitstatus"] == "OK"
        qemu.config.put(protection=1)
        try:
            assert wait(prox, qemu.clone.post(newid=429, full=1, name="copy-429"))["exitstatus"] == "OK"
            assert wait(prox, qemu.clone.post(newid=430, full=1, description=""))["exitstatus"] == "OK"
            copy = node.qemu(429).config.get()
            assert copy.get("template", 0) == 0 and copy["protection"] == 1 and copy["name"] == "copy-429"
            assert copy["description"] == "source notes" == node.qemu(430).config.get()["description"]
            assert copy["scsi0"].startswith(f"{testbed.storage}:429/vm-429-disk-0.qcow2")
            assert raises(node.qemu(429).delete, 500).content == "can't remove VM 429 - protection mode enabled"
        finally:
            remove(prox, node, 429)
            remove(prox, node, 430)


def test_two_creates_of_one_vmid_exactly_one_wins_before_forking(api):
    """Q:1346 create_and_lock_config claims the id before the worker forks: of two creates of one vmid at
    once, one gets a task and the other a synchronous 500 (what the refresh's lock marker VM relies on)."""
    prox, node = api

    def create(name: str) -> Any:
        try:
            return node.qemu.post(vmid=431, name=name, memory=64)
        except ResourceException as exc:
            return exc

    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(create, ["first", "second"]))
        errors = [a for a in answers if isinstance(a, ResourceException)]
        upids = [a for a in answers if isinstance(a, str)]
        assert len(errors) == 1 and len(upids) == 1, answers
        assert errors[0].status_code == 500
        assert errors[0].content == "unable to create VM 431 - VM 431 already exists on node 'pve'"
        assert wait(prox, upids[0])["exitstatus"] == "OK"
    finally:
        remove(prox, node, 431)


# ------------------------------------------------------------------------------- boot order
def test_a_deleted_boot_device_leaves_the_order_and_a_new_cd_joins_it(testbed, api):
    """Q:2234-2240, 2274-2278, 2408-2419: deleting a configured device drops it from `boot: order=`;
    a new CD drive is appended (packer-plugin-proxmox deletes its ISO drive after the conversion and
    adds a cloud-init drive, which is no CD there: `drive_is_cdrom($drive, 1)`)."""
    with vm(api, 447, ide2="none,media=cdrom", boot="order=ide2") as qemu:
        qemu.config.put(ide3="none,media=cdrom")
        assert qemu.config.get()["boot"] == "order=ide2;ide3"
        qemu.config.put(scsi1=f"{testbed.storage}:cloudinit")
        assert qemu.config.get()["boot"] == "order=ide2;ide3"
        qemu.config.put(delete="ide2")
        conf = qemu.config.get()
        assert conf["boot"] == "order=ide3" and "ide2" not in conf
        qemu.config.put(delete="ide3", boot="order=scsi1")  # an explicit boot wins
        assert qemu.config.get()["boot"] == "order=scsi1"


def test_ide_drives_on_q35_sit_on_pves_ahci_buses(testbed, api):
    """qemu-server DriveDevice.pm:121-134: IDE index i is controller i/2, unit i%2; q35's AHCI has one
    unit per bus, so an odd index moves up two buses (ide1 -> ide.2, ide2 -> ide.1)."""
    with vm(api, 448, machine="q35", ide0="none,media=cdrom", ide1="none,media=cdrom", ide2="none,media=cdrom",
            ide3="none,media=cdrom", start=True):
        with testbed.enter():
            (entry,) = [v for v in testbed.sim_admin.state()["vms"] if v["vmid"] == 448]
        argv = (Path(entry["rundir"]) / "cmdline").read_text()
        for index, bus in ((0, 0), (1, 2), (2, 1), (3, 3)):
            assert f"ide-cd,bus=ide.{bus},unit=0,drive=drive-ide{index}," in argv, argv
    with vm(api, 449, ide1="none,media=cdrom", ide2="none,media=cdrom", start=True):
        with testbed.enter():
            (entry,) = [v for v in testbed.sim_admin.state()["vms"] if v["vmid"] == 449]
        argv = (Path(entry["rundir"]) / "cmdline").read_text()
        assert "ide-cd,bus=ide.0,unit=1,drive=drive-ide1," in argv and "ide-cd,bus=ide.1,unit=0,drive=drive-ide2," in argv
