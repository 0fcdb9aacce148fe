"""Everything checked before a 20-minute build: Packer, the plugin, and the cluster.

:func:`run_preflight` collects every problem it can find and raises one
:class:`~nixgold.errors.PreflightError` (exit 3) listing them all. Checks:

* **packer**: present, a supported version, the configured dialect fits it; for the plugin dialect
  the proxmox plugin is installed (``packer plugins installed``), else ``packer init`` runs;
* **Proxmox**: reachable and the credentials work (``GET /version``, which also tells PVE 8 from 9);
* **privileges** of the identity Packer uses (the API token for the plugin dialect, the password
  user for the bundled one) through ``GET /access/permissions?path=...``, every missing one
  NAMED with its path and what needs it (see :func:`required_privileges`);
* node, storages (with the right content type), bridge exist; the ISO volume is in the ISO
  storage's content (or, for a URL, the storage can receive it);
* the target vmid is free, or holds a nixgold template (recognised by its manifest) and
  ``--replace`` was given: that template is DESTROYED before the build (see :class:`VmidState`).

Staged promotion (build to a staging vmid, verify, then swap) belongs to the nightly refresh,
not to ``build-template``.
"""

from __future__ import annotations

from nixgold.proxmox.vms import owner_of

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nixgold.config.model import Config
from nixgold.config.credentials import Credentials
from nixgold.packer.dialect import PackerInfo, choose_dialect, detect_packer
from nixgold.errors import ConfigError, ConfigIssue, PreflightError, ProxmoxError
from nixgold.render.manifest import Manifest, ManifestError, parse_manifest
from nixgold.proxmox.client import ProxmoxClient

PLUGIN_NAME = "github.com/hashicorp/proxmox"

VM_CONFIG_PRIVS = ("VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
                   "VM.Config.Options", "VM.Config.HWType", "VM.Config.Cloudinit", "VM.Config.CDROM")


@dataclass(frozen=True)
class Need:
    """Privileges on one ACL path, and why the build needs them.

    ``alternatives``: other (path, privileges) that satisfy the same need (PVE's ``or`` checks).
    """

    path: str
    privs: tuple[str, ...]
    why: str
    alternatives: tuple[tuple[str, tuple[str, ...]], ...] = ()


def pve_major(version: dict[str, Any]) -> int:
    m = re.match(r"(\d+)", str(version.get("release") or version.get("version") or ""))
    return int(m.group(1)) if m else 0


def required_privileges(config: Config, dialect: str, pve_major_version: int, *, iso_volume: str | None,
                        iso_download_on_pve: bool) -> list[Need]:
    """What the build's identity needs, per path. Sources (PVE 9.1 API schema ``permissions`` and
    qemu-server's ``create_vm``/``update_vm`` checks, see ``tests/fixtures/pve-api-schema.json``):

    * ``/vms/<vmid>``: ``VM.Allocate`` (``POST /nodes/{node}/qemu`` create, ``POST .../template``,
      ``DELETE`` on failure or ``--replace``), ``VM.Config.*`` (create_vm checks each option group:
      disks, cores, memory, net, options, hardware such as serial0/scsihw, the cloud-init drive,
      the ISO cdrom; ``PUT .../config`` for name/description/tags/ISO unmount), ``VM.PowerMgmt``
      (start, shutdown, stop), ``VM.Console`` (``PUT .../sendkey``, every boot_command key),
      ``VM.Audit`` (config, status, ``cluster/resources``), and for Packer's SSH address from the
      guest agent (``agent/network-get-interfaces``) ``VM.GuestAgent.Audit`` on PVE >= 9 or
      ``VM.Monitor`` on PVE 8 (PVE 9 dropped VM.Monitor);
    * ``/storage/<vm.storage>`` (and the cloud-init / EFI storages): ``Datastore.AllocateSpace``
      (new disks), ``Datastore.Audit``;
    * ISO: a volume needs ``Datastore.Audit`` (or AllocateSpace) on its storage (PVE's
      check_volume_access); a URL needs ``Datastore.AllocateTemplate`` there (``download-url``:
      plus ``Sys.Audit``+``Sys.Modify`` on ``/`` or ``Sys.AccessNetwork`` on the node; Packer 1.6
      uploads instead: ``upload``);
    * ``/sdn/zones/localnetwork/<bridge>[/<vlan>]``: ``SDN.Use`` (PVE >= 8 checks bridge access);
    * ``/pool/<pool>``: ``Pool.Allocate`` when ``template.pool`` is set.
    """
    vm = f"/vms/{config.template.vmid}"
    agent_priv = "VM.GuestAgent.Audit" if pve_major_version >= 9 or pve_major_version == 0 else "VM.Monitor"
    needs = [
        Need(vm, ("VM.Allocate",), "create the VM, convert it to a template, destroy it on failure"),
        Need(vm, VM_CONFIG_PRIVS, "create_vm/update_vm: disks, CPU, memory, NIC, options, serial/SCSI hardware, "
                                  "cloud-init drive, ISO cdrom"),
        Need(vm, ("VM.PowerMgmt",), "start, shut down and stop the VM"),
        Need(vm, ("VM.Console",), "type the boot_command (PUT .../sendkey, one call per key)"),
        Need(vm, ("VM.Audit",), "read the VM's config and status"),
        Need(vm, (agent_priv,), "read the VM's address from the guest agent (agent/network-get-interfaces)"
                                + (" - PVE 9 replaced VM.Monitor" if agent_priv == "VM.GuestAgent.Audit" else "")),
    ]
    storages = {config.vm.storage: "the boot disk"}
    storages.setdefault(config.vm.cloud_init_pool, "the cloud-init drive")
    if dialect == "plugin" and config.vm.firmware == "uefi":
        storages.setdefault(config.vm.efi_pool, "the EFI vars disk")
    for sid, what in storages.items():
        needs.append(Need(f"/storage/{sid}", ("Datastore.AllocateSpace", "Datastore.Audit"), f"allocate {what}"))
    if iso_volume is not None:
        sid = iso_volume.split(":", 1)[0]
        needs.append(Need(f"/storage/{sid}", ("Datastore.Audit",), f"attach the ISO {iso_volume}",
                          alternatives=((f"/storage/{sid}", ("Datastore.AllocateSpace",)),)))
    else:
        sid = config.iso.storage
        if dialect == "plugin" and iso_download_on_pve:
            needs.append(Need(f"/storage/{sid}", ("Datastore.AllocateTemplate",), "let PVE download the ISO (download-url)"))
            needs.append(Need("/", ("Sys.Audit", "Sys.Modify"), "download-url",
                              alternatives=((f"/nodes/{config.proxmox.node}", ("Sys.AccessNetwork",)),)))
        else:
            needs.append(Need(f"/storage/{sid}", ("Datastore.AllocateTemplate",), "upload the ISO"))
    if pve_major_version >= 8 or pve_major_version == 0:
        path = f"/sdn/zones/localnetwork/{config.vm.bridge}"
        if config.vm.vlan is not None:
            path += f"/{config.vm.vlan}"
        needs.append(Need(path, ("SDN.Use",), f"attach the NIC to bridge {config.vm.bridge}"))
    if config.template.pool is not None:
        needs.append(Need(f"/pool/{config.template.pool}", ("Pool.Allocate",), "create the VM in the pool"))
    return needs


def missing_privileges(needs: list[Need], have: Callable[[str], set[str]]) -> list[tuple[Need, tuple[str, ...]]]:
    """(need, missing privileges) for every need that neither it nor an alternative satisfies."""
    out = []
    for need in needs:
        lacking = tuple(p for p in need.privs if p not in have(need.path))
        if not lacking:
            continue
        if any(all(p in have(path) for p in privs) for path, privs in need.alternatives):
            continue
        out.append((need, lacking))
    return out


def format_missing(missing: list[tuple[Need, tuple[str, ...]]], authid: str) -> str:
    by_path: dict[str, list[str]] = {}
    lines = [f"{authid} lacks privileges the build needs:"]
    for need, lacking in missing:
        alt = "".join(f" (or {', '.join(privs)} on {path})" for path, privs in need.alternatives)
        lines.append(f"  - {', '.join(lacking)} on {need.path}{alt}: {need.why}")
        by_path.setdefault(need.path, []).extend(p for p in lacking if p not in by_path.get(need.path, []))
    kind = "tokens" if "!" in authid else "users"
    lines.append("  grant them, e.g.: pveum role add NixgoldBuild --privs \"<the privileges above>\"; "
                 + "; ".join(f"pveum acl modify {path} --roles NixgoldBuild --{kind} {authid}" for path in by_path))
    if "!" in authid:
        lines.append("  (a privilege-separated token needs them on both the token and its user)")
    return "\n".join(lines)


@dataclass
class VmidState:
    """What is at ``template.vmid`` now: ``free``, or ``replace`` (our template, --replace given)."""

    vmid: int
    status: str  # "free" | "replace"
    existing: dict[str, Any] | None = None  # cluster/resources entry
    manifest: Manifest | None = None


@dataclass
class PreflightResult:
    packer: PackerInfo
    dialect: str
    dialect_reason: str
    pve_version: dict[str, Any] = field(default_factory=dict)
    vmid: VmidState | None = None
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plugin_init: bool = False  # `packer init` ran


def check_packer(config: Config) -> tuple[PackerInfo, str, str]:
    """packer present + version + dialect; PreflightError (or ConfigError for a dialect the config pins)."""
    packer = detect_packer(config.build.packer)
    if packer is None:
        raise PreflightError(
            f"packer not found (build.packer = {config.build.packer!r}): install Packer >= 1.10 from HashiCorp "
            "(plugin dialect, UEFI) or `apt install packer` (Debian/Ubuntu's 1.6, bundled dialect, BIOS only)")
    dialect, reason = choose_dialect(config, packer)
    return packer, dialect, reason


def ensure_plugin(packer_run: Any, template_dir: Path, say: Callable[[str], None]) -> bool:
    """Plugin dialect: is the proxmox plugin installed? If not, `packer init` (True when it ran)."""
    installed = packer_run.plugins_installed()
    if "proxmox" in installed and "hashicorp" in installed:
        return False
    say(f"the proxmox plugin ({PLUGIN_NAME}) is not installed: running `packer init`")
    packer_run.init(template_dir)
    return True


def check_credentials(dialect: str, creds: Credentials) -> None:
    issues = []
    if not creds.url:
        issues.append(ConfigIssue("PROXMOX_URL", None, "the API URL, e.g. https://pve.lan:8006/api2/json"))
    if dialect == "plugin":
        if not creds.token_id:
            issues.append(ConfigIssue("PROXMOX_TOKEN_ID", None, "an API token id user@realm!tokenid (plugin dialect)"))
        if not creds.token_secret:
            issues.append(ConfigIssue("PROXMOX_TOKEN_SECRET", None, "the API token secret (plugin dialect)"))
    else:
        if not creds.username:
            issues.append(ConfigIssue("PROXMOX_USERNAME", None,
                                      "user@realm: Packer 1.6 (bundled dialect) logs in with a password"))
        if not creds.password:
            issues.append(ConfigIssue("PROXMOX_PASSWORD", None,
                                      "the password of PROXMOX_USERNAME (Packer 1.6 has no API tokens)"))
    if issues:
        raise ConfigError(issues, source="environment")


def packer_identity(dialect: str, creds: Credentials) -> Credentials:
    """The credentials Packer will use, for nixgold's own API calls too (same privileges)."""
    if dialect == "plugin":
        return Credentials(url=creds.url, token_id=creds.token_id, token_secret=creds.token_secret,
                           ca_bundle=creds.ca_bundle)
    return Credentials(url=creds.url, username=creds.username, password=creds.password, ca_bundle=creds.ca_bundle)


def classify_vmid(client: ProxmoxClient, config: Config, replace: bool) -> tuple[VmidState | None, str | None]:
    """(state, problem). A problem names what is there and what to do. What nixgold may replace is
    decided by the one ownership rule (:func:`nixgold.proxmox.vms.owner_of`): a template with a
    nixgold build manifest, or a build VM an earlier build left (its name carries that build's id)."""
    vmid = config.template.vmid
    res = client.find_vm(vmid)
    if res is None:
        return VmidState(vmid, "free"), None
    node = str(res.get("node") or config.proxmox.node)
    cfg = client.vm_config(node, vmid)
    name = cfg.get("name") or res.get("name") or "?"
    is_template = int(cfg.get("template") or res.get("template") or 0) == 1
    owner = owner_of(cfg)
    if owner is None or owner.kind != "build":
        return None, (f"vmid {vmid} is taken by {'template' if is_template else 'VM'} {name!r} on {node}, which nixgold "
                      f"did not build (no nixgold build manifest or build id on it): set template.vmid (--vmid) to a "
                      f"free id; nixgold never replaces a VM it did not build")
    try:
        manifest: Manifest | None = parse_manifest(cfg.get("description"))
    except ManifestError:
        manifest = None
    what = (f"nixgold template {name!r} (build {manifest.build_id or '?'}, {manifest.build_time or 'time unknown'})"
            if manifest is not None else f"VM {name!r} left by an earlier failed build {owner.id} (--keep-on-error)")
    if not replace:
        return None, (f"vmid {vmid} holds {what}: rebuilding in place DESTROYS it before the new build starts "
                      f"(if the build then fails, there is no template at {vmid}); pass --replace to accept that, "
                      f"or build to another --vmid. (Staged promotion - build aside, verify, then swap - is the "
                      f"nightly refresh's job.)")
    return VmidState(vmid, "replace", existing={**res, "name": name, "what": what}, manifest=manifest), None


def check_cluster(client: ProxmoxClient, config: Config, dialect: str, *, iso_volume: str | None,
                  iso_download_on_pve: bool, replace: bool, result: PreflightResult, problems: list[str]) -> None:
    node = config.proxmox.node
    version = client.version()
    result.pve_version = version
    major = pve_major(version)
    result.checked.append(f"Proxmox VE {version.get('version', '?')} reachable at {client.url} as {client.authid}")

    # privileges
    needs = required_privileges(config, dialect, major, iso_volume=iso_volume, iso_download_on_pve=iso_download_on_pve)
    cache: dict[str, set[str]] = {}

    def have(path: str) -> set[str]:
        if path not in cache:
            answer = client.call("GET", "access/permissions", {"path": path}, idempotent=True) or {}
            privs: set[str] = set()
            for entry in answer.values() if isinstance(answer, dict) else []:
                if isinstance(entry, dict):
                    privs.update(k for k, v in entry.items() if v not in (0, "0", None))
            cache[path] = privs
        return cache[path]

    missing = missing_privileges(needs, have)
    if missing:
        problems.append(format_missing(missing, client.authid))
    else:
        result.checked.append(f"privileges of {client.authid}: {sum(len(n.privs) for n in needs)} on "
                              f"{len({n.path for n in needs})} paths")

    # node
    nodes = {str(n.get("node")): n for n in client.get("nodes") or []}
    if node not in nodes:
        problems.append(f"node {node!r} (proxmox.node) is not in the cluster; nodes: {', '.join(sorted(nodes)) or 'none'}")
        return
    if nodes[node].get("status") not in (None, "online"):
        problems.append(f"node {node!r} is {nodes[node].get('status')}")
    result.checked.append(f"node {node} online")

    # storages
    storages = {str(s.get("storage")): s for s in client.get(f"nodes/{node}/storage") or []}
    wanted: dict[str, tuple[str, str]] = {config.vm.storage: ("images", "vm.storage")}
    wanted.setdefault(config.vm.cloud_init_pool, ("images", "vm.cloud_init_storage"))
    if dialect == "plugin" and config.vm.firmware == "uefi":
        wanted.setdefault(config.vm.efi_pool, ("images", "vm.efi_storage"))
    iso_sid = iso_volume.split(":", 1)[0] if iso_volume else config.iso.storage
    iso_key = "iso.volume" if iso_volume else "iso.storage"
    for sid, (content, key) in list(wanted.items()) + [(iso_sid, ("iso", iso_key))]:
        entry = storages.get(sid)
        if entry is None:
            problems.append(f"storage {sid!r} ({key}) is not available on node {node} (or {client.authid} cannot see "
                            f"it: Datastore.Audit on /storage/{sid}); storages: {', '.join(sorted(storages)) or 'none'}")
            continue
        contents = set(re.split(r"[,;\s]+", str(entry.get("content") or "")))
        if content not in contents:
            problems.append(f"storage {sid!r} ({key}) does not hold {content!r} content (it has {entry.get('content')}): "
                            f"enable it in Datacenter > Storage, or pick another storage")
        elif int(entry.get("active", 1) or 0) != 1 or int(entry.get("enabled", 1) or 0) != 1:
            problems.append(f"storage {sid!r} ({key}) is not active/enabled on {node}")
    result.checked.append(f"storages {', '.join(sorted({*wanted, iso_sid}))}")

    # bridge
    try:
        bridges = {str(i.get("iface")) for i in client.get(f"nodes/{node}/network", type="any_bridge") or []}
    except ProxmoxError as exc:
        if exc.status != 403:
            raise
        result.warnings.append(f"could not list the bridges of {node} ({exc}); not checking vm.bridge")
    else:
        if config.vm.bridge not in bridges:
            problems.append(f"bridge {config.vm.bridge!r} (vm.bridge) does not exist on {node}; bridges: "
                            f"{', '.join(sorted(bridges)) or 'none'}")
        else:
            result.checked.append(f"bridge {config.vm.bridge}")

    # ISO
    if iso_volume is not None and iso_sid in storages:
        content = client.get(f"nodes/{node}/storage/{iso_sid}/content", content="iso") or []
        volids = {str(v.get("volid")) for v in content}
        if iso_volume not in volids:
            shown = ", ".join(sorted(volids)[:8]) or "none"
            problems.append(f"ISO {iso_volume} (iso.volume) is not in storage {iso_sid} on {node} (ISOs there: {shown}); "
                            f"upload it (Datacenter > Storage > ISO Images) or fix iso.volume")
        else:
            result.checked.append(f"ISO {iso_volume} present")

    # vmid
    state, problem = classify_vmid(client, config, replace)
    if problem:
        problems.append(problem)
    else:
        result.vmid = state
        result.checked.append(f"vmid {config.template.vmid} {'free' if state and state.status == 'free' else 'ours: will be replaced'}")


def run_preflight(config: Config, creds: Credentials, *, iso_volume: str | None, iso_download_on_pve: bool,
                  replace: bool, template_dir: Path | None, packer_runner_factory: Callable[[PackerInfo], Any] | None,
                  client_factory: Callable[[Credentials], ProxmoxClient], say: Callable[[str], None] = lambda s: None,
                  packer: tuple[PackerInfo, str, str] | None = None) -> PreflightResult:
    """All checks; one PreflightError listing every problem (ConfigError for missing credentials)."""
    info, dialect, reason = packer or check_packer(config)
    result = PreflightResult(packer=info, dialect=dialect, dialect_reason=reason)
    result.checked.append(f"Packer {info.version_text} at {info.path}: {dialect} dialect")
    check_credentials(dialect, creds)
    problems: list[str] = []
    if dialect == "plugin" and template_dir is not None and packer_runner_factory is not None:
        try:
            result.plugin_init = ensure_plugin(packer_runner_factory(info), template_dir, say)
            result.checked.append(f"proxmox plugin installed{' (packer init ran)' if result.plugin_init else ''}")
        except PreflightError as exc:
            problems.append(str(exc))
    try:
        client = client_factory(packer_identity(dialect, creds))
        check_cluster(client, config, dialect, iso_volume=iso_volume, iso_download_on_pve=iso_download_on_pve,
                      replace=replace, result=result, problems=problems)
    except ProxmoxError as exc:
        problems.append(f"Proxmox API: {exc}")
    if problems:
        raise PreflightError("preflight failed (nothing was changed on the cluster):\n"
                             + "\n".join(f"- {p}" for p in problems))
    return result
