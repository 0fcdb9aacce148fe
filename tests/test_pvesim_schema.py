"""pvesim request validation against the PVE 9.1 schema fixture (no server needed).

Messages are pve-common JSONSchema.pm's, so a client that handles PVE's 400s handles these.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.testbed.pvesim import cloudinit
from tests.testbed.pvesim.errors import ApiError
from tests.testbed.pvesim.schema import FIXTURE, load_schema
from tests.testbed.pvesim.upid import Upid, decode

CLONE = ("POST", "/nodes/{node}/qemu/{vmid}/clone")
CREATE = ("POST", "/nodes/{node}/qemu")
CONFIG = ("PUT", "/nodes/{node}/qemu/{vmid}/config")
NOT_IN_SCHEMA = "property is not defined in schema and the schema does not allow additional properties"


def errors(method_path: tuple[str, str], params: dict) -> dict[str, str] | None:
    schema = load_schema()
    try:
        schema.validate(schema.endpoint(*method_path), params)
    except ApiError as exc:
        assert exc.status == 400
        assert exc.message == "Parameter verification failed.\n"
        return exc.errors
    return None


def test_fixture_cites_its_source_and_has_the_endpoints():
    data = json.loads(Path(FIXTURE).read_text())
    src = data["_source"]
    assert src["repo"] == "proxmox/pve-docs"
    assert src["path"] == "api-viewer/apidata.js"
    assert src["commit"] == "a8736b6d6169ea9679ee02285ea36fdab42e85c3"
    for key in ("POST /nodes/{node}/qemu/{vmid}/clone", "PUT /nodes/{node}/qemu/{vmid}/sendkey",
                "GET /access/permissions", "POST /access/ticket", "GET /nodes/{node}/tasks/{upid}/status"):
        assert key in data["endpoints"]
    # property names survive the doc stripping (a property may be called "description")
    assert "description" in data["endpoints"]["POST /nodes/{node}/qemu"]["parameters"]["properties"]
    assert data["endpoints"]["POST /nodes/{node}/qemu"]["parameters"]["properties"]["net[n]"]["index_max"] == 31


def test_python_true_is_not_a_pve_boolean():
    assert errors(CLONE, {"node": "pve", "vmid": "9004", "newid": "123", "full": "True"}) == {
        "full": "type check ('boolean') failed - got 'True'"}
    assert errors(CLONE, {"node": "pve", "vmid": "9004", "newid": "123", "full": "1"}) is None


def test_unknown_parameter():
    assert errors(CLONE, {"node": "pve", "vmid": "9004", "newid": "123", "fulll": "1"}) == {"fulll": NOT_IN_SCHEMA}


def test_missing_required():
    assert errors(CLONE, {"node": "pve", "vmid": "9004"}) == {"newid": "property is missing and it is not optional"}


@pytest.mark.parametrize("params, key, message", [
    ({"name": "under_score"}, "name", "invalid format - value does not look like a valid DNS name\n"),
    ({"newid": "99"}, "newid", "invalid format - value does not look like a valid VM ID\n"),
    ({"newid": "abc"}, "newid", "type check ('integer') failed - got 'abc'"),
    ({"storage": "9bad"}, "storage", "invalid format - storage ID '9bad' contains illegal characters\n"),
    ({"format": "qcow3"}, "format", "value 'qcow3' does not have a value in the enumeration 'raw, qcow2, vmdk'"),
    ({"node": "bad_node"}, "node", "invalid format - value does not look like a valid node name\n"),
])
def test_clone_formats(params, key, message):
    base = {"node": "pve", "vmid": "9004", "newid": "123"}
    assert errors(CLONE, base | params) == {key: message}


@pytest.mark.parametrize("key, value, message", [
    ("sshkeys", "ssh-ed25519 AAAA me@x", "invalid format - invalid urlencoded string: ssh-ed25519 AAAA me@x\n"),
    ("tags", "ok;not ok!", "invalid format - invalid characters in tag\n"),
    ("delete", "net0,9bad", "invalid format - invalid configuration ID '9bad'\n"),
    ("ipconfig0", "ip=dhcpx", "invalid format - format error\nipconfig0.ip: invalid format - value does not look "
                              "like a valid ipv4 network configuration\n\n"),
    ("ipconfig0", "gw=10.0.0.1", "invalid format - format error\nipconfig0.ip: missing property - "
                                 "'ipconfig0.gw' requires this property\n"),
    ("net0", "virtio,bridge=vmbr0,speed=10", "invalid format - invalid key in comma-separated list property: speed\n"),
    ("net0", "virtio=BC:24:11:00:00:0", "invalid format - format error\nnet0.macaddr: invalid format - value does not"
                                        " look like a valid unicast MAC address\n\n"),
    ("scsi0", "local:20,format=qcow3", "invalid format - format error\nscsi0.format: value 'qcow3' does not have a "
                                      "value in the enumeration 'raw, qcow, qed, qcow2, vmdk, cloop'\n"),
    ("ide2", "local:iso/x.iso,media=dvd", "invalid format - format error\nide2.media: value 'dvd' does not have a "
                                          "value in the enumeration 'cdrom, disk'\n"),
    ("boot", "order=scsi0;floppy0", "invalid format - format error\nboot.order: invalid format - invalid boot device "
                                    "'floppy0'\n\n"),
    ("agent", "enabled=maybe", "invalid format - format error\nagent.enabled: type check ('boolean') failed - got "
                               "'maybe'\n"),
    ("serial0", "sock", "value does not match the regex pattern"),
    ("cores", "0", "value must have a minimum value of 1"),
    ("ostype", "win12", "value 'win12' does not have a value in the enumeration 'other, wxp, w2k, w2k3, w2k8, wvista, "
                        "win7, win8, win10, win11, l24, l26, solaris'"),
])
def test_config_property_strings_and_formats(key, value, message):
    assert errors(CONFIG, {"node": "pve", "vmid": "100", key: value}) == {key: message}


def test_indexed_keys_expand_up_to_their_limit():
    ok = {"node": "pve", "vmid": "100", "net31": "virtio,bridge=vmbr0", "scsi30": "local:1", "ipconfig31": "ip=dhcp",
          "ide3": "none,media=cdrom", "virtio15": "local:1", "serial3": "socket"}
    assert errors(CONFIG, ok) is None
    bad = errors(CONFIG, {"node": "pve", "vmid": "100", "net32": "virtio", "scsi31": "local:1", "ide4": "none",
                          "net01": "virtio"})
    assert bad == {k: NOT_IN_SCHEMA for k in ("net32", "scsi31", "ide4", "net01")}


def test_packer_create_parameters_pass():
    params = {"node": "pve", "vmid": "200", "name": "packer-nixos", "memory": "2048", "cores": "2", "sockets": "1",
              "cpu": "x86-64-v2-AES", "ostype": "l26", "scsihw": "virtio-scsi-single", "machine": "q35",
              "scsi0": "local:20,format=qcow2", "ide2": "local:iso/nixos.iso,media=cdrom",
              "net0": "virtio,bridge=vmbr0,firewall=0", "agent": "1", "serial0": "socket",
              "boot": "order=scsi0;ide2", "args": "-no-reboot", "description": "{\"nixgold_manifest\": 1}",
              "tags": "nixos;golden", "bios": "seabios", "onboot": "0", "kvm": "0", "vga": "std"}
    assert errors(CREATE, params) is None


def test_array_parameter_for_agent_exec():
    ep = ("POST", "/nodes/{node}/qemu/{vmid}/agent/exec")
    assert errors(ep, {"node": "pve", "vmid": "100", "command": ["/bin/true", "x"]}) is None
    assert errors(ep, {"node": "pve", "vmid": "100"}) == {"command": "property is missing and it is not optional"}


@given(st.text(min_size=1, max_size=40))
def test_name_validation_matches_the_dns_name_rule(name):
    import re

    # pve-common's pve_verify_dns_name: `$name !~ /^(${namere}\.)*${namere}$/`; Perl's `$` (like
    # Python's) also matches before a final newline, so "0\n" passes there too.
    ok = re.match(r"^(([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)\.)*([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$", name)
    result = errors(CLONE, {"node": "pve", "vmid": "9004", "newid": "123", "name": name})
    assert (result is None) == bool(ok)


def test_upid_roundtrip_and_proxmoxer_decode():
    from proxmoxer.tools import Tasks

    upid = Upid("pve", 0x1234, 0xABCDEF, 0x679A423B, "qmclone", "9004", "nixgold@pve!testbed")
    text = str(upid)
    assert text == "UPID:pve:00001234:00ABCDEF:679A423B:qmclone:9004:nixgold@pve!testbed:"
    assert decode(text) == upid
    parsed = Tasks.decode_upid(text)
    assert parsed["type"] == "qmclone" and parsed["id"] == "9004" and parsed["user"] == "nixgold@pve"
    assert decode("UPID:pve:1:2:3:x:y:z:") is None


def test_cloudinit_files_match_qemu_server():
    conf = {"name": "vm1.example.org", "ciuser": "ops", "sshkeys": "ssh-ed25519%20AAAA%20a%40b%0A",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0", "ipconfig0": "ip=dhcp",
            "net1": "virtio=BC:24:11:AA:BB:CD,bridge=vmbr0", "ciupgrade": "0"}
    dns = cloudinit.DnsDefaults(["10.99.0.1"], ["testbed"])
    files = cloudinit.generate(conf, 101, dns)
    assert files.user == ("#cloud-config\nhostname: vm1\nmanage_etc_hosts: true\nfqdn: vm1.example.org\nuser: ops\n"
                          "ssh_authorized_keys:\n  - ssh-ed25519 AAAA a@b\nchpasswd:\n  expire: False\nusers:\n"
                          "  - default\n")
    assert "name: eth0" in files.network and "mac_address: 'bc:24:11:aa:bb:cc'" in files.network
    assert "eth1" not in files.network  # net1 has no ipconfig1
    assert files.network.startswith("version: 1\nconfig:\n")
    import hashlib

    assert files.meta == f"instance-id: {hashlib.sha1((files.user + files.network).encode()).hexdigest()}\n"
    assert "package_upgrade: true" in cloudinit.userdata({"name": "x"}, 1)
