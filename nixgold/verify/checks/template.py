"""Template pre-checks: pure functions over the template's ``GET /nodes/{node}/qemu/{vmid}/config``
answer and its description. They run before anything is cloned; a failure of a check in
:data:`BLOCKING_TEMPLATE_CHECKS` means cloning would be pointless (verify skips the clone phase).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from nixgold.render.manifest import ManifestError, parse_manifest
from nixgold.verify.checks.model import CheckResult

TARGET = "template"
#: Without these a clone cannot boot into something the suite can reach.
BLOCKING_TEMPLATE_CHECKS: frozenset[str] = frozenset({"template.is-template", "template.agent", "template.cloud-init"})

_DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)\d+$")
_TRUE = {"1", "yes", "on", "true"}

Verdict = tuple[str, str]  # (outcome, reason)
Config = Mapping[str, Any]


def _props(value: Any, default_key: str) -> dict[str, str]:
    """A PVE property string (``1,fstrim_cloned_disks=1`` / ``enabled=1``) as a dict."""
    out: dict[str, str] = {}
    for part in str(value).split(","):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip()] = val.strip()
        elif part.strip():
            out[default_key] = part.strip()
    return out


def _is_cdrom(value: str) -> bool:
    return "media=cdrom" in value.split(",") or value.split(",", 1)[0] in ("cdrom", "none")


def _disks(config: Config) -> dict[str, str]:
    return {k: str(v) for k, v in config.items() if _DISK_KEY.match(k)}


def check_is_template(config: Config, description: str | None) -> Verdict:
    if str(config.get("template", "0")) in ("1", "True"):
        return "passed", ""
    return "failed", "the VM is not a template (template: 1 missing): convert it with `qm template`"


def check_agent(config: Config, description: str | None) -> Verdict:
    if "agent" not in config:
        return "failed", "the QEMU guest agent is not enabled (no agent option; set agent: 1)"
    enabled = _props(config["agent"], "enabled").get("enabled", "0")
    if enabled.lower() in _TRUE:
        return "passed", ""
    return "failed", f"the QEMU guest agent is disabled (agent: {config['agent']}); set agent: 1"


def check_cloud_init(config: Config, description: str | None) -> Verdict:
    drives = [k for k, v in _disks(config).items() if "cloudinit" in v.split(",", 1)[0]]
    if drives:
        return "passed", ""
    return "failed", "no cloud-init drive (a disk like ide2: <storage>:cloudinit): clones get no user, key or network"


def check_serial(config: Config, description: str | None) -> Verdict:
    value = config.get("serial0")
    if value == "socket":
        return "passed", ""
    shown = f"serial0: {value}" if value is not None else "no serial0"
    return "failed", f"{shown}; the template needs serial0: socket for the serial console"


def check_boot_order(config: Config, description: str | None) -> Verdict:
    boot = str(config.get("boot") or "")
    disks = _disks(config)
    m = re.search(r"(?:^|,)order=([^,]*)", boot)
    if not m:
        # Legacy format ('cdn' = disk, cd, net), or unset: PVE boots `bootdisk` first.
        legacy = re.sub(r"(?:^|,)legacy=", "", boot) or "cdn"
        if not legacy.startswith("c"):
            return "failed", f"boot: {boot}: the legacy boot order starts with {legacy[0]!r}, not the disk ('c')"
        bootdisk = str(config.get("bootdisk") or "")
        if bootdisk and bootdisk in disks and not _is_cdrom(disks[bootdisk]):
            return "passed", ""
        if not bootdisk and any(not _is_cdrom(v) for v in disks.values()):
            return "passed", ""
        return "failed", f"no boot order (boot: {boot or 'unset'}) and no usable bootdisk ({bootdisk or 'unset'})"
    order = [d for d in m.group(1).split(";") if d]
    if not order:
        return "failed", "boot: order= is empty"
    first = order[0]
    if first.startswith("net"):
        return "failed", f"boot order starts with the network ({first}), not the disk"
    if first not in disks:
        return "failed", f"boot order starts with {first}, which is not a disk in the config"
    if _is_cdrom(disks[first]) or "cloudinit" in disks[first]:
        return "failed", f"boot order starts with {first}, a CD-ROM ({disks[first]}), not the disk"
    return "passed", ""


def check_efi_disk(config: Config, description: str | None) -> Verdict:
    bios = str(config.get("bios") or "seabios")
    if bios != "ovmf":
        return "skipped", f"bios {bios}: no EFI disk needed"
    if config.get("efidisk0"):
        return "passed", ""
    return "failed", "bios: ovmf without efidisk0: UEFI boot entries are lost at every start"


def check_manifest(config: Config, description: str | None) -> Verdict:
    try:
        parse_manifest(description)
    except ManifestError as exc:
        return "failed", str(exc)
    return "passed", ""


TemplateCheck = Callable[[Config, "str | None"], Verdict]

#: id -> (summary, function), in report order.
TEMPLATE_CHECKS: dict[str, tuple[str, TemplateCheck]] = {
    "template.is-template": ("the VM is a Proxmox template", check_is_template),
    "template.agent": ("the QEMU guest agent is enabled in the VM options", check_agent),
    "template.cloud-init": ("a cloud-init drive is attached", check_cloud_init),
    "template.serial": ("serial0 is a socket (serial console)", check_serial),
    "template.boot-order": ("the boot order starts with the disk", check_boot_order),
    "template.efi-disk": ("UEFI templates have an EFI disk", check_efi_disk),
    "template.manifest": ("the description holds a readable nixgold build manifest", check_manifest),
}


def template_checks(config: dict[str, Any], description: str | None) -> list[CheckResult]:
    """Every template pre-check over the API config (pure: no I/O)."""
    results = []
    for check_id, (summary, fn) in TEMPLATE_CHECKS.items():
        try:
            outcome, reason = fn(config, description)
        except Exception as exc:  # a check must never take the run down
            outcome, reason = "error", f"{type(exc).__name__}: {exc}"
        if outcome == "passed":
            reason = ""
        results.append(CheckResult(check_id, TARGET, outcome, 0.0, " ".join(reason.split()), summary))
    return results
