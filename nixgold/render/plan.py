"""The dry-run plan: what a build would create and where, computed offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nixgold.bootcmd.stats import Stats, stats
from nixgold.config.credentials import Credentials
from nixgold.config.model import Config
from nixgold.render.inputs import RenderInputs, disk_bus_key
from nixgold.units import duration_seconds


@dataclass(frozen=True)
class Plan:
    config: Config
    credentials: Credentials
    inputs: RenderInputs
    dialect_reason: str
    typing: Stats
    files: tuple[tuple[Path, int], ...]  # path, size in bytes
    warnings: tuple[str, ...] = field(default_factory=tuple)


def make_plan(config: Config, credentials: Credentials, inputs: RenderInputs, dialect_reason: str,
              files: list[Path], warnings: list[str] | None = None) -> Plan:
    warnings = list(warnings or [])
    if inputs.iso is None:
        warnings.append(f"the ISO is not pinned: run `invoke lock` (channel {config.channel}) or set iso.volume "
                        "before building")
    if not credentials.url:
        warnings.append("PROXMOX_URL is not set (needed to build)")
    if inputs.dialect == "plugin" and not (credentials.token_id and credentials.token_secret):
        warnings.append("PROXMOX_TOKEN_ID / PROXMOX_TOKEN_SECRET are not set (needed to build)")
    if inputs.dialect == "bundled" and not (credentials.username and credentials.password):
        warnings.append("PROXMOX_USERNAME / PROXMOX_PASSWORD are not set (Packer 1.6 logs in with a password)")
    typing = stats(list(inputs.boot_command), duration_seconds(config.build.key_interval))
    return Plan(config=config, credentials=credentials, inputs=inputs, dialect_reason=dialect_reason,
                typing=typing, files=tuple((p, p.stat().st_size) for p in files), warnings=tuple(warnings))


def format_plan(plan: Plan, cwd: Path | None = None) -> str:
    c = plan.config
    creds = plan.credentials
    cwd = cwd or Path.cwd()
    vm = c.vm
    tags = ";".join(sorted({*c.template.tags, "nixgold"}))
    auth = (f"token {creds.token_id or '(PROXMOX_TOKEN_ID not set)'}" if plan.inputs.dialect == "plugin"
            else f"password login as {creds.username or '(PROXMOX_USERNAME not set)'}")
    if vm.firmware == "uefi":
        firmware = f"uefi: OVMF, EFI vars disk on {vm.efi_pool}, q35, systemd-boot, Secure Boot keys not enrolled"
    else:
        firmware = "bios: SeaBIOS, GRUB" + (", q35" if plan.inputs.dialect == "plugin" else "")
    nic = f"virtio NIC on {vm.bridge}" + (f" VLAN {vm.vlan}" if vm.vlan else "")
    iso = plan.inputs.iso.describe() if plan.inputs.iso else f"NOT PINNED (channel {c.channel}): run `invoke lock`"
    t = plan.typing
    lines = [
        "nixgold plan (dry run: nothing contacted, nothing changed on the cluster)",
        f"  config    {c.source or '(defaults)'} (sha256 {c.config_hash()[:12]})",
        f"  proxmox   node {c.proxmox.node} at {creds.url or '(PROXMOX_URL not set)'}, {auth}",
        f"  template  vmid {c.template.vmid} '{c.template.name}', tags {tags}"
        + (f", pool {c.template.pool}" if c.template.pool else ""),
        f"  vm        {vm.cores} cores, {vm.memory} MiB, {vm.disk_size} {vm.disk_type} disk ({vm.disk_format}) "
        f"on {vm.storage}, {nic}",
        f"  firmware  {firmware}",
        f"  drives    boot {disk_bus_key(vm.disk_type)} then ISO on ide2; cloud-init drive on {vm.cloud_init_pool}; "
        "serial0 socket; guest agent on",
        f"  nixos     {c.nixos.release} (system.stateVersion {c.nixos.release}), {c.nixos.locale}, {c.nixos.timezone}, "
        f"keymap {c.nixos.keymap}, {len(c.nixos.packages)} extra packages, {len(c.users)} users, "
        f"root login {c.nixos.permit_root_login}",
        f"  iso       {iso}",
        f"  packer    {plan.inputs.dialect} dialect ({plan.dialect_reason})",
        f"  boot      wait {c.build.boot_wait}, then {t.keystrokes} keys: ~{t.typing_seconds:.1f} s typing at "
        f"{c.build.key_interval}/key + {t.wait_seconds:.0f} s waits (IP:port counted as "
        f"{t.assumed_http_ip}:{t.assumed_http_port})",
        "  files",
    ]
    for path, size in plan.files:
        try:
            shown = path.relative_to(cwd)
        except ValueError:
            shown = path
        lines.append(f"            {shown} ({size} bytes)")
    for warning in plan.warnings:
        lines.append(f"  warning   {warning}")
    return "\n".join(lines)
