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
function calls written in this module (``var.``, ``local.``, ``path.root``, ``file()``, ...).

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

import math
import re
import unicodedata
from typing import Any

import hcl2
from hcl2 import DeserializerOptions, FormatterOptions

from . import __version__
from .errors import ConfigError, ConfigIssue, RenderError
from .render_inputs import (
    BUILD_KEY_PUB,
    CLEANUP_SCRIPT,
    CONFIGURATION_NIX,
    HTTP_DIR,
    INSTALL_SCRIPT,
    VAR_BUILD_ID,
    VAR_BUILD_PRIVATE_KEY_FILE,
    VAR_BUILD_PUBLIC_KEY,
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

__all__ = [
    "BUNDLED_BUILDER",
    "PLUGIN_BUILDER",
    "PLUGIN_SOURCE",
    "PLUGIN_VERSION",
    "SENSITIVE_VARIABLES",
    "SOURCE_NAME",
    "hcl_string",
    "format_hcl",
    "hcl_unquote",
    "packer_template",
    "packer_variable_names",
    "render_hcl",
]

PLUGIN_BUILDER = "proxmox-iso"  # packer-plugin-proxmox >= 1.2 (boot_iso, efi_config, tags, ...)
BUNDLED_BUILDER = "proxmox"  # the builder compiled into Packer 1.6.x
SOURCE_NAME = "nixos"
BUILD_NAME = "nixgold"
PLUGIN_SOURCE = "github.com/hashicorp/proxmox"
PLUGIN_VERSION = "~> 1.2"  # boot_iso needs >= 1.2.0
NIXGOLD_TAG = "nixgold"  # every template nixgold builds carries it (how nixgold finds them)

#: Packer variables whose values are secrets: set only through ``PKR_VAR_<name>``, redact in logs.
SENSITIVE_VARIABLES: frozenset[str] = frozenset({VAR_PROXMOX_TOKEN, VAR_PROXMOX_PASSWORD})

_IS_BLOCK = "__is_block__"
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_HCL_KEYWORDS = frozenset({"for", "in", "if", "true", "false", "null"})

_VARIABLE_DESCRIPTIONS = {
    VAR_PROXMOX_URL: "Proxmox API URL, https://<host>:8006/api2/json (PROXMOX_URL)",
    VAR_PROXMOX_USERNAME: "user@realm!tokenid (API token) or user@realm (password login)",
    VAR_PROXMOX_TOKEN: "API token secret; pass it as PKR_VAR_proxmox_token, never in a file",
    VAR_PROXMOX_PASSWORD: "Proxmox password; pass it as PKR_VAR_proxmox_password, never in a file",
    VAR_BUILD_PUBLIC_KEY: "OpenSSH public key the installer authorizes for root during the build",
    VAR_BUILD_PRIVATE_KEY_FILE: "Path of the private key Packer logs in with",
    VAR_BUILD_ID: "Build id recorded in the template's manifest",
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


# --- HCL string literals -----------------------------------------------------------------
def hcl_string(value: str) -> str:
    """``value`` as one complete, quoted HCL string literal (the only place data is escaped).

    Escapes ``\\``, ``"``, newline, CR, tab (and other control characters as ``\\uXXXX``);
    ``${`` becomes ``$${`` and ``%{`` becomes ``%%{`` so HCL takes them literally. Two
    spellings work around python-hcl2 (the value in HCL is the same): ``\\u0024{`` /
    ``\\u0025{`` when no ``}`` follows (its lexer needs one after ``$${``), and ``\\u0022``
    for a ``"`` right before ``$${`` (its ``dumps`` would drop the quote).
    """
    if not isinstance(value, str):
        raise TypeError(f"hcl_string takes a str, got {type(value).__name__}")
    out = ['"']
    n = len(value)
    i = 0
    while i < n:
        c = value[i]
        if c in "$%" and i + 1 < n and value[i + 1] == "{":
            if "}" in value[i + 2:]:
                if c == "$" and out[-1] == '\\"':
                    # python-hcl2's dumps drops the quote of a \" right before $${ (it strips
                    # '"' from the end of every literal piece); \u0022 is the same character
                    out[-1] = "\\u0022"
                out.append(c + c + "{")
            else:
                out.append(f"\\u{ord(c):04x}{{")
            i += 2
            continue
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError(f"lone surrogate U+{ord(c):04X} at index {i} cannot be written as UTF-8")
        elif unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
        i += 1
    out.append('"')
    return "".join(out)


_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def hcl_unquote(literal: str) -> str:
    """The value of a quoted HCL string literal without interpolations (inverse of :func:`hcl_string`).

    Accepts every literal HCL itself accepts: ``\\n \\r \\t \\" \\\\ \\uXXXX \\UXXXXXXXX``,
    ``$${`` and ``%%{``. A ``${`` / ``%{`` template sequence raises ValueError: it is an
    expression, not a value.
    """
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError(f"not a quoted HCL string: {literal[:40]!r}")
    body = literal[1:-1]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("dangling backslash at the end of the string")
            e = body[i + 1]
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
                i += 2
                continue
            width = {"u": 4, "U": 8}.get(e)
            digits = body[i + 2:i + 2 + width] if width else ""
            if not width or len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"invalid escape sequence {body[i:i + 2 + (width or 0)]!r} at index {i}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
            continue
        if c in "$%":
            if body.startswith(c + c + "{", i):
                out.append(c + "{")
                i += 3
                continue
            if body.startswith(c + "{", i):
                raise ValueError(f"template sequence {c}{{ at index {i}: an expression, not a literal")
        if c == '"' or c == "\n":
            raise ValueError(f"unescaped {c!r} at index {i}")
        out.append(c)
        i += 1
    return "".join(out)


# --- building blocks for python-hcl2 data ------------------------------------------------------
def _expr(code: str) -> str:
    """An HCL expression we write ourselves (a reference or function call)."""
    return "${" + code + "}"


def _path_root(relative: str) -> str:
    """A quoted template ``"${path.root}/<relative>"``; the path part is escaped data."""
    return '"${path.root}/' + hcl_string(relative)[1:-1] + '"'


def _block(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, _IS_BLOCK: True}


def _object_key(key: str) -> str:
    if _IDENT_RE.match(key) and key not in _HCL_KEYWORDS:
        return key
    return hcl_string(key)


def _hcl_value(value: Any) -> Any:
    """Plain JSON-like data as python-hcl2 data: every string escaped with :func:`hcl_string`."""
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"cannot write the non-finite number {value!r} in HCL")
        return value
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, (list, tuple)):
        return [_hcl_value(v) for v in value]
    if isinstance(value, dict):
        return {_object_key(str(k)): _hcl_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    raise RenderError(f"cannot write {type(value).__name__} value {value!r} in HCL")


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
    names += [VAR_BUILD_PRIVATE_KEY_FILE, VAR_BUILD_ID, VAR_GIT_COMMIT]
    if iso_pinned_by_var:
        names += [VAR_ISO_URL, VAR_ISO_SHA256]
    return names


def _iso_volume(inputs: RenderInputs) -> str | None:
    return inputs.iso.volume if inputs.iso is not None else inputs.config.iso.volume


def _variable_defaults(inputs: RenderInputs) -> dict[str, str]:
    defaults = dict(_VARIABLE_DEFAULTS)
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
        blocks.append({hcl_string(name): _block(body)})
    return blocks


# --- the template ------------------------------------------------------------------------------
def _manifest(inputs: RenderInputs, volume: str | None) -> dict[str, Any]:
    iso: dict[str, Any]
    if volume is not None:
        iso = {"volume": hcl_string(volume)}
    else:
        iso = {"url": _expr(f"var.{VAR_ISO_URL}"), "sha256": _expr(f"var.{VAR_ISO_SHA256}")}
    if inputs.iso is not None:
        for key in ("channel", "origin"):
            known = getattr(inputs.iso, key)
            if known is not None:
                iso[key] = hcl_string(known)
    manifest = {_object_key(str(k)): _hcl_value(v) for k, v in inputs.manifest.items()}
    manifest.update({
        "build_id": _expr(f"var.{VAR_BUILD_ID}"),
        "git_commit": _expr(f"var.{VAR_GIT_COMMIT}"),
        "build_time": _expr("timestamp()"),
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
    return _block(disk)


def _network(inputs: RenderInputs) -> dict[str, Any]:
    vm = inputs.config.vm
    nic: dict[str, Any] = {"model": hcl_string("virtio"), "bridge": hcl_string(vm.bridge)}
    if vm.vlan is not None:
        nic["vlan_tag"] = hcl_string(str(vm.vlan))  # an HCL string in both builders
    nic["firewall"] = False
    return _block(nic)


def _iso_settings(inputs: RenderInputs, volume: str | None) -> dict[str, Any]:
    """iso_file, or iso_url + iso_checksum + iso_storage_pool (+ iso_download_pve)."""
    if volume is not None:
        return {"iso_file": hcl_string(volume)}
    iso = inputs.config.iso
    settings: dict[str, Any] = {
        "iso_url": _expr(f"var.{VAR_ISO_URL}"),
        "iso_checksum": '"sha256:' + _expr(f"var.{VAR_ISO_SHA256}") + '"',
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
            path = _path_root(f"../{HTTP_DIR}/{name}")
            return _expr(_go_template_literal(f"file({path})"))

        http["http_content"] = {
            hcl_string(f"/{INSTALL_SCRIPT}"): served(INSTALL_SCRIPT),
            hcl_string(f"/{CONFIGURATION_NIX}"): served(CONFIGURATION_NIX),
            hcl_string(f"/{BUILD_KEY_PUB}"): _expr(f"var.{VAR_BUILD_PUBLIC_KEY}"),
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
        "proxmox_url": _expr(f"var.{VAR_PROXMOX_URL}"),
        "username": _expr(f"var.{VAR_PROXMOX_USERNAME}"),
    }
    if plugin:
        s["token"] = _expr(f"var.{VAR_PROXMOX_TOKEN}")
    else:
        s["password"] = _expr(f"var.{VAR_PROXMOX_PASSWORD}")
    s["insecure_skip_tls_verify"] = False
    s["node"] = hcl_string(config.proxmox.node)
    s["vm_id"] = template.vmid
    s["vm_name"] = hcl_string(f"{template.name}-building")
    s["template_name"] = hcl_string(template.name)
    # The manifest is JSON; {{ becomes {\u007b (same JSON value) so Packer's Go-template
    # pass over every builder string leaves it alone.
    s["template_description"] = _expr('replace(jsonencode(local.manifest), "{{", "{\\\\u007b")')
    if plugin:
        s["tags"] = hcl_string(_tags(inputs))
    if template.pool is not None:
        s["pool"] = hcl_string(template.pool)
    s["os"] = hcl_string("l26")
    if plugin:
        s["machine"] = hcl_string("q35")
        s["bios"] = hcl_string("ovmf" if vm.firmware == "uefi" else "seabios")
        if vm.firmware == "uefi":
            s["efi_config"] = [_block({
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
        s["boot_iso"] = [_block({"type": hcl_string("ide"), "index": hcl_string("2"), **iso, "unmount": True})]
    else:
        s.update(iso)
        s["unmount_iso"] = True
    s["boot_wait"] = hcl_string(build.boot_wait)
    s["boot_key_interval"] = hcl_string(build.key_interval)
    s["boot_command"] = [hcl_string(step) for step in inputs.boot_command]
    s.update(_http(inputs))
    s["communicator"] = hcl_string("ssh")
    s["ssh_username"] = hcl_string("root")
    s["ssh_private_key_file"] = _expr(f"var.{VAR_BUILD_PRIVATE_KEY_FILE}")
    s["ssh_timeout"] = hcl_string(build.ssh_timeout)
    if plugin:
        s["task_timeout"] = hcl_string(build.task_timeout)
    return _block(s)


def _check_dialect_support(inputs: RenderInputs) -> None:
    if inputs.dialect != "bundled":
        return
    issues = []
    if inputs.config.vm.firmware == "uefi":
        issues.append(ConfigIssue(
            "vm.firmware", "uefi",
            "bios: Packer 1.6's bundled proxmox builder has no UEFI support; install Packer >= 1.10 for UEFI"))
    if inputs.config.build.http_interface is not None:
        # Packer 1.6.6 fails validation whenever http_interface is set ("either http_interface
        # of http_bind_address can be specified"), even on its own.
        issues.append(ConfigIssue(
            "build.http_interface", inputs.config.build.http_interface,
            "no http_interface with Packer 1.6 (it always rejects it); set build.http_bind_address to "
            "this machine's address as seen from the VM instead"))
    if issues:
        raise ConfigError(issues)


def packer_template(inputs: RenderInputs) -> dict[str, Any]:
    """The whole Packer template as python-hcl2 data (``hcl2.dumps`` input)."""
    _check_dialect_support(inputs)
    builder = PLUGIN_BUILDER if inputs.dialect == "plugin" else BUNDLED_BUILDER
    volume = _iso_volume(inputs)
    data: dict[str, Any] = {}
    if inputs.dialect == "plugin":
        data["packer"] = [_block({"required_plugins": [_block({
            "proxmox": {"version": hcl_string(PLUGIN_VERSION), "source": hcl_string(PLUGIN_SOURCE)},
        })]})]
    data["variable"] = _variables(inputs, packer_variable_names(inputs.dialect, volume is None))
    data["locals"] = [_block({"manifest": _manifest(inputs, volume)})]
    data["source"] = [{hcl_string(builder): {hcl_string(SOURCE_NAME): _source(inputs)}}]
    data["build"] = [_block({
        "name": hcl_string(BUILD_NAME),
        "sources": [hcl_string(f"source.{builder}.{SOURCE_NAME}")],
        "provisioner": [{hcl_string("shell"): _block({"script": _path_root(CLEANUP_SCRIPT)})}],
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


# --- formatting: what `packer fmt` (hclwrite) would do to python-hcl2's output ------------------
def format_hcl(text: str, *, header: list[str] | tuple[str, ...] = (),
               comments: dict[str, list[str]] | None = None) -> str:
    """Normalize python-hcl2 output to ``packer fmt`` (hclwrite) style, in pure Python.

    * trailing whitespace goes, blank lines collapse to one (none after ``{``, before ``}``
      or at the ends);
    * ``=`` of consecutive one-line attributes line up one column after the longest name,
      as hclwrite does: a blank line, a comment, or a line that opens a multi-line value
      (``x = [``) ends the run, and such an opening line keeps a single space;
    * ``# comment`` lines go at the top (``header``) and before top-level lines starting
      with a key of ``comments``.
    """
    lines: list[str] = [f"# {h}".rstrip() for h in header]
    if header:
        lines.append("")
    for raw in text.split("\n"):
        line = raw.rstrip()
        for prefix, block_comments in (comments or {}).items():
            if line.startswith(prefix):
                if lines and lines[-1]:
                    lines.append("")
                lines.extend(f"# {c}".rstrip() for c in block_comments)
        if not line:
            if not lines or not lines[-1] or lines[-1].endswith(("{", "[", "(")):
                continue
        elif line.strip() in ("}", "},", "]", "],", ")") and lines and not lines[-1]:
            lines.pop()
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(_align(lines)) + "\n"


def _align(lines: list[str]) -> list[str]:
    out: list[str] = []
    run: list[tuple[str, str]] = []

    def flush() -> None:
        if run:
            width = max(len(lead) for lead, _ in run)
            out.extend(f"{lead}{' ' * (width - len(lead))} = {rest}" for lead, rest in run)
            run.clear()

    for line in lines:
        split = _split_assignment(line)
        if split is None:
            flush()
            out.append(line)
            continue
        lead, rest, balanced = split
        if balanced:
            run.append((lead, rest))
        else:
            flush()
            out.append(f"{lead} = {rest}")
    flush()
    return out


def _split_assignment(line: str) -> tuple[str, str, bool] | None:
    """(name part, value part, value closes on this line) for ``name = value`` lines, else None.

    Scans HCL tokens just enough to skip ``=`` and brackets inside quoted strings (with
    their escapes and ``${ }`` interpolations). Strings never span lines in our output.
    """
    stripped = line.lstrip()
    if not stripped or stripped.startswith(("#", "//")):
        return None
    stack: list[str] = ["code"]  # "code" | "string" | "interp" (${ }) | "brace" ({ inside ${ })
    depth = 0  # bracket balance after the '=' (top-level code only)
    eq = -1
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        mode = stack[-1]
        if mode == "string":
            if c == "\\":
                i += 2
                continue
            if c == '"':
                stack.pop()
            elif c in "$%" and line.startswith(c + c + "{", i):
                i += 3
                continue
            elif c in "$%" and line.startswith(c + "{", i):
                stack.append("interp")
                i += 2
                continue
            i += 1
            continue
        top = len(stack) == 1
        if c == '"':
            stack.append("string")
        elif c == "#" and top:
            break  # a trailing comment
        elif c == "{" and not top:
            stack.append("brace")
        elif c == "}" and not top:
            stack.pop()  # closes a brace, or the ${ } interpolation itself
        elif c in "{[(" and top and eq >= 0:
            depth += 1
        elif c in "}])" and top and eq >= 0:
            depth -= 1
        elif c == "=" and top and eq < 0:
            prev = line[i - 1] if i else ""
            nxt = line[i + 1] if i + 1 < n else ""
            if prev not in ("=", "!", "<", ">") and nxt not in ("=", ">") and line[:i].strip():
                eq = i
        i += 1
    if eq < 0:
        return None
    return line[:eq].rstrip(), line[eq + 1:].lstrip(), depth == 0
