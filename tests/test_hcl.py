"""nixgold.render.packer_template: the Packer template as data, checked against the builders' schemas and real Packer.

Schemas (copied into tests/fixtures, see their ``_source``):
* ``proxmox-iso-1.2.4.json``: packer-plugin-proxmox v1.2.4, the plugin dialect's target;
* ``packer-1.6.6-proxmox.json``: what Packer 1.6.6's bundled ``proxmox`` builder accepts,
  probed with real ``packer validate``, the bundled dialect's target.

Real Packer (the installed ``packer``, 1.6.6) checks that the output is ``packer fmt`` clean
(both dialects), that the bundled template validates, and that hostile strings come back from
HCL unchanged (``packer console``). The plugin dialect's variants (``CASES``) pass full
``packer validate`` with Packer 1.16.0 and the real packer-plugin-proxmox 1.2.4 in
tests/test_setup_packer.py; the spec checks here stay as a second opinion.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixgold.render import hcl
from nixgold.render import packer_template as template_module
from nixgold.config.load import parse_config
from nixgold.errors import ConfigError, RenderError
from nixgold.render.packer_template import SENSITIVE_VARIABLES, packer_template, packer_variable_names, render_hcl
from nixgold.render.hcl import format_hcl, hcl_string, hcl_unquote
from nixgold.lock import IsoSource
from nixgold.render.manifest import static_manifest
from nixgold.render.inputs import (
    BUILD_KEY_PUB,
    CLEANUP_SCRIPT,
    CONFIGURATION_NIX,
    HCL_FILE,
    HTTP_DIR,
    INSTALL_SCRIPT,
    PACKER_DIR,
    RenderInputs,
)

FIXTURES = Path(__file__).parent / "fixtures"
PLUGIN_SPEC = json.loads((FIXTURES / "proxmox-iso-1.2.4.json").read_text())
BUNDLED_SPEC = json.loads((FIXTURES / "packer-1.6.6-proxmox.json").read_text())

SHA = "0123456789abcdef" * 4
ISO_URL = "https://releases.nixos.org/nixos/26.05/nixos-26.05.1.abc/nixos-minimal-26.05.1.abc-x86_64-linux.iso"
VOLUME = "local:iso/nixos-minimal-26.05.1.abc-x86_64-linux.iso"
BOOT = ("<enter><wait60s>", "sudo bash -c \"curl -fsS http://{{ .HTTPIP }}:{{ .HTTPPort }}/install.sh | bash\"<enter>")


# --- inputs -----------------------------------------------------------------------------------------
def make_inputs(dialect: str = "plugin", *, firmware: str | None = None, iso_mode: str = "url",
                boot_command: tuple[str, ...] = BOOT, description: str = "",
                manifest: dict[str, Any] | None = None, **sections: dict[str, Any]) -> RenderInputs:
    """RenderInputs from raw TOML-like sections; iso_mode is "volume", "url" (pinned) or "none"."""
    raw: dict[str, Any] = {k: dict(v) for k, v in sections.items()}
    raw.setdefault("vm", {})["firmware"] = firmware or ("uefi" if dialect == "plugin" else "bios")
    raw.setdefault("template", {})["description"] = description
    if iso_mode == "volume":
        raw.setdefault("iso", {})["volume"] = VOLUME
    config = parse_config(raw)
    source = {
        "volume": IsoSource(volume=VOLUME, url=None, sha256=None, storage="local", download_on_pve=False,
                            origin="iso.volume"),
        "url": IsoSource(volume=None, url=ISO_URL, sha256=SHA, storage=config.iso.storage,
                         download_on_pve=config.iso.download_on_pve, origin="nixgold.lock", channel="nixos-26.05"),
        "none": None,
    }[iso_mode]
    return RenderInputs(config, dialect, boot_command,
                        static_manifest(config, dialect) if manifest is None else manifest, source)


EXTRAS: list[dict[str, dict[str, Any]]] = [
    {},
    {"build": {"http_bind_address": "192.168.1.10"}, "vm": {"vlan": 42}, "template": {"pool": "golden"}},
    {"build": {"http_port": 8802},
     "vm": {"disk_type": "virtio", "scsi_controller": "virtio-scsi-pci", "cloud_init_storage": "ci-store"}},
    {"vm": {"disk_type": "sata", "disk_format": "qcow2", "storage": "dir-store", "efi_storage": "efi-store"},
     "iso": {"storage": "isos", "download_on_pve": False}, "proxmox": {"url": "https://pve.lan:8006/api2/json"}},
]
PLUGIN_ONLY_EXTRAS = {"build": {"http_interface": "eth0", "http_port": 9000}}  # Packer 1.6.6 rejects it


ISO_MODES = ("volume", "url", "none")


def _cases() -> dict[str, tuple[str, str, str, int]]:
    """case id -> (dialect, firmware, iso mode, EXTRAS index; -1 for PLUGIN_ONLY_EXTRAS)."""
    combos = [("plugin", fw, iso) for fw in ("uefi", "bios") for iso in ISO_MODES]
    combos += [("bundled", "bios", iso) for iso in ISO_MODES]
    cases = [(d, fw, iso, n % len(EXTRAS)) for n, (d, fw, iso) in enumerate(combos)]  # extras rotate
    cases += [(d, fw, "url", i) for d, fw in (("plugin", "uefi"), ("bundled", "bios")) for i in range(len(EXTRAS))]
    cases.append(("plugin", "uefi", "url", -1))
    return {f"{d}-{fw}-{iso}-{f'x{i}' if i >= 0 else 'iface'}": (d, fw, iso, i)
            for d, fw, iso, i in dict.fromkeys(cases)}


CASES = _cases()


def case_inputs(dialect: str, firmware: str, iso_mode: str, extra: int) -> RenderInputs:
    return make_inputs(dialect, firmware=firmware, iso_mode=iso_mode,
                       **(EXTRAS[extra] if extra >= 0 else PLUGIN_ONLY_EXTRAS))


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[RenderInputs, str]]:
    out = {}
    for case_id, case in CASES.items():
        inputs = case_inputs(*case)
        out[case_id] = (inputs, render_hcl(inputs))
    return out


# --- reading rendered HCL back ---------------------------------------------------------------------
def builder_of(dialect: str) -> str:
    return template_module.PLUGIN_BUILDER if dialect == "plugin" else template_module.BUNDLED_BUILDER


def source_body(data: dict[str, Any], dialect: str) -> dict[str, Any]:
    (labels,) = data["source"]
    assert list(labels) == [hcl_string(builder_of(dialect))]
    (inner,) = labels.values()
    assert list(inner) == [hcl_string("nixos")]
    body = inner[hcl_string("nixos")]
    assert body.get("__is_block__") is True
    return body


def variables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {hcl_unquote(label): body for block in data["variable"] for label, body in block.items()}


def is_block_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__") for v in value)


def literal(value: Any) -> str | None:
    """The value of a quoted literal without interpolations, else None."""
    if isinstance(value, str) and value.startswith('"'):
        try:
            return hcl_unquote(value)
        except ValueError:
            return None
    return None


def variable_default(data: dict[str, Any], value: Any) -> str | None:
    """A literal's value, or for ``${var.x}`` the literal default of variable x (what a plain
    `packer build` uses; nixgold passes a value of the same shape)."""
    if isinstance(value, str) and value.startswith("${var.") and value.endswith("}"):
        body = variables(data).get(value[len("${var."):-1], {})
        return literal(body.get("default"))
    return literal(value)


# --- schema conformance --------------------------------------------------------------------------------
STRING_FUNCTIONS = {"jsonencode", "replace", "file", "timestamp", "format", "join"}


def expression_type(value: str, var_types: dict[str, str]) -> str | None:
    m = re.fullmatch(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}", value)
    if m:
        return var_types.get(m.group(1))
    m = re.match(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\(", value)
    if m and m.group(1) in STRING_FUNCTIONS and value.endswith(")}"):
        return "string"
    return None


def type_problem(value: Any, hcl_type: str, var_types: dict[str, str]) -> str | None:
    if hcl_type == "string":
        if isinstance(value, str) and value.startswith('"') and value.endswith('"'):
            return None  # a quoted string (template) is a string
        if isinstance(value, str) and value.startswith("${") and expression_type(value, var_types) == "string":
            return None
        return f"expected a string, got {value!r}"
    if hcl_type == "number":
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected a number, got {value!r}"
    if hcl_type == "bool":
        return None if isinstance(value, bool) else f"expected a bool, got {value!r}"
    m = re.fullmatch(r"(list|map)\((\w+)\)", hcl_type)
    if m:
        kind, elem = m.groups()
        if kind == "list" and isinstance(value, list) and not is_block_list(value):
            items = value
        elif kind == "map" and isinstance(value, dict) and "__is_block__" not in value:
            bad_keys = [k for k in value if literal(k) is None]
            if bad_keys:
                return f"map keys must be quoted strings: {bad_keys}"
            items = list(value.values())
        else:
            return f"expected {hcl_type} (attribute syntax), got {value!r}"
        for item in items:
            problem = type_problem(item, elem, var_types)
            if problem:
                return f"element: {problem}"
        return None
    raise AssertionError(f"unknown HCL type {hcl_type} in the spec")


def not_accepted_names(spec: dict[str, Any]) -> set[str]:
    if "rejected" in spec:  # the 1.6.6 snapshot
        return set(spec["rejected"]["attributes"]) | set(spec["rejected"]["blocks"])
    names = set()
    for key in spec["not_accepted_examples"]:
        key = key.replace(" at top level", "").replace(" (top level)", "")
        names |= {n.strip() for n in re.split(r"[,/]", key) if n.strip()}
    return names


def nesting(block_spec: dict[str, Any]) -> str:
    return "single" if block_spec["nesting"].startswith("single") else "list"


def body_problems(body: dict[str, Any], attrs: dict[str, Any], blocks: dict[str, Any], path: str,
                  deprecated: set[str], var_types: dict[str, str]) -> list[str]:
    problems = []
    for key, value in body.items():
        if key == "__is_block__":
            continue
        where = f"{path}{key}"
        if where in deprecated:
            problems.append(f"{where} is deprecated")
        if key in blocks:
            if not is_block_list(value):
                problems.append(f"{where} must use block syntax ({key} {{ ... }}), got {value!r}")
                continue
            if nesting(blocks[key]) == "single" and len(value) != 1:
                problems.append(f"{where} is a single block but appears {len(value)} times")
            for block in value:
                problems += body_problems(block, blocks[key]["attributes"], {}, f"{where}.", deprecated, var_types)
        elif key in attrs:
            if is_block_list(value):
                problems.append(f"{where} is an attribute but was written as a block")
                continue
            problem = type_problem(value, attrs[key]["type"], var_types)
            if problem:
                problems.append(f"{where}: {problem}")
            allowed = attrs[key].get("allowed")
            if allowed and literal(value) is not None and literal(value) not in allowed:
                problems.append(f"{where} = {literal(value)!r} is not one of {allowed}")
        else:
            problems.append(f"{where} is not accepted by the builder")
    return problems


def iso_source_problems(iso: dict[str, Any], where: str) -> list[str]:
    problems = []
    sources = [k for k in ("iso_file", "iso_url", "iso_urls") if k in iso]
    if any(k in iso for k in ("cd_files", "cd_content")):
        sources.append("cd_files/cd_content")
    if len(sources) != 1:
        problems.append(f"{where} needs exactly one ISO source, has {sources}")
    if "iso_url" in iso or "iso_urls" in iso:
        for needed in ("iso_checksum", "iso_storage_pool"):
            if needed not in iso:
                problems.append(f"{where} uses iso_url without {needed}")
    if "iso_download_pve" in iso and "iso_url" not in iso:
        problems.append(f"{where}.iso_download_pve needs iso_url")
    checksum = iso.get("iso_checksum")
    if checksum is not None and not re.fullmatch(r'"sha256:(\$\{var\.iso_sha256\}|[0-9a-f]{64})"', checksum):
        problems.append(f"{where}.iso_checksum {checksum} is not sha256:<hash>")
    return problems


def spec_problems(data: dict[str, Any], dialect: str) -> list[str]:
    """Everything in ``data`` that the target builder's schema would reject (empty = conforms)."""
    spec = PLUGIN_SPEC if dialect == "plugin" else BUNDLED_SPEC
    var_types = {name: body["type"] for name, body in variables(data).items()}
    src = source_body(data, dialect)
    deprecated = set(spec.get("deprecated", {}))
    problems = body_problems(src, spec["attributes"], spec["blocks"], "", deprecated, var_types)
    problems += [f"{n} is not accepted (spec)" for n in sorted(not_accepted_names(spec) & set(src))]
    # required fields (enforced by the builders' Prepare())
    required = spec["required"]["always"] + (["token"] if dialect == "plugin" else [])
    problems += [f"required {name} missing" for name in required if name not in src]
    if dialect == "plugin" and not (("token" in src) ^ ("password" in src)):
        problems.append("exactly one of token/password expected")
    if src.get("communicator", '"ssh"') == '"ssh"' and "ssh_username" not in src:
        problems.append("ssh_username missing (communicator ssh)")
    for i, disk in enumerate(src.get("disks", [])):
        needed = ["storage_pool"] + (["storage_pool_type", "format"] if dialect == "bundled" else [])
        problems += [f"disks[{i}].{k} missing" for k in needed if k not in disk]
        if disk.get("io_thread") is True:
            if literal(src.get("scsi_controller")) != "virtio-scsi-single":
                problems.append(f"disks[{i}].io_thread needs scsi_controller virtio-scsi-single")
            if literal(disk.get("type")) not in ("scsi", "virtio"):
                problems.append(f"disks[{i}].io_thread needs a scsi or virtio disk")
        if disk.get("ssd") is True and literal(disk.get("type")) == "virtio":
            problems.append(f"disks[{i}].ssd is not allowed with virtio")
    if not src.get("disks"):
        problems.append("no disks block")
    for i, nic in enumerate(src.get("network_adapters", [])):
        if "bridge" not in nic:
            problems.append(f"network_adapters[{i}].bridge missing")
    if dialect == "plugin":
        if "boot_iso" not in src:
            problems.append("boot_iso block missing")
        else:
            problems += iso_source_problems(src["boot_iso"][0], "boot_iso")
        for efi in src.get("efi_config", []):
            if "efi_storage_pool" not in efi:
                problems.append("efi_config.efi_storage_pool missing")
        if (literal(src.get("bios")) == "ovmf") != ("efi_config" in src):
            problems.append("bios = ovmf and efi_config go together")
        serials = src.get("serials", [])
        item_re = re.compile(spec["attributes"]["serials"]["item_pattern"])
        if len(serials) > spec["attributes"]["serials"]["max_items"] or not all(
                item_re.match(literal(s) or "") for s in serials):
            problems.append(f"serials {serials} break the spec's item rules")
        dns_name = spec["attributes"]["vm_name"]["pattern"]  # template_name: "same DNS-name regex"
        names = {"vm_name": variable_default(data, src.get("vm_name")), "template_name": literal(src.get("template_name"))}
        for key, value in names.items():
            if key in src and not re.fullmatch(dns_name, value or ""):
                problems.append(f"{key} is not a DNS name")
        problems += required_plugins_problems(data)
    else:
        problems += iso_source_problems(src, "top level")
        if "packer" in data:
            problems.append("Packer 1.6 has no required_plugins: no packer {} block in the bundled dialect")
    return problems


def required_plugins_problems(data: dict[str, Any]) -> list[str]:
    example = hcl2.loads(PLUGIN_SPEC["required_plugins_example"]["hcl"])
    want_source = example["packer"][0]["required_plugins"][0]["proxmox"]["source"]
    try:
        (packer_block,) = data["packer"]
        (required,) = packer_block["required_plugins"]
        proxmox = required["proxmox"]
    except (KeyError, ValueError) as exc:
        return [f"packer {{ required_plugins {{ proxmox = {{...}} }} }} missing ({exc!r})"]
    problems = []
    if not is_block_list(packer_block["required_plugins"]):
        problems.append("required_plugins must be a block")
    if not isinstance(proxmox, dict) or "__is_block__" in proxmox:
        problems.append("proxmox = {...} must be an attribute (with =), not a block")
        return problems
    if proxmox.get("source") != want_source:
        problems.append(f"source {proxmox.get('source')} != {want_source}")
    if literal(proxmox.get("version")) != "~> 1.2":
        problems.append(f"version {proxmox.get('version')} must allow >= 1.2.0 (boot_iso), < 2")
    return problems


@pytest.mark.parametrize("case", list(CASES))
def test_rendered_template_conforms_to_the_builder_schema(rendered, case):
    inputs, text = rendered[case]
    data = hcl2.loads(text)
    assert spec_problems(data, inputs.dialect) == []
    # and says what the config asked for
    src = source_body(data, inputs.dialect)
    config = inputs.config
    assert literal(src["node"]) == config.proxmox.node
    assert src["vm_id"] == config.template.vmid
    # the build VM's name is a variable: nixgold passes one with the build id (the ownership proof)
    assert src["vm_name"] == "${var.build_vm_name}"
    assert variable_default(data, src["vm_name"]) == f"{config.template.name}-building"
    assert literal(src["template_name"]) == config.template.name
    assert src["template_description"] == '${replace(jsonencode(local.manifest), "{{", "{\\\\u007b")}'
    assert literal(src["boot"]) == f"order={config.vm.disk_type}0;ide2"
    assert [literal(s) for s in src["boot_command"]] == list(inputs.boot_command)
    assert src["ssh_private_key_file"] == "${var.build_private_key_file}"
    assert src["qemu_agent"] is True and src["cloud_init"] is True
    assert literal(src["cloud_init_storage_pool"]) == config.vm.cloud_init_pool
    disk, = src["disks"]
    assert literal(disk["storage_pool"]) == config.vm.storage and literal(disk["format"]) == config.vm.disk_format
    nic, = src["network_adapters"]
    assert literal(nic.get("vlan_tag", '""')) == ("" if config.vm.vlan is None else str(config.vm.vlan))
    assert literal(src.get("pool", '""')) == (config.template.pool or "")
    assert literal(src.get("http_bind_address", '""')) == (config.build.http_bind_address or "")
    assert literal(src.get("http_interface", '""')) == (config.build.http_interface or "")
    assert src.get("http_port_min") == src.get("http_port_max") == config.build.http_port
    build, = data["build"]
    assert literal(build["name"]) == "nixgold"
    assert [literal(s) for s in build["sources"]] == [f"source.{builder_of(inputs.dialect)}.nixos"]
    shell, = build["provisioner"]
    assert shell[hcl_string("shell")]["script"] == f'"${{path.root}}/{CLEANUP_SCRIPT}"'
    if inputs.dialect == "plugin":
        assert literal(src["tags"]).split(";") == [*config.template.tags, "nixgold"]
        assert (literal(src["bios"]), "efi_config" in src) == (
            ("ovmf", True) if config.vm.firmware == "uefi" else ("seabios", False))
        assert set(src["http_content"]) == {hcl_string(f"/{n}") for n in (INSTALL_SCRIPT, CONFIGURATION_NIX,
                                                                              BUILD_KEY_PUB)}
        assert src["http_content"][hcl_string(f"/{BUILD_KEY_PUB}")] == "${var.build_public_key}"
        # absolute: Packer 1.16 resolves file()'s relative paths against the template directory
        assert f'file("${{abspath(path.root)}}/../{HTTP_DIR}/{INSTALL_SCRIPT}")' in src["http_content"][
            hcl_string(f"/{INSTALL_SCRIPT}")]
        assert literal(src["task_timeout"]) == config.build.task_timeout
    else:
        assert src["http_directory"] == f'"${{path.root}}/../{HTTP_DIR}"'
        assert "serial0" in text and "tags" in text  # the comment saying nixgold sets them via the API


def test_iso_source_per_mode():
    vol = source_body(hcl2.loads(render_hcl(make_inputs(iso_mode="volume"))), "plugin")["boot_iso"][0]
    assert literal(vol["iso_file"]) == VOLUME and "iso_url" not in vol and vol["unmount"] is True
    assert (literal(vol["type"]), literal(vol["index"])) == ("ide", "2")
    url = source_body(hcl2.loads(render_hcl(make_inputs(iso_mode="url"))), "plugin")["boot_iso"][0]
    assert url["iso_url"] == "${var.iso_url}" and url["iso_checksum"] == '"sha256:${var.iso_sha256}"'
    assert literal(url["iso_storage_pool"]) == "local" and url["iso_download_pve"] is True
    bundled = source_body(hcl2.loads(render_hcl(make_inputs("bundled", iso_mode="volume"))), "bundled")
    assert literal(bundled["iso_file"]) == VOLUME and bundled["unmount_iso"] is True


@pytest.mark.parametrize("iso", ["volume", "url", "none"])
@pytest.mark.parametrize("dialect", ["plugin", "bundled"])
def test_variables_and_their_defaults(dialect, iso):
    inputs = make_inputs(dialect, iso_mode=iso)
    data = hcl2.loads(render_hcl(inputs))
    declared = variables(data)
    assert list(declared) == packer_variable_names(dialect, iso != "volume")
    assert all(body["type"] == "string" for body in declared.values())
    defaults = {name: literal(body["default"]) for name, body in declared.items() if "default" in body}
    expected = {"build_id": "manual", "git_commit": "unknown", "build_vm_name": "nixos-golden-building"}
    if iso == "url":
        expected |= {"iso_url": ISO_URL, "iso_sha256": SHA}
    assert defaults == expected  # iso "none": not pinned yet, so no default (PKR_VAR_iso_* / -var)
    for name, body in declared.items():
        assert (body.get("sensitive") is True) == (name in SENSITIVE_VARIABLES)
    manifest_iso = data["locals"][0]["manifest"]["iso"]
    if iso == "volume":
        assert manifest_iso == {"volume": hcl_string(VOLUME), "origin": '"iso.volume"'}
    else:
        assert manifest_iso["url"] == "${var.iso_url}" and manifest_iso["sha256"] == "${var.iso_sha256}"


def test_variable_names_per_dialect():
    common = ["build_private_key_file", "build_id", "build_vm_name", "git_commit"]
    assert packer_variable_names("plugin", False) == [
        "proxmox_url", "proxmox_username", "proxmox_token", "build_public_key", *common]
    assert packer_variable_names("bundled", True) == [
        "proxmox_url", "proxmox_username", "proxmox_password", *common, "iso_url", "iso_sha256"]
    assert SENSITIVE_VARIABLES == {"proxmox_token", "proxmox_password"}
    with pytest.raises(ValueError):
        packer_variable_names("json", False)


def test_connection_defaults_come_from_the_config_not_secrets():
    inputs = make_inputs("plugin", proxmox={"url": "https://pve.lan:8006/api2/json", "token_id": "ng@pve!build"})
    declared = variables(hcl2.loads(render_hcl(inputs)))
    assert literal(declared["proxmox_url"]["default"]) == "https://pve.lan:8006/api2/json"
    assert literal(declared["proxmox_username"]["default"]) == "ng@pve!build"
    assert "default" not in declared["proxmox_token"]


def test_manifest_local_carries_static_and_build_fields():
    inputs = make_inputs(description="golden image")
    manifest = hcl2.loads(render_hcl(inputs))["locals"][0]["manifest"]
    for key, value in inputs.manifest.items():
        assert manifest[key] == (hcl_string(value) if isinstance(value, str) else value)
    assert manifest["build_id"] == "${var.build_id}" and manifest["git_commit"] == "${var.git_commit}"
    assert manifest["build_time"] == "${timestamp()}"
    assert list(manifest) == sorted(manifest)


def test_output_is_deterministic_and_independent_of_manifest_order():
    a = make_inputs()
    b = make_inputs(manifest=dict(reversed(list(a.manifest.items()))))
    assert render_hcl(a) == render_hcl(a) == render_hcl(b)


def test_bundled_dialect_refuses_uefi_and_http_interface():
    with pytest.raises(ConfigError) as err:
        render_hcl(make_inputs("bundled", firmware="uefi"))
    (issue,) = err.value.issues
    assert (issue.key, issue.value) == ("vm.firmware", "uefi")
    assert "Packer >= 1.10" in issue.expected
    with pytest.raises(ConfigError) as err:
        packer_template(make_inputs("bundled", build={"http_interface": "eth0"}))
    (issue,) = err.value.issues
    assert (issue.key, issue.value) == ("build.http_interface", "eth0")
    assert "http_bind_address" in issue.expected


def test_the_schema_check_can_fail():
    """The conformance check finds the mistakes it is meant to find."""
    good = packer_template(make_inputs())
    assert spec_problems(hcl2.loads(hcl2.dumps(good)), "plugin") == []
    src = good["source"][0]['"proxmox-iso"']['"nixos"']
    broken = {
        "iso": [{"iso_file": '"x"', "__is_block__": True}],  # the docs' example block, not in the spec
        "iso_file": '"local:iso/x.iso"',  # deprecated top-level field
        "serials": [{"__is_block__": True}],  # attribute written as a block
        "vm_id": '"9004"',  # number as string
        "bios": '"uefi"',  # not an allowed value
        "efi_config": src["efi_config"] * 2,  # single block twice
        "http_ip": '"1.2.3.4"',  # not accepted
    }
    src.update(broken)
    del src["node"]
    src["disks"][0].pop("storage_pool")
    src["boot_iso"][0].pop("iso_storage_pool")
    src["boot_iso"][0]["iso_file"] = hcl_string(VOLUME)  # a second ISO source
    src["network_adapters"].append({"model": '"virtio"', "__is_block__": True})
    required = good["packer"][0]["required_plugins"][0]
    required["proxmox"] = [{**required["proxmox"], "__is_block__": True}]  # proxmox { } instead of =
    problems = "\n".join(spec_problems(hcl2.loads(hcl2.dumps(good)), "plugin"))
    for expected in ("iso is not accepted", "iso_file is deprecated", "serials is an attribute",
                     "vm_id: expected a number", "'uefi' is not one of", "efi_config is a single block",
                     "http_ip is not accepted", "required node missing", "disks[0].storage_pool missing",
                     "boot_iso needs exactly one ISO source", "iso_url without iso_storage_pool",
                     "network_adapters[1].bridge missing", "must be an attribute"):
        assert expected in problems


# --- hcl_string / hcl_unquote --------------------------------------------------------------------
@pytest.mark.parametrize(("value", "literal_text"), [
    ("${HOME}", '"$${HOME}"'),
    ("echo ${HOME}<enter>", '"echo $${HOME}<enter>"'),
    ("%{ if x }y%{ endif }", '"%%{ if x }y%%{ endif }"'),
    ("$${x}", '"$$${x}"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("C:\\dir\\", '"C:\\\\dir\\\\"'),
    ("a\nb\r\tc", '"a\\nb\\r\\tc"'),
    ("bell\x07 del\x7f", '"bell\\u0007 del\\u007f"'),
    ("line\u2028sep", '"line\\u2028sep"'),
    ("naïve ☃ 𝄞", '"naïve ☃ 𝄞"'),
    ("{{ .HTTPIP }}:{{ .HTTPPort }}", '"{{ .HTTPIP }}:{{ .HTTPPort }}"'),
    ("<enter><wait5>", '"<enter><wait5>"'),
    # no closing brace: python-hcl2 cannot lex "$${" without one, HCL reads \u0024 as "$"
    ("cost: ${", '"cost: \\u0024{"'),
    # python-hcl2's dumps would drop this quote as \"; \u0022 is the same character
    ('say "${HOME}"', '"say \\u0022$${HOME}\\""'),
    ("100%{", '"100\\u0025{"'),
    ("", '""'),
])
def test_hcl_string(value, literal_text):
    assert hcl_string(value) == literal_text
    assert hcl_unquote(literal_text) == value
    assert hcl_unquote(hcl2.loads(f"x = {literal_text}\n")["x"]) == value


def test_hcl_string_rejects_what_cannot_be_written():
    with pytest.raises(ValueError, match="surrogate"):
        hcl_string("a\ud800b")
    with pytest.raises(TypeError):
        hcl_string(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ['"${var.x}"', '"%{ if x }"', 'no quotes', '"a\\q"', '"\\u12"', '"a"b"', '"\\'])
def test_hcl_unquote_rejects_templates_and_bad_escapes(bad):
    with pytest.raises(ValueError):
        hcl_unquote(bad)


def test_hcl_unquote_reads_every_hcl_escape():
    assert hcl_unquote('"\\u00e9\\U0001D11E\\"\\\\$$${%%{$$ %%"') == 'é𝄞"\\$${%{$$ %%'


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_hcl_string_round_trips_through_python_hcl2(value):
    text = hcl_string(value)
    assert hcl_unquote(text) == value
    parsed = hcl2.loads(f"x = {text}\n")["x"]
    assert parsed == text  # python-hcl2 keeps the literal as written
    assert hcl2.dumps({"x": text}) == f"x = {text}\n"


HOSTILE_FRAGMENTS = ['"', "\\", "${", "}", "%{", "$${", "%%{", "$", "%", "{", "{{", "}}", "\n", "\r", "\t",
                     "<enter>", "<wait>", "=", "#", "//", "/*", "[", "]", "EOF", "<<EOF\n", "é", "☃", "𝄞", "\u2028",
                     "\x00", "\x1b", " ", "'", "`", ",", "null", "for", "${x}", "%{ if y }", "$${z}", '"${', '\\"', "}\"", "{{ .HTTPIP }}"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=4)), max_size=12).map("".join)


@settings(max_examples=600, deadline=None)
@given(hostile_text)
def test_hostile_fragments_round_trip_through_python_hcl2(value):
    text = hcl_string(value)
    assert hcl_unquote(text) == value
    dumped = hcl2.dumps({"x": text})
    assert dumped == f"x = {text}\n"
    assert hcl_unquote(hcl2.loads(dumped)["x"]) == value


# --- hostile strings through the whole template ----------------------------------------------------
printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
boot_step = st.lists(st.one_of(st.sampled_from([f for f in HOSTILE_FRAGMENTS if f.isascii() and f.isprintable()]),
                               printable_ascii), min_size=1, max_size=6).map("".join)

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(description=hostile_text, dialect=st.sampled_from(["plugin", "bundled"]))
def test_hostile_description_survives_rendering(description, dialect):
    text = render_hcl(make_inputs(dialect, description=description))
    manifest = hcl2.loads(text)["locals"][0]["manifest"]
    assert hcl_unquote(manifest["note"]) == description
    assert hcl_string(description) in text


@FAST
@given(boot_command=st.lists(boot_step, min_size=1, max_size=4).map(tuple), dialect=st.sampled_from(["plugin", "bundled"]))
def test_arbitrary_boot_command_survives_rendering(boot_command, dialect):
    text = render_hcl(make_inputs(dialect, boot_command=boot_command))
    src = source_body(hcl2.loads(text), dialect)
    assert tuple(hcl_unquote(s) for s in src["boot_command"]) == boot_command


# --- secrets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["plugin", "bundled"])
def test_secrets_from_the_environment_never_reach_the_rendered_files(dialect, monkeypatch, tmp_path):
    """The commands that write rendered files (`invoke render`, `build-template --dry-run`), run with the
    secrets in the environment: the same call loads them (the dry run's plan shows the credentials'
    URL and identity from the environment), and no written file or printed line holds them; the HCL
    only declares the secret variables, sensitive and without a default."""
    from nixgold import commands

    token, password = "tok-5e1c7e7-secret-value", "pa55-w0rd-secret-value"
    env = {"PROXMOX_URL": "https://env-pve.lan:8006/api2/json", "PROXMOX_TOKEN_ID": "ng@pve!build",
           "PROXMOX_TOKEN_SECRET": token, "PROXMOX_USERNAME": "root@pam", "PROXMOX_PASSWORD": password}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path / "no-packer"))  # the plan needs no Packer
    config = tmp_path / "nixgold.toml"
    config.write_text(f"""[build]\ndialect = "{dialect}"\noutput_dir = "{tmp_path / 'out'}"\n
[vm]\nfirmware = "{'uefi' if dialect == 'plugin' else 'bios'}"\n[iso]\nvolume = "{VOLUME}"\n""")
    written = commands.render(str(config), {}, tmp_path / "rendered", dialect)
    plan_text = io.StringIO()
    plan = commands.dry_run(str(config), {}, plan_text)
    assert plan.credentials.secrets == (token, password)
    shown = plan_text.getvalue()
    identity = "token ng@pve!build" if dialect == "plugin" else "password login as root@pam"
    assert "at https://env-pve.lan:8006/api2/json, " + identity in shown  # the environment's credentials were used
    files = [p for p in [*written, *(tmp_path / "out").rglob("*")] if p.is_file()]
    assert any(p.name == HCL_FILE for p in files) and len(files) > 6
    for text in [shown] + [p.read_text(errors="replace") for p in files]:
        assert token not in text and password not in text
    declared = variables(hcl2.loads((tmp_path / "rendered" / PACKER_DIR / HCL_FILE).read_text()))
    secret_var = "proxmox_token" if dialect == "plugin" else "proxmox_password"
    assert declared[secret_var]["sensitive"] is True and "default" not in declared[secret_var]


# --- formatting ------------------------------------------------------------------------------------------
def test_format_hcl_is_idempotent(rendered):
    for _inputs, text in rendered.values():
        assert format_hcl(text) == text


def test_format_hcl_aligns_like_hclwrite():
    text = hcl2.dumps({"b": [{"a": 1, "long_name": '"x = y"', "list": ['"1"'], "c": {"k": 1, "kk": '"="'},
                              "d": True, "__is_block__": True}]})
    assert format_hcl(text) == (
        "b {\n"
        "  a         = 1\n"
        '  long_name = "x = y"\n'
        "  list = [\n"
        '    "1",\n'
        "  ]\n"
        "  c = {\n"
        "    k  = 1,\n"
        '    kk = "=",\n'
        "  }\n"
        "  d = true\n"
        "}\n")


# --- real Packer ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packer() -> str:
    path = shutil.which("packer")
    if path is None:
        pytest.fail("`packer` is not installed: these tests check the output with real Packer "
                    "(Debian: apt install packer, which is Packer 1.6.6)")
    return path


@pytest.fixture(scope="module")
def packer_16(packer) -> str:
    version = subprocess.run([packer, "version"], capture_output=True, text=True).stdout
    if not version.startswith("Packer v1.6."):
        pytest.fail(f"the bundled-dialect checks need Packer 1.6.x (its built-in proxmox builder); found {version!r}")
    return packer


def packer_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKR_VAR_", "PROXMOX_", "PACKER_"))}
    env.update({"CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(tmp / "packer_cache"),
                "PACKER_CONFIG_DIR": str(tmp / "packer_config"), "HOME": str(tmp)})
    return env


def run_packer(packer: str, args: list[str], cwd: Path, env: dict[str, str],
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([packer, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_packer_fmt_accepts_the_output(packer, rendered, tmp_path):
    texts = {case: text for case, (_inputs, text) in rendered.items()}
    # python-hcl2's own layout (aligned across multi-line values, blank lines with spaces) is
    # not fmt-clean; format_hcl is what makes it so
    raw = hcl2.dumps(packer_template(make_inputs()))
    texts["python-hcl2-raw-normalized"] = format_hcl(raw)
    for case, text in texts.items():
        (tmp_path / f"{case}.pkr.hcl").write_text(text, encoding="utf-8")
    result = run_packer(packer, ["fmt", "-check", "-diff", "."], tmp_path, packer_env(tmp_path))
    assert result.returncode == 0, f"packer fmt -check failed:\n{result.stdout}{result.stderr}"
    (tmp_path / "raw.pkr.hcl").write_text(raw, encoding="utf-8")
    result = run_packer(packer, ["fmt", "-check", "raw.pkr.hcl"], tmp_path, packer_env(tmp_path))
    assert result.returncode != 0, "python-hcl2's raw output became fmt-clean: format_hcl may be unnecessary now"


def private_key_file(directory: Path) -> tuple[Path, str]:
    key = Ed25519PrivateKey.generate()
    path = directory / "build_key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return path, public.decode() + " nixgold-build"


def write_tree(root: Path, text: str) -> dict[str, str]:
    """A render root as nixgold lays it out, plus PKR_VAR_* values a build would pass."""
    (root / PACKER_DIR).mkdir(parents=True)
    (root / HTTP_DIR).mkdir()
    (root / PACKER_DIR / HCL_FILE).write_text(text, encoding="utf-8")
    (root / PACKER_DIR / CLEANUP_SCRIPT).write_text("#!/bin/sh\nexit 0\n")
    (root / HTTP_DIR / INSTALL_SCRIPT).write_text("#!/bin/sh\necho install\n")
    (root / HTTP_DIR / CONFIGURATION_NIX).write_text("{ ... }: { }\n")
    key_path, public = private_key_file(root)
    (root / HTTP_DIR / BUILD_KEY_PUB).write_text(public + "\n")
    return {
        "PKR_VAR_proxmox_url": "https://pve.example.test:8006/api2/json",
        "PKR_VAR_proxmox_username": "root@pam",
        "PKR_VAR_proxmox_password": "dummy-password-for-validate",
        "PKR_VAR_build_private_key_file": str(key_path),
    }


ISO_VARS = {"PKR_VAR_iso_url": ISO_URL, "PKR_VAR_iso_sha256": SHA}


@pytest.mark.parametrize("case", [k for k, c in CASES.items() if c[0] == "bundled"])
def test_packer_validate_accepts_the_bundled_template(packer_16, rendered, case, tmp_path):
    inputs, text = rendered[case]
    env = packer_env(tmp_path) | write_tree(tmp_path, text)
    if inputs.iso is None:
        result = run_packer(packer_16, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
        assert result.returncode != 0 and 'Unset variable "iso_url"' in result.stdout + result.stderr
        env |= ISO_VARS  # what nixgold passes once the ISO is pinned
    result = run_packer(packer_16, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
    assert result.returncode == 0, f"packer validate failed:\n{result.stdout}{result.stderr}"
    assert "dummy-password-for-validate" not in result.stdout + result.stderr


@pytest.mark.parametrize(("breakage", "message"), [
    ("no storage_pool_type", "disks[0].storage_pool_type must be specified"),
    ("plugin-only tags", 'An argument named "tags" is not expected here'),
    ("io_thread without virtio-scsi-single", "io thread option requires virtio-scsi-single controller"),
])
def test_packer_validate_rejects_a_broken_template(packer_16, breakage, message, tmp_path):
    data = packer_template(make_inputs("bundled"))
    src = data["source"][0]['"proxmox"']['"nixos"']
    if breakage == "no storage_pool_type":
        del src["disks"][0]["storage_pool_type"]
    elif breakage == "plugin-only tags":
        src["tags"] = hcl_string("nixos;nixgold")
    else:
        src["scsi_controller"] = hcl_string("lsi")
        src["disks"][0]["io_thread"] = True
    env = packer_env(tmp_path) | write_tree(tmp_path, format_hcl(hcl2.dumps(data)))
    result = run_packer(packer_16, ["validate", f"{PACKER_DIR}/"], tmp_path, env)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and message in output, output


HOSTILE_SAMPLES = [
    ('say "hi" \\ ${HOME} %{ if x } $${y} %%{z} $$ %% } { "${q}"', ('echo "${HOME}" \\ $${x} %{y} %%{z}<enter>',)),
    ("{{ .Name }} and {{ unbalanced {{{", ("{{ .HTTPIP }}:{{ .HTTPPort }} '{q}' [a] (b) =c #d //e<wait><enter>",)),
    ("line1\nline2\r\n\ttab \x01\x7f \u2028 naïve ☃ 𝄞", ("${", "%{", "$${", "$", "%", "}")),
    ("unclosed ${ and %{", ("a\\b\\\\c\\\"d<enter>", "x = \"y\"; <<EOF")),
    ("", (" ",)),
]


def test_real_packer_agrees_on_hostile_strings(packer_16, tmp_path):
    """fmt, validate and `packer console` (bundled dialect, BIOS) read hostile values back unchanged."""
    fmt_dir = tmp_path / "fmt"
    fmt_dir.mkdir()
    for i, (description, boot_command) in enumerate(HOSTILE_SAMPLES):
        inputs = make_inputs("bundled", description=description, boot_command=boot_command)
        text = render_hcl(inputs)
        (fmt_dir / f"sample{i}.pkr.hcl").write_text(text, encoding="utf-8")
        root = tmp_path / f"sample{i}"
        env = packer_env(root) | write_tree(root, text) | ISO_VARS
        result = run_packer(packer_16, ["validate", f"{PACKER_DIR}/"], root, env)
        assert result.returncode == 0, f"sample {i}: packer validate failed:\n{result.stdout}{result.stderr}"
        # What Packer itself makes of the literals: the description expression exactly as
        # written, and the boot_command literals exactly as they appear in the file.
        data = hcl2.loads(text)
        src = source_body(data, "bundled")
        for lit in src["boot_command"]:
            assert lit in text
        probe = hcl2.dumps({"locals": [{"nixgold_probe": src["boot_command"], "__is_block__": True}]})
        (root / PACKER_DIR / "probe.pkr.hcl").write_text(probe, encoding="utf-8")
        expression = src["template_description"][2:-1]
        result = run_packer(packer_16, ["console", f"{PACKER_DIR}/"], root, env,
                            stdin=f"jsonencode([{expression}, local.nixgold_probe])\n")
        assert result.returncode == 0, result.stdout + result.stderr
        description_json, boot_back = json.loads(result.stdout.strip())
        assert "{{" not in description_json  # nothing left for Packer's Go-template pass
        manifest = json.loads(description_json)
        assert manifest["note"] == description
        assert manifest["template_name"] == inputs.config.template.name
        assert tuple(boot_back) == boot_command
    result = run_packer(packer_16, ["fmt", "-check", "-diff", "."], fmt_dir, packer_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_refuses_output_that_does_not_parse_back(monkeypatch):
    """render_hcl re-reads its own output; text python-hcl2 reads differently is an error."""
    real = hcl.format_hcl
    monkeypatch.setattr(template_module, "format_hcl", lambda text, **kw: real(text, **kw).replace('"pve"', '"pve2"'))
    with pytest.raises(RenderError, match="parses back to different data"):
        render_hcl(make_inputs())
    monkeypatch.setattr(template_module, "format_hcl", lambda text, **kw: real(text, **kw) + "}\n")
    with pytest.raises(RenderError, match="does not parse back"):
        render_hcl(make_inputs())
