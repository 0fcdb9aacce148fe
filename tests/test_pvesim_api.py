"""The PVE API simulator through plain proxmoxer (no guest OS boots here).

Every client runs inside the test bed's namespace (``testbed.enter()``) and verifies the
simulator's certificate against the per-run CA.  Expected texts are PVE's own.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from proxmoxer import AuthenticationError, ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

TEMPLATE = 9004


def wait(prox: ProxmoxAPI, upid: str, timeout: float = 120) -> dict[str, Any]:
    status = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.2)
    assert status is not None, f"task {upid} still running after {timeout}s"
    return status


def raises(fn, status: int) -> ResourceException:
    with pytest.raises(ResourceException) as info:
        fn()
    assert info.value.status_code == status, (info.value.status_code, info.value.content)
    return info.value


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


def test_version_nodes_and_env_file(testbed, api):
    prox, _ = api
    assert prox.version.get()["release"] == "9.1"
    assert [n["node"] for n in prox.nodes.get()] == [testbed.node]
    import shlex

    env = dict(shlex.split(line)[0].split("=", 1) for line in testbed.env_path.read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    assert env["PROXMOX_TOKEN_ID"] == "nixgold@pve!testbed"
    assert env["PROXMOX_URL"] == testbed.url
    assert Path(env["PROXMOX_CA_BUNDLE"]) == testbed.ca_path
    assert "[template]\nvmid = 9004" in testbed.config_path.read_text()


def test_template_9004_is_imported(testbed, api):
    prox, node = api
    conf = node.qemu(TEMPLATE).config.get()
    assert conf["template"] == 1
    assert conf["scsi0"].startswith(f"{testbed.storage}:{TEMPLATE}/base-{TEMPLATE}-disk-0.qcow2")
    assert conf["ide2"] == f"{testbed.storage}:{TEMPLATE}/vm-{TEMPLATE}-cloudinit.qcow2,media=cdrom"
    assert conf["agent"] == "1" and conf["serial0"] == "socket" and conf["boot"] == "order=scsi0"
    assert conf["net0"].startswith("virtio=BC:24:11:") and conf["net0"].endswith(f"bridge={testbed.bridge}")
    assert "-kernel" in conf["args"] and "-append" in conf["args"]
    manifest = json.loads(conf["description"])
    assert manifest["nixgold_manifest"] == 1 and manifest["template_vmid"] == TEMPLATE
    vms = prox.cluster.resources.get(type="vm")
    (entry,) = [vm for vm in vms if vm["vmid"] == TEMPLATE]
    assert entry["template"] == 1 and entry["type"] == "qemu" and entry["tags"] == "nixgold;testbed"


# --------------------------------------------------------------- schema errors
def test_python_true_and_unknown_parameters_are_rejected_like_pve(api):
    _, node = api
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=150, full=True), 400)
    assert err.content == "Parameter verification failed."
    assert err.errors == {"full": "type check ('boolean') failed - got 'True'"}
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=150, fullclone=1), 400)
    assert err.errors == {"fullclone": "property is not defined in schema and the schema does not allow "
                                       "additional properties"}
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(), 400)
    assert err.errors == {"newid": "property is missing and it is not optional"}
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=150, name="bad_name"), 400)
    assert err.errors == {"name": "invalid format - value does not look like a valid DNS name\n"}


def test_400_body_shape(testbed):
    with testbed.enter():
        resp = requests.post(f"{testbed.url}/nodes/{testbed.node}/qemu/{TEMPLATE}/clone", data={"newid": "1"},
                             headers={"Authorization": f"PVEAPIToken={testbed.token_id}={testbed.token_secret}"},
                             verify=str(testbed.ca_path), timeout=30)
    assert resp.status_code == 400 and resp.reason == "Parameter verification failed."
    body = resp.json()
    assert body["data"] is None
    assert body["errors"] == {"newid": "invalid format - value does not look like a valid VM ID\n"}


def test_nextid(api):
    prox, _ = api
    raw = prox.cluster.nextid.get()
    assert isinstance(raw, str)  # PVE returns a JSON string here; Packer's Go client relies on it
    nextid = int(raw)
    assert nextid >= 100
    err = raises(lambda: prox.cluster.nextid.get(vmid=TEMPLATE), 400)
    assert err.errors == {"vmid": f"VM {TEMPLATE} already exists"}
    assert int(prox.cluster.nextid.get(vmid=nextid)) == nextid


# ---------------------------------------------------------------------- 500s
def test_500s_carry_pve_messages_in_reason_and_body(testbed, api):
    _, node = api
    err = raises(lambda: node.qemu(999999).config.get(), 500)
    assert err.content == f"Configuration file 'nodes/{testbed.node}/qemu-server/999999.conf' does not exist"
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=TEMPLATE), 500)
    assert err.content == f"unable to create VM {TEMPLATE}: config file already exists"
    with testbed.enter():
        resp = requests.get(f"{testbed.url}/nodes/{testbed.node}/qemu/999999/status/current",
                            headers={"Authorization": f"PVEAPIToken={testbed.token_id}={testbed.token_secret}"},
                            verify=str(testbed.ca_path), timeout=30)
    assert resp.status_code == 500
    assert resp.json() == {"data": None, "message": f"Configuration file 'nodes/{testbed.node}/qemu-server/"
                                                    f"999999.conf' does not exist\n"}


def test_agent_errors_on_stopped_vms(api):
    prox, node = api
    err = raises(lambda: node.qemu(TEMPLATE).agent.ping.post(), 500)
    assert err.content == f"VM {TEMPLATE} is not running"
    wait(prox, node.qemu.post(vmid=160, name="no-agent", memory=64))
    err = raises(lambda: node.qemu(160).agent("network-get-interfaces").get(), 500)
    assert err.content == "No QEMU guest agent configured"
    wait(prox, node.qemu(160).delete())


def test_unknown_endpoint_is_501_and_logged(testbed, api):
    prox, node = api
    err = raises(lambda: node.qemu(TEMPLATE).rrddata.get(timeframe="hour"), 501)
    assert err.content == f"Method 'GET /nodes/{testbed.node}/qemu/{TEMPLATE}/rrddata' not implemented"
    raises(lambda: prox("no/such/thing").get(), 501)
    seen = {(u["method"], u["path"]): u for u in testbed.sim_admin.unimplemented()}
    assert seen[("GET", f"/nodes/{testbed.node}/qemu/{TEMPLATE}/rrddata")]["in_pve_9_1"] is True
    assert seen[("GET", "/no/such/thing")]["in_pve_9_1"] is False


# -------------------------------------------------------- clone / template / tasks
def test_linked_clone_task_upid_and_disk(testbed, api):
    prox, node = api
    upid = node.qemu(TEMPLATE).clone.post(newid=170, name="linked-170", description="hello")
    decoded = Tasks.decode_upid(upid)
    assert decoded["node"] == testbed.node and decoded["type"] == "qmclone" and decoded["id"] == str(TEMPLATE)
    assert decoded["user"] == "nixgold@pve" and upid.endswith(":nixgold@pve!testbed:")
    status = wait(prox, upid)
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"
    assert status["user"] == "nixgold@pve" and status["tokenid"] == "testbed"
    log = node.tasks(upid).log.get()
    assert log[-1] == {"n": len(log), "t": "TASK OK"}
    assert any("create linked clone of drive scsi0" in line["t"] for line in log)
    conf = node.qemu(170).config.get()
    tmpl = node.qemu(TEMPLATE).config.get()
    assert conf["scsi0"].startswith(f"{testbed.storage}:{TEMPLATE}/base-{TEMPLATE}-disk-0.qcow2/170/vm-170-disk-0.qcow2")
    assert conf["name"] == "linked-170" and conf["description"] == "hello" and "template" not in conf
    assert conf["net0"] != tmpl["net0"] and conf["net0"].startswith("virtio=BC:24:11:")
    assert conf["ide2"] == f"{testbed.storage}:170/vm-170-cloudinit.qcow2,media=cdrom"
    disk = testbed.sim_dir / "storage" / testbed.storage / "images" / "170" / "vm-170-disk-0.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["backing-filename"] == f"../{TEMPLATE}/base-{TEMPLATE}-disk-0.qcow2"
    content = node.storage(testbed.storage).content.get(vmid=170)
    assert {c["volid"] for c in content} >= {conf["scsi0"].split(",")[0]}
    # a template with linked clones cannot be destroyed (qemu-server destroy_vm: worker error)
    status = wait(prox, node.qemu(TEMPLATE).delete())
    assert status["exitstatus"] == (f"base volume '{testbed.storage}:{TEMPLATE}/base-{TEMPLATE}-disk-0.qcow2' "
                                    "is still in use by linked cloned")
    # starting a template: the qmstart worker dies
    status = wait(prox, node.qemu(TEMPLATE).status.start.post())
    assert status["exitstatus"] == "you can't start a vm if it's a template"
    tasks = node.tasks.get(vmid=170, source="all")
    assert tasks == [] or all(t["id"] == "170" for t in tasks)
    wait(prox, node.qemu(170).delete(**{"destroy-unreferenced-disks": 1, "purge": 1}))
    assert not disk.exists()
    raises(lambda: node.qemu(170).config.get(), 500)


def test_full_clone_and_template_conversion(testbed, api):
    prox, node = api
    assert wait(prox, node.qemu(TEMPLATE).clone.post(newid=171, full=1, name="full-171"))["exitstatus"] == "OK"
    conf = node.qemu(171).config.get()
    assert conf["scsi0"].startswith(f"{testbed.storage}:171/vm-171-disk-0.qcow2")
    disk = testbed.sim_dir / "storage" / testbed.storage / "images" / "171" / "vm-171-disk-0.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert "backing-filename" not in info
    err = raises(lambda: node.qemu(171).clone.post(newid=172, full=0), 500)
    assert err.content == (f"Linked clone feature is not supported for '{testbed.storage}:171/vm-171-disk-0.qcow2' "
                           "(scsi0)")
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=172, full=0, storage=testbed.storage), 500)
    assert err.content == "parameter 'storage' not allowed for linked clones"
    assert wait(prox, node.qemu(171).template.post())["exitstatus"] == "OK"
    conf = node.qemu(171).config.get()
    assert conf["template"] == 1 and conf["scsi0"].startswith(f"{testbed.storage}:171/base-171-disk-0.qcow2")
    err = raises(lambda: node.qemu(171).template.post(), 500)
    assert err.content == "you can't convert a template to a template"
    wait(prox, node.qemu(171).delete())


def test_config_digest_delete_and_async_update(testbed, api):
    prox, node = api
    wait(prox, node.qemu.post(vmid=180, name="cfg-180", memory=128, scsi0=f"{testbed.storage}:1,format=qcow2",
                              net0=f"virtio,bridge={testbed.bridge}", tags="B a b", ipconfig0="ip=dhcp"))
    conf = node.qemu(180).config.get()
    assert conf["tags"] == "a;b" and conf["memory"] == "128" and conf["scsi0"].endswith(",size=1G")
    err = raises(lambda: node.qemu(180).config.put(name="x", digest="0" * 40), 500)
    assert err.content == "checksum mismatch (file change by other user?)"
    assert node.qemu(180).config.put(name="cfg-renamed", digest=conf["digest"], delete="tags") is None
    conf2 = node.qemu(180).config.get()
    assert conf2["name"] == "cfg-renamed" and "tags" not in conf2 and conf2["digest"] != conf["digest"]
    err = raises(lambda: node.qemu(180).config.put(), 500)
    assert err.content == "no options specified"
    err = raises(lambda: node.qemu(180).config.put(name="x", delete="name"), 400)
    assert err.errors == {"delete": "you can't use '-name' and -delete name' at the same time"}
    upid = node.qemu(180).config.post(cores=2)
    assert Tasks.decode_upid(upid)["type"] == "qmconfig" and wait(prox, upid)["exitstatus"] == "OK"
    assert node.qemu(180).config.get()["cores"] == 2
    err = raises(lambda: node.qemu(180).config.put(args="-no-reboot"), 500)
    assert err.content == "only root can set 'args' config"
    # cipassword is stored hashed and shown masked; sshkeys must be urlencoded (and pass ssh-keygen -l)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDLLv4DMyOdbZ0P2R1pMn/rEzYH8gFPQB0c6oSuTZ3Vb"
    node.qemu(180).config.put(cipassword="secret", sshkeys=quote(f"{key} a@b", safe=""))
    conf = node.qemu(180).config.get()
    assert conf["cipassword"] == "**********"
    user = node.qemu(180).cloudinit.dump.get(type="user")
    assert f"ssh_authorized_keys:\n  - {key} a@b\n" in user
    assert "password: $6$" not in user  # masked in the dump
    network = node.qemu(180).cloudinit.dump.get(type="network")
    assert "name: eth0" in network and "type: dhcp4" in network
    # resize: +1G grows, shrinking fails in the worker
    assert wait(prox, node.qemu(180).resize.put(disk="scsi0", size="+1G"))["exitstatus"] == "OK"
    assert node.qemu(180).config.get()["scsi0"].endswith(",size=2G")
    assert wait(prox, node.qemu(180).resize.put(disk="scsi0", size="1G"))["exitstatus"] == \
        "shrinking disks is not supported"
    # a removed disk becomes unusedN; deleting unusedN frees the volume
    node.qemu(180).config.put(scsi1=f"{testbed.storage}:1")
    volid = node.qemu(180).config.get()["scsi1"].split(",")[0]
    assert volid == f"{testbed.storage}:180/vm-180-disk-1.raw"
    node.qemu(180).config.put(delete="scsi1")
    assert node.qemu(180).config.get()["unused0"] == volid
    path = testbed.sim_dir / "storage" / testbed.storage / "images" / "180" / "vm-180-disk-1.raw"
    assert path.exists()
    node.qemu(180).config.put(delete="unused0")
    assert "unused0" not in node.qemu(180).config.get() and not path.exists()
    wait(prox, node.qemu(180).delete())


# --------------------------------------------------------------- permissions/auth
def test_token_without_clone_privilege_gets_403(testbed):
    with testbed.enter():
        secret = testbed.sim_admin.add_token("nixgold@pve!auditor", roles=["PVEAuditor"])
        prox = ProxmoxAPI(f"{testbed.host}:{testbed.port}", user="nixgold@pve", token_name="auditor",
                          token_value=secret, verify_ssl=str(testbed.ca_path), timeout=30)
        node = prox.nodes(testbed.node)
        assert node.qemu(TEMPLATE).config.get()["template"] == 1
        err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=190), 403)
        assert err.content == f"Permission check failed (/vms/{TEMPLATE}, VM.Clone)"
        perms = prox.access.permissions.get()
        assert perms["/"]["VM.Audit"] == 1 and "VM.Clone" not in perms["/"]
        err = raises(lambda: node.qemu(TEMPLATE).config.put(name="nope"), 403)
        assert err.content.startswith(f"Permission check failed (/vms/{TEMPLATE}, VM.Config.Disk|")
        full = testbed.proxmoxer().access.permissions.get()
        assert full["/"]["VM.Clone"] == 1


def test_bad_credentials_are_401(testbed):
    with testbed.enter():
        url = f"{testbed.url}/nodes"
        t0 = time.monotonic()
        resp = requests.get(url, verify=str(testbed.ca_path), timeout=30)
        assert resp.status_code == 401 and resp.reason == "No ticket"
        assert time.monotonic() - t0 >= testbed.unauth_delay * 0.9  # PVE delays failed auth
        resp = requests.get(url, headers={"Authorization": f"PVEAPIToken={testbed.token_id}=wrong"},
                            verify=str(testbed.ca_path), timeout=30)
        assert resp.status_code == 401 and resp.reason == "Authentication failed!"
        with pytest.raises(AuthenticationError):
            ProxmoxAPI(f"{testbed.host}:{testbed.port}", user="nixgold@pve", password="wrong",
                       verify_ssl=str(testbed.ca_path), timeout=30)


def test_ticket_login_and_csrf(testbed):
    with testbed.enter():
        prox = ProxmoxAPI(f"{testbed.host}:{testbed.port}", user="nixgold@pve", password=testbed.user_password,
                          verify_ssl=str(testbed.ca_path), timeout=30)
        node = prox.nodes(testbed.node)
        assert node.qemu(TEMPLATE).config.get()["template"] == 1
        upid = node.qemu.post(vmid=195, name="ticket-195", memory=64)  # POST: proxmoxer adds the CSRF header
        assert wait(prox, upid)["exitstatus"] == "OK"
        ticket, csrf = prox.get_tokens()
        assert ticket.startswith("PVE:nixgold@pve:")
        base = f"{testbed.url}/nodes/{testbed.node}/qemu/195/config"
        cookies = {"PVEAuthCookie": ticket}
        resp = requests.put(base, data={"name": "no-csrf"}, cookies=cookies, verify=str(testbed.ca_path), timeout=30)
        assert resp.status_code == 401 and resp.reason == "Permission denied - invalid csrf token"
        resp = requests.put(base, data={"name": "with-csrf"}, cookies=cookies,
                            headers={"CSRFPreventionToken": csrf}, verify=str(testbed.ca_path), timeout=30)
        assert resp.status_code == 200, resp.reason
        assert requests.get(base, cookies=cookies, verify=str(testbed.ca_path),
                            timeout=30).json()["data"]["name"] == "with-csrf"
        # renewal: the ticket is accepted as password
        resp = requests.post(f"{testbed.url}/access/ticket", data={"username": "nixgold@pve", "password": ticket},
                             verify=str(testbed.ca_path), timeout=30)
        assert resp.status_code == 200 and resp.json()["data"]["ticket"].startswith("PVE:nixgold@pve:")
        wait(prox, node.qemu(195).delete())


# ---------------------------------------------------------------------- faults
def test_fail_and_delay_the_nth_call(testbed, api):
    _, node = api
    sim = testbed.sim_admin
    sim.fail("GET", "/nodes/*/qemu/*/config", status=500, message="injected: cfs-lock timeout", nth=2)
    node.qemu(TEMPLATE).config.get()
    err = raises(lambda: node.qemu(TEMPLATE).config.get(), 500)
    assert err.content == "injected: cfs-lock timeout"
    node.qemu(TEMPLATE).config.get()
    sim.add_fault("fail", "/cluster/nextid", method="GET", status=400, errors={"vmid": "injected"})
    err = raises(lambda: testbed.proxmoxer().cluster.nextid.get(), 400)
    assert err.errors == {"vmid": "injected"}
    sim.delay("GET", "/version", seconds=1.5)
    t0 = time.monotonic()
    testbed.proxmoxer().version.get()
    assert time.monotonic() - t0 >= 1.5


def test_task_faults(testbed, api):
    prox, node = api
    sim = testbed.sim_admin
    sim.task_error("POST", f"/nodes/*/qemu/{TEMPLATE}/clone", "clone failed: injected storage error")
    status = wait(prox, node.qemu(TEMPLATE).clone.post(newid=200))
    assert status["exitstatus"] == "clone failed: injected storage error"
    assert node.tasks(status["upid"]).log.get()[-1]["t"] == "TASK ERROR: clone failed: injected storage error"
    raises(lambda: node.qemu(200).config.get(), 500)

    sim.clone_lock_timeout()
    status = wait(prox, node.qemu(TEMPLATE).clone.post(newid=201))
    assert status["exitstatus"] == ("clone failed: can't lock file '/var/lock/qemu-server/lock-201.conf' "
                                    "- got timeout")
    raises(lambda: node.qemu(201).config.get(), 500)

    sim.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=3)
    upid = node.qemu(TEMPLATE).clone.post(newid=202)
    deadline = time.monotonic() + 10
    conf = None
    while time.monotonic() < deadline:
        try:
            conf = node.qemu(202).config.get()
            break
        except ResourceException:
            time.sleep(0.05)
    assert conf is not None and conf["lock"] == "clone"
    assert prox.nodes(testbed.node).tasks(upid).status.get()["status"] == "running"
    assert [vm for vm in prox.cluster.resources.get(type="vm") if vm["vmid"] == 202][0]["lock"] == "clone"
    # like PVE, a config change checks the lock before waiting for the clone worker's flock
    err = raises(lambda: node.qemu(202).config.put(name="after-clone"), 500)
    assert err.content == "VM is locked (clone)"
    assert wait(prox, upid)["exitstatus"] == "OK"
    node.qemu(202).config.put(name="after-clone")
    conf = node.qemu(202).config.get()
    assert conf["name"] == "after-clone" and "lock" not in conf

    sim.stuck_clone_lock()
    assert wait(prox, node.qemu(TEMPLATE).clone.post(newid=203))["exitstatus"] == "OK"
    assert node.qemu(203).config.get()["lock"] == "clone"
    err = raises(lambda: node.qemu(203).config.put(cores=2), 500)
    assert err.content == "VM is locked (clone)"
    err = raises(lambda: node.qemu(203).delete(skiplock=1), 400)
    assert err.errors == {"skiplock": "Only root may use this option."}
    root = testbed.root_api()
    assert wait(root, root.nodes(testbed.node).qemu(203).delete(skiplock=1))["exitstatus"] == "OK"
    assert wait(prox, node.qemu(202).delete())["exitstatus"] == "OK"


def test_taken_vmid_race(testbed, api):
    prox, node = api
    newid = int(prox.cluster.nextid.get())
    testbed.sim_admin.take_vmid_on_clone()
    err = raises(lambda: node.qemu(TEMPLATE).clone.post(newid=newid), 500)
    assert err.content == f"unable to create VM {newid}: config file already exists"
    assert int(prox.cluster.nextid.get()) != newid
    testbed.sim_admin.clear_faults()
    testbed.sim_admin.take_vmid(newid + 1)
    err = raises(lambda: prox.cluster.nextid.get(vmid=newid + 1), 400)
    assert err.errors == {"vmid": f"VM {newid + 1} already exists"}
    for vmid in (newid, newid + 1):  # the other client's VMs have no disks
        assert wait(prox, node.qemu(vmid).delete())["exitstatus"] == "OK"


# ---------------------------------------------------------------- storage/tasks
def test_iso_upload_and_storage_content(testbed, api, tmp_path):
    prox, node = api
    src = tmp_path / "root"
    src.mkdir()
    (src / "hello.txt").write_text("hi\n")
    iso = tmp_path / "tiny.iso"
    subprocess.run(["genisoimage", "-quiet", "-V", "TINY", "-o", str(iso), str(src)], check=True)
    storage = node.storage(testbed.storage)
    with iso.open("rb") as fh:
        upid = storage.upload.post(content="iso", filename=fh)
    assert Tasks.decode_upid(upid)["type"] == "imgcopy" and wait(prox, upid)["exitstatus"] == "OK"
    (entry,) = [i for i in storage.content.get(content="iso") if i["volid"] == f"{testbed.storage}:iso/tiny.iso"]
    assert entry["size"] == iso.stat().st_size and entry["format"] == "iso"
    assert any(s["storage"] == testbed.storage for s in node.storage.get(content="iso"))
    tasks = node.tasks.get(typefilter="imgcopy")
    assert any(t["upid"] == upid and t["status"] == "OK" for t in tasks)


def test_parallel_linked_clones_share_the_template_lock(testbed, api):
    prox, node = api
    upids = [node.qemu(TEMPLATE).clone.post(newid=vmid, name=f"par-{vmid}") for vmid in (210, 211, 212)]
    assert [wait(prox, upid)["exitstatus"] for upid in upids] == ["OK", "OK", "OK"]
    macs = {node.qemu(vmid).config.get()["net0"] for vmid in (210, 211, 212)}
    assert len(macs) == 3
    err = raises(lambda: node.qemu.post(vmid=210, name="dup"), 500)
    assert err.content == f"unable to create VM 210 - VM 210 already exists on node '{testbed.node}'"
    # a linked clone converted to a template can be cloned again (backing chain of two)
    assert wait(prox, node.qemu(210).template.post())["exitstatus"] == "OK"
    assert wait(prox, node.qemu(210).clone.post(newid=213))["exitstatus"] == "OK"
    assert node.qemu(213).config.get()["scsi0"].startswith(f"{testbed.storage}:210/base-210-disk-0.qcow2/213/")
    for vmid in (213, 210, 211, 212):
        assert wait(prox, node.qemu(vmid).delete())["exitstatus"] == "OK"


def test_cli_functions_drive_a_running_bed(testbed, api):
    from tests.testbed import cli

    prox, node = api
    state = cli.status(testbed.root, testbed.netns)
    assert state["up"] is True and state["url"] == testbed.url
    assert any(vm["vmid"] == TEMPLATE for vm in state["simulator"]["vms"])
    image_dir = Path(node.qemu(TEMPLATE).config.get()["args"].split()[1]).parent  # kernels/<vmid>/
    assert image_dir == testbed.root / "kernels" / str(TEMPLATE)
    assert cli.import_image("good", 9010, testbed.root, testbed.netns, name="cli-import") == 9010
    conf = node.qemu(9010).config.get()
    assert conf["template"] == 1 and conf["name"] == "cli-import"
    assert json.loads(conf["description"])["template_vmid"] == 9010
    assert wait(prox, node.qemu(9010).delete())["exitstatus"] == "OK"


def test_download_url_into_iso_storage(testbed, api, tmp_path):
    """pve-storage Status.pm download_url + pve-common Tools.pm download_file_from_url: a ``download``
    worker named after the (normalized) file; the checksum checked after the download; an existing
    file kept when its checksum matches, else refused; the extension checked."""
    import functools
    import hashlib
    import http.server
    import threading

    prox, node = api
    (tmp_path / "dl.iso").write_bytes(b"not really an iso\n" * 100)
    digest = hashlib.sha256((tmp_path / "dl.iso").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with testbed.enter():  # the socket must live in the namespace, where the simulator is
        httpd = http.server.ThreadingHTTPServer((testbed.host, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{testbed.host}:{httpd.server_address[1]}/dl.iso"
        storage = node.storage(testbed.storage)
        sha = {"checksum": digest, "checksum-algorithm": "sha256"}
        upid = storage("download-url").post(content="iso", filename="dl me!.iso", url=url, **sha)
        assert Tasks.decode_upid(upid)["type"] == "download" and Tasks.decode_upid(upid)["id"] == "dl_me_.iso"
        assert wait(prox, upid)["exitstatus"] == "OK"
        log = [line["t"] for line in node.tasks(upid).log.get()]
        assert "calculating checksum...OK, checksum verified" in log and log[-1] == "TASK OK"
        assert any(i["volid"] == f"{testbed.storage}:iso/dl_me_.iso" for i in storage.content.get(content="iso"))
        again = storage("download-url").post(content="iso", filename="dl_me_.iso", url=url, **sha)
        assert wait(prox, again)["exitstatus"] == "OK"
        assert "OK, got correct file already, no need to download" in [line["t"] for line in node.tasks(again).log.get()]
        status = wait(prox, storage("download-url").post(content="iso", filename="dl_me_.iso", url=url,
                                                         checksum="0" * 64, **{"checksum-algorithm": "sha256"}))
        assert status["exitstatus"] == f"checksum mismatch: got '{digest}' != expect '{'0' * 64}', aborting"
        status = wait(prox, storage("download-url").post(content="iso", filename="dl_me_.iso", url=url))
        assert status["exitstatus"].startswith("refusing to override existing file '")
        status = wait(prox, storage("download-url").post(content="iso", filename="dl2.iso", url=url,
                                                         checksum="0" * 64, **{"checksum-algorithm": "sha256"}))
        assert status["exitstatus"] == f"checksum mismatch: got '{digest}' != expect '{'0' * 64}'"
        assert not any(i["volid"].endswith("/dl2.iso") for i in storage.content.get(content="iso"))
        err = raises(lambda: storage("download-url").post(content="iso", filename="x.txt", url=url), 400)
        assert err.errors == {"filename": "wrong file extension"}
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_url_verifies_https_against_the_nodes_trust_store(testbed, api, tmp_path):
    """download_file_from_url runs wget, which checks the server against the node's CA store unless
    verify-certificates=0; a CA the admin added to the node (sim: trust_ca) is trusted from then on."""
    import hashlib

    from tests.testbed.https_files import HttpsFiles

    prox, node = api
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "tls.iso").write_bytes(b"an iso over https\n" * 50)
    sha = {"checksum": hashlib.sha256((tmp_path / "files" / "tls.iso").read_bytes()).hexdigest(),
           "checksum-algorithm": "sha256"}
    storage = node.storage(testbed.storage)
    with HttpsFiles(testbed, tmp_path / "files") as mirror:
        status = wait(prox, storage("download-url").post(content="iso", filename="tls1.iso", url=mirror.url("tls.iso"),
                                                         **sha))
        assert status["exitstatus"].startswith("download failed: ") and "CERTIFICATE_VERIFY_FAILED" in status["exitstatus"]
        status = wait(prox, storage("download-url").post(content="iso", filename="tls2.iso", url=mirror.url("tls.iso"),
                                                         **{"verify-certificates": 0}, **sha))
        assert status["exitstatus"] == "OK"
        with testbed.enter():
            testbed.sim_admin.trust_ca(mirror.ca_pem)
        status = wait(prox, storage("download-url").post(content="iso", filename="tls3.iso", url=mirror.url("tls.iso"),
                                                         **sha))
        assert status["exitstatus"] == "OK"
        assert [r for r in mirror.requests if r[0] == "GET"] == [("GET", "/tls.iso", 200)] * 2
    volids = {i["volid"] for i in storage.content.get(content="iso")}
    assert {f"{testbed.storage}:iso/tls2.iso", f"{testbed.storage}:iso/tls3.iso"} <= volids
    assert f"{testbed.storage}:iso/tls1.iso" not in volids


def test_download_url_needs_allocate_template_and_network_access(testbed, api, tmp_path):
    """Status.pm download_url permissions: Datastore.AllocateTemplate on the storage and Sys.Audit +
    Sys.Modify on / or Sys.AccessNetwork on the node."""
    prox, _ = api
    with testbed.enter():
        secret = testbed.sim_admin.add_token("nixgold@pve!dl-nonet", privs=["Datastore.AllocateTemplate"])
        limited = testbed.proxmoxer(token_name="dl-nonet", token_value=secret)
        storage = limited.nodes(testbed.node).storage(testbed.storage)
        err = raises(lambda: storage("download-url").post(content="iso", filename="p.iso",
                                                          url=f"http://{testbed.host}:9/p.iso"), 403)
        assert err.content == "Permission check failed"  # an ['or', ...] check names no privilege
        secret = testbed.sim_admin.add_token("nixgold@pve!dl-net", privs=["Datastore.AllocateTemplate",
                                                                          "Sys.AccessNetwork"])
        allowed = testbed.proxmoxer(token_name="dl-net", token_value=secret)
        upid = allowed.nodes(testbed.node).storage(testbed.storage)("download-url").post(
            content="iso", filename="p.iso", url=f"http://{testbed.host}:9/p.iso")
        assert wait(prox, upid)["exitstatus"].startswith("download failed: ")  # allowed; nothing listens on :9
