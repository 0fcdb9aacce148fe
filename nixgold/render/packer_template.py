"""The Packer template (``packer/nixgold.pkr.hcl``) as Python data, emitted with python-hcl2.

Two dialects:

``plugin``
    Packer >= 1.10 with packer-plugin-proxmox >= 1.2: ``source "proxmox-iso"``, API token,
    UEFI (``bios = "ovmf"`` + ``efi_config``), ``boot_iso { }``, ``http_content``.
``bundled``
    Debian/Ubuntu's ``apt install packer`` (Packer 1.6.x) and its built-in ``proxmox``
    builder: password login, SeaBIOS only, top-level ``iso_*``, ``http_directory``. What it
    lacks (serial0, tags) nixgold sets through the Proxmox API after the build.

:func:`packer_template` builds the python-hcl2 data, :func:`render_hcl` turns it into text
that ``packer fmt -check`` accepts. Text never gets assembled by hand: data strings become
HCL literals only through :func:`hcl_string`, and ``${...}`` appears only in references and
function calls written in this module (``var.``, ``local.``, ``path.root``, ``abspath()``,
``file()``, ...).

What shapes the output beyond the schemas:

* Packer runs every string of a builder config except ``boot_command`` through Go's
  text/template at Prepare time (packer-plugin-sdk ``config.Decode`` → ``RenderMap``). A
  ``{{`` in the free-text description would break ``packer validate`` or be rewritten, so
  ``template_description`` replaces ``{{`` with ``{\\u007b`` inside the JSON (same JSON
  value), and the files served with ``http_content`` get ``{{`` → ``{{"{{"}}`` (which
  the Go template renders back to ``{{``).
* python-hcl2 8.1 has two string bugs that :func:`hcl_string` steers around with other
  spellings of the same characters: its lexer only knows ``$${`` / ``%%{`` escapes followed
  by a ``}`` (an unclosed ``${`` is written ``\\u0024{``), and ``dumps`` drops the quote of a
  ``\\"`` right before ``$${`` (written ``\\u0022`` there).
* Packer 1.6.6 rejects ``http_interface`` whenever it is set, and has no UEFI: the bundled
  dialect refuses both with a :class:`~nixgold.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any

import hcl2
from hcl2 import DeserializerOptions, FormatterOptions

from nixgold import __version__
from nixgold.config.validate import check_dialect_fits
from nixgold.errors import RenderError
from nixgold.render.hcl import block, expr, format_hcl, hcl_string, hcl_unquote, hcl_value, object_key
from nixgold.render.inputs import (
    BUILD_KEY_PUB,
    CLEANUP_SCRIPT,
    CONFIGURATION_NIX,
    HTTP_DIR,
    INSTALL_SCRIPT,
    VAR_BUILD_ID,
    VAR_BUILD_PRIVATE_KEY_FILE,
    VAR_BUILD_PUBLIC_KEY,
    VAR_BUILD_VM_NAME,
    VAR_GIT_COMMIT,
    VAR_ISO_SHA256,
    VAR_ISO_URL,
    VAR_PROXMOX_PASSWORD,
    VAR_PROXMOX_TOKEN,
    VAR_PROXMOX_URL,
    VAR_PROXMOX_USERNAME,
    RenderInputs,
    boot_order,
)
from nixgold.render.manifest import NIXGOLD_TAG

PLUGIN_BUILDER = "proxmox-iso"  # packer-plugin-proxmox >= 1.2 (boot_iso, efi_config, tags, ...)

BUNDLED_BUILDER = "proxmox"  # the builder compiled into Packer 1.6.x

SOURCE_NAME = "nixos"

BUILD_NAME = "nixgold"

PLUGIN_SOURCE = "github.com/hashicorp/proxmox"

PLUGIN_VERSION = "~> 1.2"  # boot_iso needs >= 1.2.0


#: Packer variables whose values are secrets: set only through ``PKR_VAR_<name>``, redact in logs.
SENSITIVE_VARIABLES: frozenset[str] = frozenset({VAR_PROXMOX_TOKEN, VAR_PROXMOX_PASSWORD})

_VARIABLE_DESCRIPTIONS = {
    VAR_PROXMOX_URL: "Proxmox API URL, https://<host>:8006/api2/json (PROXMOX_URL)",
    VAR_PROXMOX_USERNAME: "user@realm!tokenid (API token) or user@realm (password login)",
    VAR_PROXMOX_TOKEN: "API token secret; pass it as PKR_VAR_proxmox_token, never in a file",
    VAR_PROXMOX_PASSWORD: "Proxmox password; pass it as PKR_VAR_proxmox_password, never in a file",
    VAR_BUILD_PUBLIC_KEY: "OpenSSH public key the installer authorizes for root during the build",
    VAR_BUILD_PRIVATE_KEY_FILE: "Path of the private key Packer logs in with",
    VAR_BUILD_ID: "Build id recorded in the template's manifest",
    VAR_BUILD_VM_NAME: "Name of the VM while it is built (nixgold puts the build id in it)",
    VAR_GIT_COMMIT: "Commit of the configuration recorded in the manifest",
    VAR_ISO_URL: "Pinned NixOS installer ISO URL",
    VAR_ISO_SHA256: "sha256 of the ISO (64 hex digits)",
}

_VARIABLE_DEFAULTS = {VAR_BUILD_ID: "manual", VAR_GIT_COMMIT: "unknown"}

_BUNDLED_COMMENT = (
    "Packer 1.6's bundled proxmox builder has no serials, tags, machine, task_timeout,",
    "cloud_init_disk_type, UEFI (bios/efi_config) or http_content: nixgold sets serial0",
    "and the tags through the Proxmox API after the build, and serves http/ (including the",
    f"per-build {BUILD_KEY_PUB}) with http_directory.",
)

_BUNDLED_DOWNLOAD_COMMENT = (
    "It has no iso_download_pve either: Packer downloads the ISO itself and uploads it",
    "to iso_storage_pool.",
)

def _path_root(relative: str) -> str:
    """A quoted template ``"${path.root}/<relative>"``; the path part is escaped data."""
    return '"${path.root}/' + hcl_string(relative)[1:-1] + '"'

def _abs_path_root(relative: str) -> str:
    """``"${abspath(path.root)}/<relative>"``, for ``file()``: Packer (1.16.0, hcl2template
    ``Functions(basedir)``) resolves a relative path given to ``file()`` against the template's directory,
    so ``file("${path.root}/../http/x")`` with ``packer build packer/`` would look in
    ``packer/packer/../http``; an absolute path means the same file from any directory."""
    return '"${abspath(path.root)}/' + hcl_string(relative)[1:-1] + '"'

def _go_template_literal(code: str) -> str:
    """An expression whose string survives Packer's Go-template pass unchanged."""
    return f'replace({code}, "{{{{", "{{{{\\"{{{{\\"}}}}")'

# --- variables -------------------------------------------------------------------------------
def packer_variable_names(dialect: str, iso_pinned_by_var: bool) -> list[str]:
    """The Packer variables the template declares, in declaration order.

    ``iso_pinned_by_var`` is True when the ISO is a URL (``iso_url``/``iso_sha256``
    variables), False when it is a volume already on PVE storage.
    """
    if dialect == "plugin":
        names = [VAR_PROXMOX_URL, VAR_PROXMOX_USERNAME, VAR_PROXMOX_TOKEN, VAR_BUILD_PUBLIC_KEY]
    elif dialect == "bundled":
        # No http_content in Packer 1.6: build_key.pub is a file in the per-build http dir.
        names = [VAR_PROXMOX_URL, VAR_PROXMOX_USERNAME, VAR_PROXMOX_PASSWORD]
    else:
        raise ValueError(f"dialect must be 'plugin' or 'bundled', got {dialect!r}")
    names += [VAR_BUILD_PRIVATE_KEY_FILE, VAR_BUILD_ID, VAR_BUILD_VM_NAME, VAR_GIT_COMMIT]
    if iso_pinned_by_var:
        names += [VAR_ISO_URL, VAR_ISO_SHA256]
    return names

def _iso_volume(inputs: RenderInputs) -> str | None:
    return inputs.iso.volume if inputs.iso is not None else inputs.config.iso.volume

def _variable_defaults(inputs: RenderInputs) -> dict[str, str]:
    defaults = dict(_VARIABLE_DEFAULTS)
    # A plain `packer build` names the build VM like this; nixgold passes a name with the build id.
    defaults[VAR_BUILD_VM_NAME] = f"{inputs.config.template.name}-building"
    proxmox = inputs.config.proxmox
    if proxmox.url:
        defaults[VAR_PROXMOX_URL] = proxmox.url
    user = proxmox.token_id if inputs.dialect == "plugin" else proxmox.username
    if user:
        defaults[VAR_PROXMOX_USERNAME] = user
    if inputs.iso is not None and inputs.iso.volume is None:
        # Pinned at render time (iso.url + sha256, or nixgold.lock). Without a pin the
        # variables have no default: nixgold passes PKR_VAR_iso_*, a plain packer user -var.
        if inputs.iso.url:
            defaults[VAR_ISO_URL] = inputs.iso.url
        if inputs.iso.sha256:
            defaults[VAR_ISO_SHA256] = inputs.iso.sha256
    return defaults

def _variables(inputs: RenderInputs, names: list[str]) -> list[dict[str, Any]]:
    defaults = _variable_defaults(inputs)
    blocks = []
    for name in names:
        body: dict[str, Any] = {"type": "string", "description": hcl_string(_VARIABLE_DESCRIPTIONS[name])}
        if name in defaults:
            body["default"] = hcl_string(defaults[name])
        if name in SENSITIVE_VARIABLES:
            body["sensitive"] = True
        blocks.append({hcl_string(name): block(body)})
    return blocks

# --- the template ------------------------------------------------------------------------------
def _manifest(inputs: RenderInputs, volume: str | None) -> dict[str, Any]:
    iso: dict[str, Any]
    if volume is not None:
        iso = {"volume": hcl_string(volume)}
    else:
        iso = {"url": expr(f"var.{VAR_ISO_URL}"), "sha256": expr(f"var.{VAR_ISO_SHA256}")}
    if inputs.iso is not None:
        for key in ("channel", "origin"):
            known = getattr(inputs.iso, key)
            if known is not None:
                iso[key] = hcl_string(known)
    manifest = {object_key(str(k)): hcl_value(v) for k, v in inputs.manifest.items()}
    manifest.update({
        "build_id": expr(f"var.{VAR_BUILD_ID}"),
        "git_commit": expr(f"var.{VAR_GIT_COMMIT}"),
        "build_time": expr("timestamp()"),
        "iso": dict(sorted(iso.items())),
    })
    return {k: manifest[k] for k in sorted(manifest, key=lambda k: k.strip('"'))}

def _disk(inputs: RenderInputs) -> dict[str, Any]:
    vm = inputs.config.vm
    disk: dict[str, Any] = {
        "type": hcl_string(vm.disk_type),
        "disk_size": hcl_string(vm.disk_size),
        "storage_pool": hcl_string(vm.storage),
    }
    if inputs.dialect == "bundled":
        # Required by Packer 1.6. For zfspool|lvm|rbd|cephfs it leaves the format to PVE
        # (raw on those block storages); other types pass format= explicitly.
        disk["storage_pool_type"] = hcl_string("lvm" if vm.disk_format == "raw" else "directory")
    disk["format"] = hcl_string(vm.disk_format)
    if inputs.dialect == "plugin":
        disk["discard"] = True
        if vm.disk_type != "virtio":  # PVE has no ssd flag for virtio-blk
            disk["ssd"] = True
    if vm.scsi_controller == "virtio-scsi-single" and vm.disk_type in ("scsi", "virtio"):
        disk["io_thread"] = True  # both Packer versions reject it with any other controller/bus
    return block(disk)

def _network(inputs: RenderInputs) -> dict[str, Any]:
    vm = inputs.config.vm
    nic: dict[str, Any] = {"model": hcl_string("virtio"), "bridge": hcl_string(vm.bridge)}
    if vm.vlan is not None:
        nic["vlan_tag"] = hcl_string(str(vm.vlan))  # an HCL string in both builders
    nic["firewall"] = False
    return block(nic)

def _iso_settings(inputs: RenderInputs, volume: str | None) -> dict[str, Any]:
    """iso_file, or iso_url + iso_checksum + iso_storage_pool (+ iso_download_pve)."""
    if volume is not None:
        return {"iso_file": hcl_string(volume)}
    iso = inputs.config.iso
    settings: dict[str, Any] = {
        "iso_url": expr(f"var.{VAR_ISO_URL}"),
        "iso_checksum": '"sha256:' + expr(f"var.{VAR_ISO_SHA256}") + '"',
        "iso_storage_pool": hcl_string(inputs.iso.storage if inputs.iso is not None else iso.storage),
    }
    if inputs.dialect == "plugin":
        download = inputs.iso.download_on_pve if inputs.iso is not None else iso.download_on_pve
        settings["iso_download_pve"] = bool(download)
    return settings

def _http(inputs: RenderInputs) -> dict[str, Any]:
    build = inputs.config.build
    http: dict[str, Any] = {}
    if inputs.dialect == "plugin":
        def served(name: str) -> str:
            path = _abs_path_root(f"../{HTTP_DIR}/{name}")
            return expr(_go_template_literal(f"file({path})"))

        http["http_content"] = {
            hcl_string(f"/{INSTALL_SCRIPT}"): served(INSTALL_SCRIPT),
            hcl_string(f"/{CONFIGURATION_NIX}"): served(CONFIGURATION_NIX),
            hcl_string(f"/{BUILD_KEY_PUB}"): expr(f"var.{VAR_BUILD_PUBLIC_KEY}"),
        }
    else:
        http["http_directory"] = _path_root(f"../{HTTP_DIR}")
    if build.http_bind_address is not None:
        http["http_bind_address"] = hcl_string(build.http_bind_address)
    if build.http_interface is not None:
        http["http_interface"] = hcl_string(build.http_interface)
    if build.http_port is not None:
        http["http_port_min"] = build.http_port
        http["http_port_max"] = build.http_port
    return http

def _tags(inputs: RenderInputs) -> str:
    tags = list(dict.fromkeys([*inputs.config.template.tags, NIXGOLD_TAG]))
    return ";".join(tags)

def _source(inputs: RenderInputs) -> dict[str, Any]:
    config = inputs.config
    vm, build, template = config.vm, config.build, config.template
    plugin = inputs.dialect == "plugin"
    volume = _iso_volume(inputs)
    s: dict[str, Any] = {
        "proxmox_url": expr(f"var.{VAR_PROXMOX_URL}"),
        "username": expr(f"var.{VAR_PROXMOX_USERNAME}"),
    }
    if plugin:
        s["token"] = expr(f"var.{VAR_PROXMOX_TOKEN}")
    else:
        s["password"] = expr(f"var.{VAR_PROXMOX_PASSWORD}")
    s["insecure_skip_tls_verify"] = False
    s["node"] = hcl_string(config.proxmox.node)
    s["vm_id"] = template.vmid
    s["vm_name"] = expr(f"var.{VAR_BUILD_VM_NAME}")
    s["template_name"] = hcl_string(template.name)
    # The manifest is JSON; {{ becomes {\u007b (same JSON value) so Packer's Go-template
    # pass over every builder string leaves it alone.
    s["template_description"] = expr('replace(jsonencode(local.manifest), "{{", "{\\\\u007b")')
    if plugin:
        s["tags"] = hcl_string(_tags(inputs))
    if template.pool is not None:
        s["pool"] = hcl_string(template.pool)
    s["os"] = hcl_string("l26")
    if plugin:
        s["machine"] = hcl_string("q35")
        s["bios"] = hcl_string("ovmf" if vm.firmware == "uefi" else "seabios")
        if vm.firmware == "uefi":
            s["efi_config"] = [block({
                "efi_storage_pool": hcl_string(vm.efi_pool),
                "efi_type": hcl_string("4m"),
                "pre_enrolled_keys": False,  # the NixOS ISO is not Microsoft-signed
            })]
    s["cores"] = vm.cores
    s["sockets"] = 1
    s["memory"] = vm.memory
    s["cpu_type"] = hcl_string(vm.cpu_type)
    s["scsi_controller"] = hcl_string(vm.scsi_controller)
    s["disks"] = [_disk(inputs)]
    s["network_adapters"] = [_network(inputs)]
    if plugin:
        s["serials"] = [hcl_string("socket")]
    s["qemu_agent"] = True
    s["cloud_init"] = True
    s["cloud_init_storage_pool"] = hcl_string(vm.cloud_init_pool)
    if plugin:
        s["cloud_init_disk_type"] = hcl_string("scsi")  # the boot ISO sits on ide2
    s["boot"] = hcl_string(boot_order(vm.disk_type))
    iso = _iso_settings(inputs, volume)
    if plugin:
        s["boot_iso"] = [block({"type": hcl_string("ide"), "index": hcl_string("2"), **iso, "unmount": True})]
    else:
        s.update(iso)
        s["unmount_iso"] = True
    s["boot_wait"] = hcl_string(build.boot_wait)
    s["boot_key_interval"] = hcl_string(build.key_interval)
    s["boot_command"] = [hcl_string(step) for step in inputs.boot_command]
    s.update(_http(inputs))
    s["communicator"] = hcl_string("ssh")
    s["ssh_username"] = hcl_string("root")
    s["ssh_private_key_file"] = expr(f"var.{VAR_BUILD_PRIVATE_KEY_FILE}")
    s["ssh_timeout"] = hcl_string(build.ssh_timeout)
    if plugin:
        s["task_timeout"] = hcl_string(build.task_timeout)
    return block(s)

def packer_template(inputs: RenderInputs) -> dict[str, Any]:
    """The whole Packer template as python-hcl2 data (``hcl2.dumps`` input)."""
    check_dialect_fits(inputs.config, inputs.dialect)
    builder = PLUGIN_BUILDER if inputs.dialect == "plugin" else BUNDLED_BUILDER
    volume = _iso_volume(inputs)
    data: dict[str, Any] = {}
    if inputs.dialect == "plugin":
        data["packer"] = [block({"required_plugins": [block({
            "proxmox": {"version": hcl_string(PLUGIN_VERSION), "source": hcl_string(PLUGIN_SOURCE)},
        })]})]
    data["variable"] = _variables(inputs, packer_variable_names(inputs.dialect, volume is None))
    data["locals"] = [block({"manifest": _manifest(inputs, volume)})]
    data["source"] = [{hcl_string(builder): {hcl_string(SOURCE_NAME): _source(inputs)}}]
    data["build"] = [block({
        "name": hcl_string(BUILD_NAME),
        "sources": [hcl_string(f"source.{builder}.{SOURCE_NAME}")],
        "provisioner": [{hcl_string("shell"): block({"script": _path_root(CLEANUP_SCRIPT)})}],
    })]
    return data

def render_hcl(inputs: RenderInputs) -> str:
    """The text of ``packer/nixgold.pkr.hcl``: deterministic and ``packer fmt``-clean."""
    data = packer_template(inputs)
    options = FormatterOptions(vertically_align_attributes=False, vertically_align_object_elements=False)
    text = hcl2.dumps(data, formatter_options=options,
                      deserializer_options=DeserializerOptions(object_elements_trailing_comma=False))
    header = [
        f"Generated by nixgold {__version__} (dialect: {inputs.dialect}); edits are overwritten.",
        "Secrets come only from PKR_VAR_* variables: "
        + ", ".join(sorted(n for n in SENSITIVE_VARIABLES if n in _declared_variables(data))) + ".",
        'replace(..., "{{", ...) keeps Packer\'s Go-template pass (all strings but boot_command)',
        "from changing {{ in the manifest" + (" and the served files." if inputs.dialect == "plugin" else "."),
    ]
    comments = {}
    if inputs.dialect == "bundled":
        lines = list(_BUNDLED_COMMENT)
        if _iso_volume(inputs) is None:
            lines += _BUNDLED_DOWNLOAD_COMMENT
        comments[f"source {hcl_string(BUNDLED_BUILDER)} "] = lines
    text = format_hcl(text, header=header, comments=comments)
    _check_round_trip(data, text)
    return text

def _check_round_trip(data: dict[str, Any], text: str) -> None:
    """Parse the text back: python-hcl2 must read exactly the data we meant to write."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("__comments__", "__inline_comments__")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    try:
        back = strip(hcl2.loads(text))
    except Exception as exc:  # lark raises several unrelated types
        raise RenderError(f"the rendered Packer template does not parse back: {exc}") from exc
    if back != data:
        raise RenderError("the rendered Packer template parses back to different data "
                          "(a python-hcl2 quirk hcl_string does not cover yet)")

def _declared_variables(data: dict[str, Any]) -> list[str]:
    return [hcl_unquote(label) for block in data.get("variable", []) for label in block]
