"""The simulated PVE node: VM configs, storage, tasks, guests.

Operations follow qemu-server's API handlers: checks that PVE does before
forking a worker raise :class:`ApiError` (HTTP 500 etc.), work inside a
worker runs as a :class:`Task` and fails with :class:`TaskError`.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from . import cloudinit
from .auth import AccessControl, Identity
from .config import DEFAULT_CONTENT, SimConfig
from .errors import ApiError, TaskError, die, param_error, perm_error
from .faults import FaultInjector, FiredFaults
from .formats import FormatError, split_list
from .locks import ConfigLocks, lock_timeout_message
from .qga import QgaError, QgaTimeout
from .runtime import QemuInstance, QemuRuntime, memory_mib, ovmf_vars, parse_kv, parse_nic
from .schema import Schema
from .storage import StorageDef, StorageManager, format_size, parse_size
from .tasks import Task, TaskManager
from .vmconfig import (CLOUDINIT_KEYS, FAST_PLUG, NET_RE, UNUSED_RE, VMConf, config_value, is_drive_key,
                       is_flag_set, new_smbios1, parse_boot_order, print_drive, print_net, random_mac)

log = logging.getLogger(__name__)

CPU_OPTS = {"cores", "cpu", "cpulimit", "cpuunits", "numa", "smp", "sockets", "vcpus", "affinity"}
MEMORY_OPTS = {"memory", "balloon", "shares", "allow-ksm"}
HWTYPE_OPTS = {"acpi", "hotplug", "kvm", "machine", "scsihw", "smbios1", "tablet", "vga", "watchdog", "audio0",
               "rng0", "bios", "efidisk0", "tpmstate0", "arch"}
GENERAL_OPTS = {"agent", "autostart", "bios", "description", "keyboard", "localtime", "migrate_downtime",
                "migrate_speed", "name", "onboot", "ostype", "protection", "reboot", "startdate", "startup", "tdf",
                "template", "tags", "vmgenid", "hookscript", "keephugepages", "hugepages"}
DISK_OPTS = {"boot", "bootdisk", "vmstatestorage"}
CI_OPTS = {"cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver", "searchdomain", "sshkeys"}
# parameters of PUT/POST config that are not config keys
UPDATE_CONTROL = {"node", "vmid", "digest", "delete", "revert", "skiplock", "force", "background_delay",
                  "import-working-storage"}
CREATE_CONTROL = {"node", "vmid", "archive", "start", "storage", "pool", "unique", "force", "live-restore",
                  "bwlimit", "import-working-storage", "ha-managed"}
NEW_DISK_RE = re.compile(r"^(?:([a-z][a-z0-9\-_.]*[a-z0-9]):)?(\d+(?:\.\d+)?)$", re.I)
ENCRYPTED_PW_RE = re.compile(r"^\$(?:[156]|2[ay])(\$.+){2}")


def encrypt_pw(password: str) -> str:
    """PVE::Tools::encrypt_pw: SHA-512 crypt (stdlib ``crypt`` until 3.12, else ``openssl passwd -6``)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:  # Python >= 3.13
        import subprocess

        return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
                              text=True, check=True).stdout.strip()
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def unique_tags(value: str) -> str:
    """PVE::GuestHelpers::get_unique_tags with datacenter defaults (lower-case, sorted)."""
    seen: dict[str, None] = {}
    for tag in split_list(value):
        seen.setdefault(tag.lower(), None)
    return ";".join(sorted(seen))


def ssh_keygen_accepts(line: str) -> bool:
    """``ssh-keygen -l -f <file with the line>`` exits 0."""
    with tempfile.NamedTemporaryFile("w", prefix="pvesim-sshkey-", suffix=".pub") as fh:
        fh.write(line + "\n")
        fh.flush()
        return subprocess.run(["ssh-keygen", "-l", "-f", fh.name], capture_output=True).returncode == 0


def validate_ssh_keys(keys: str) -> None:
    """pve-common Tools.pm:1104-1119 validate_ssh_public_keys: every non-blank line (comments
    too) must pass ``ssh-keygen -l``; a failure is a plain ``die`` (HTTP 500), not a 400."""
    for line in keys.split("\n"):
        if re.fullmatch(r"\s*", line):
            continue
        if not ssh_keygen_accepts(line):
            raise die("SSH public key validation error")


class Node:
    def __init__(self, cfg: SimConfig, schema: Schema) -> None:
        self.cfg = cfg
        self.schema = schema
        self.name = cfg.node
        self.state = cfg.state_dir
        self.conf_dir = self.state / "etc/pve/nodes" / self.name / "qemu-server"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        storages = [StorageDef(s["id"], Path(s["path"]), set(s.get("content") or DEFAULT_CONTENT),
                               s.get("type", "dir"), bool(s.get("shared", False))) for s in cfg.storages]
        self.storage = StorageManager(storages)
        self.tasks = TaskManager(self.name, self.state / "tasks")
        self.access = AccessControl(cfg.access)
        self.faults = FaultInjector()
        self.runtime = QemuRuntime(self.state / "run", self.storage, qemu=cfg.qemu_binary, accel=cfg.accel)
        if cfg.dns:
            self.dns = cloudinit.DnsDefaults(list(cfg.dns.get("nameservers", [])), list(cfg.dns.get("search", [])))
        else:
            self.dns = cloudinit.DnsDefaults.from_resolv_conf()
        self.locks = ConfigLocks()
        # PEM CA certificates the node trusts beyond the system's (a PVE admin's
        # update-ca-certificates): what download-url's wget verifies servers against
        self.trusted_cas: list[str] = []
        self._io = threading.RLock()
        self.started = time.time()
        self._create_ep = schema.endpoint("POST", "/nodes/{node}/qemu")
        self._config_types = (schema.endpoint("GET", "/nodes/{node}/qemu/{vmid}/config").returns or {}).get("properties", {})

    # ------------------------------------------------------------------ files
    def conf_path(self, vmid: int) -> Path:
        return self.conf_dir / f"{vmid}.conf"

    def exists(self, vmid: int) -> bool:
        return self.conf_path(vmid).exists()

    def vmids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.conf_dir.glob("*.conf") if p.stem.isdigit())

    def load(self, vmid: int) -> VMConf:
        with self._io:
            path = self.conf_path(vmid)
            if not path.exists():
                raise die(f"Configuration file 'nodes/{self.name}/qemu-server/{vmid}.conf' does not exist")
            return VMConf.parse(vmid, path.read_text())

    def try_load(self, vmid: int) -> VMConf | None:
        try:
            return self.load(vmid)
        except ApiError:
            return None

    def write(self, conf: VMConf) -> None:
        with self._io:
            path = self.conf_path(conf.vmid)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(conf.render())
            os.replace(tmp, path)

    def write_raw(self, vmid: int, text: str) -> None:
        with self._io:
            self.conf_path(vmid).write_text(text)

    def remove(self, vmid: int) -> None:
        with self._io:
            self.conf_path(vmid).unlink(missing_ok=True)

    @staticmethod
    def check_lock(conf: VMConf) -> None:
        if conf.lock:
            raise die(f"VM is locked ({conf.lock})")

    # ----------------------------------------------------------- formatting
    def parse_drive(self, key: str, value: str) -> dict[str, Any]:
        prop = self._create_ep.prop(key)
        if prop is None or not isinstance(prop.get("format"), dict):
            raise param_error({key: "unknown drive"})
        try:
            return self.schema.parse_format(prop["format"], value, key)
        except FormatError as exc:
            raise param_error({key: "invalid format - " + exc.text()}) from None

    def parse_net(self, key: str, value: str) -> dict[str, Any]:
        prop = self._create_ep.prop("net0")
        assert prop is not None
        try:
            return self.schema.parse_format(prop["format"], value, key)
        except FormatError as exc:
            raise param_error({key: "invalid format - " + exc.text()}) from None

    def typed_config(self, values: dict[str, str]) -> dict[str, Any]:
        """String values -> JSON types as qemu-server's parse_vm_config/check_type."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            schema = self.schema.validator.lookup(self._config_types, key) or {}
            typ = schema.get("type")
            if typ == "integer" and re.fullmatch(r"[+-]?\d+", value):
                out[key] = int(value)
            elif typ == "number" and re.fullmatch(r"[+-]?\d+(\.\d+)?", value):
                out[key] = float(value) if "." in value else int(value)
            elif typ == "boolean":
                out[key] = 1 if is_flag_set(value) else 0
            else:
                out[key] = value
        return out

    @staticmethod
    def agent_enabled(values: dict[str, str]) -> bool:
        """qemu-server Agent.pm:75 get_qga_key($conf, 'enabled')."""
        return is_flag_set(parse_kv(values.get("agent", ""), "enabled").get("enabled"))

    # -------------------------------------------------------------- permissions
    def check_vm_perm(self, ident: Identity, vmid: int, privs: list[str], any_: bool = False) -> None:
        """PVE::RPCEnvironment::check_vm_perm on /vms/<vmid>."""
        if ident.authid == "root@pam":
            return
        path = f"/vms/{vmid}"
        have = self.access.permissions(ident.authid, path)
        if any_:
            if not any(p in have for p in privs):
                raise perm_error(f"{path}, {'|'.join(privs)}")
            return
        for priv in privs:
            if priv not in have:
                raise perm_error(f"{path}, {priv}")

    def check_modify_config_perm(self, ident: Identity, vmid: int, keys: list[str]) -> None:
        """qemu-server $check_vm_modify_config_perm."""
        if ident.authid == "root@pam":
            return
        for opt in keys:
            if is_drive_key(opt) or UNUSED_RE.match(opt):
                continue
            if opt in CPU_OPTS:
                self.check_vm_perm(ident, vmid, ["VM.Config.CPU"])
            elif opt in MEMORY_OPTS:
                self.check_vm_perm(ident, vmid, ["VM.Config.Memory"])
            elif opt in HWTYPE_OPTS:
                self.check_vm_perm(ident, vmid, ["VM.Config.HWType"])
            elif opt in GENERAL_OPTS:
                self.check_vm_perm(ident, vmid, ["VM.Config.Options"])
            elif opt in DISK_OPTS:
                self.check_vm_perm(ident, vmid, ["VM.Config.Disk"])
            elif NET_RE.match(opt):
                self.check_vm_perm(ident, vmid, ["VM.Config.Network"])
            elif opt in CI_OPTS or re.fullmatch(r"ipconfig\d+", opt):
                self.check_vm_perm(ident, vmid, ["VM.Config.Cloudinit", "VM.Config.Network"], any_=True)
            elif re.fullmatch(r"serial\d+", opt):
                self.check_vm_perm(ident, vmid, ["VM.Config.HWType"])
            else:
                raise die(f"only root can set '{opt}' config")

    def check_storage_access(self, ident: Identity, vmid: int, key: str, drive: dict[str, Any]) -> None:
        if ident.authid == "root@pam":
            return
        cdrom = drive.get("media") == "cdrom"
        self.check_vm_perm(ident, vmid, ["VM.Config.CDROM" if cdrom else "VM.Config.Disk"])
        file = str(drive.get("file", ""))
        if file in ("", "none", "cdrom") or file.endswith(":cloudinit"):
            return
        m = NEW_DISK_RE.match(file)
        if m and not cdrom:
            storeid = m.group(1)
            if storeid and not self.access.has(ident.authid, f"/storage/{storeid}", ["Datastore.AllocateSpace"]):
                raise perm_error(f"/storage/{storeid}, Datastore.AllocateSpace")
            return
        if file.startswith("/"):
            raise die("Only root can pass arbitrary filesystem paths.")
        storeid = file.split(":", 1)[0]
        if not self.access.has(ident.authid, f"/storage/{storeid}", ["Datastore.AllocateSpace", "Datastore.Audit"], True):
            raise perm_error(f"/storage/{storeid}, Datastore.AllocateSpace|Datastore.Audit")

    # ---------------------------------------------------------------- disks
    def create_disk(self, vmid: int, key: str, value: str, ident: Identity, log_fn: Callable[[str], None],
                    default_storage: str | None = None) -> tuple[str, list[str]]:
        """qemu-server create_disks for one drive: returns (config value, new volids)."""
        drive = self.parse_drive(key, value)
        file = str(drive.get("file", ""))
        created: list[str] = []
        if key == "cdrom":
            drive["media"] = "cdrom"
        if file in ("none", "cdrom"):
            drive["file"] = "none" if file == "none" else "cdrom"
            return print_drive(drive), created
        if re.fullmatch(r"([a-z][a-z0-9\-_.]*[a-z0-9]):cloudinit", file, re.I) or file == "cloudinit":
            storeid = file.split(":", 1)[0] if ":" in file else default_storage
            if not storeid:
                raise die("no storage ID specified (and no default storage)")
            fmt = str(drive.pop("format", "qcow2"))
            volid = self.storage.alloc_cloudinit(storeid, vmid, fmt)
            created.append(volid)
            drive["file"] = volid
            drive["media"] = "cdrom"
            log_fn(f"{key}: successfully created disk '{volid},media=cdrom'")
            return print_drive(drive), created
        m = NEW_DISK_RE.match(file)
        if m and key == "efidisk0" and not drive.get("import-from"):
            storeid = m.group(1) or default_storage
            if not storeid:
                raise die("no storage ID specified (and no default storage)")
            four_m = drive.get("efitype", "2m") == "4m"
            template = ovmf_vars(four_m, bool(drive.get("pre-enrolled-keys")))
            if not template.exists():
                raise die(f"EFI vars default image '{template}' not found")
            volid = self.storage.import_file(template, storeid, vmid, str(drive.pop("format", None) or "raw"))
            created.append(volid)
            drive["file"] = volid
            drive["size"] = format_size(template.stat().st_size)
            log_fn(f"{key}: successfully created disk '{print_drive(drive)}'")
            return print_drive(drive), created
        if m and drive.get("media") != "cdrom":
            storeid = m.group(1) or default_storage
            if not storeid:
                raise die("no storage ID specified (and no default storage)")
            fmt = str(drive.pop("format", None) or "raw")
            source = drive.pop("import-from", None)
            if source:
                if float(m.group(2)) != 0:
                    raise param_error({key: "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>"})
                if str(source).startswith("/"):
                    if ident.authid != "root@pam":
                        raise die("Only root can pass arbitrary filesystem paths.")
                    src = Path(str(source))
                else:
                    src = self.storage.path(str(source))
                volid = self.storage.import_file(src, storeid, vmid, fmt)
            else:
                size = int(float(m.group(2)) * 1024**3)
                volid = self.storage.alloc(storeid, vmid, fmt, size)
            created.append(volid)
            drive["file"] = volid
            drive["size"] = format_size(self.storage.size(volid))
            log_fn(f"{key}: successfully created disk '{print_drive(drive)}'")
            return print_drive(drive), created
        # existing volume or path
        if file.startswith("/"):
            if ident.authid != "root@pam":
                raise die("Only root can pass arbitrary filesystem paths.")
            if not Path(file).exists():
                raise die(f"volume '{file}' does not exist")
            return print_drive(drive), created
        if not self.storage.exists(file):
            raise die(f"volume '{file}' does not exist")
        drive.pop("import-from", None)
        drive.pop("format", None)
        if drive.get("size") is None:
            drive["size"] = format_size(self.storage.size(file))
        return print_drive(drive), created

    def drive_volume(self, value: str) -> str | None:
        file = value.split(",", 1)[0]
        if file.startswith("file="):
            file = file[5:]
        if file in ("none", "cdrom") or file.startswith("/") or ":" not in file:
            return None
        return file

    @staticmethod
    def is_cdrom(value: str) -> bool:
        return "media=cdrom" in value.split(",")

    @staticmethod
    def is_cloudinit_value(value: str) -> bool:
        return re.search(r"vm-\d+-cloudinit", value.split(",", 1)[0]) is not None

    # ------------------------------------------------------------- configs
    def prepare_update(self, vmid: int, params: dict[str, Any], ident: Identity) -> dict[str, Any]:
        """qemu-server update_vm_api: the checks made before locking / forking.

        A template takes config changes like any VM (name, tags, description, protection: the
        general options of Q:799-817, VM.Config.Options): update_vm_api never asks is_template;
        only moving a disk refuses templates (Q:4994). Deleting ``protection`` needs nothing more."""
        delete = split_list(params.get("delete"))
        revert = split_list(params.get("revert"))
        digest = params.get("digest")
        skiplock = bool(params.get("skiplock"))
        force = bool(params.get("force"))
        values = {k: v for k, v in params.items() if k not in UPDATE_CONTROL}
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        if "sshkeys" in values:  # Qemu.pm:2071-2074, before anything else
            validate_ssh_keys(unquote(str(values["sshkeys"])))
        for opt in delete:
            if opt in values:
                raise param_error({"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"})
            if opt in revert:
                raise param_error({"revert": f"you can't use '-delete {opt}' and '-revert {opt}' at the same time"})
            if self._create_ep.prop(opt) is None and opt not in ("template", "lock", "parent", "snaptime", "vmstate",
                                                                  "runningmachine", "runningcpu", "meta"):
                raise param_error({"delete": f"unknown option '{opt}'"})
        for opt in revert:
            if opt in values:
                raise param_error({"revert": f"you can't use '-{opt}' and '-revert {opt}' at the same time"})
        if not delete and not revert and not values:
            raise die("no options specified")
        if force and not delete:
            raise param_error({"force": "force is only allowed together with delete"})
        self.check_modify_config_perm(ident, vmid, [k for k in list(values) + delete if not is_drive_key(k)])
        for key, val in list(values.items()):
            if key == "cipassword" and not ENCRYPTED_PW_RE.match(str(val)):
                values[key] = encrypt_pw(str(val))
            if key == "tags":
                values[key] = unique_tags(str(val))
            if key == "cdrom":
                values["ide2"] = values.pop("cdrom")
        for key in [k for k in values if is_drive_key(k)]:
            self.check_storage_access(ident, vmid, key, self.parse_drive(key, str(values[key])))
        prep = {"values": values, "delete": delete, "revert": revert, "digest": digest, "skiplock": skiplock,
                "force": force}
        self.check_update(self.load(vmid), prep)  # Qemu.pm:2562 "early checks before forking/locking"
        return prep

    def check_update(self, conf: VMConf, prep: dict[str, Any]) -> None:
        """Qemu.pm:2175-2222 $load_and_check_config: digest, lock, balloon; once before forking
        (a synchronous 500 for PUT and POST alike) and again under the config lock."""
        if prep["digest"] and prep["digest"] != conf.digest:
            raise die("checksum mismatch (file change by other user?)")  # Qemu.pm:2180
        if not prep["skiplock"]:
            self.check_lock(conf)  # Qemu.pm:2198
        self.check_balloon(conf, prep["values"])

    @staticmethod
    def check_balloon(conf: VMConf, values: dict[str, Any]) -> None:
        """Qemu.pm:2208-2217: balloon <= the new, else pending, else current memory."""
        if not values.get("memory") and values.get("balloon") is None:
            return
        memory = values.get("memory") or conf.pending.get("memory") or conf.values.get("memory")
        maxmem = memory_mib({"memory": str(memory)} if memory else {})
        balloon = values.get("balloon")
        if balloon is None:
            balloon = conf.pending.get("balloon") or conf.values.get("balloon")
        if balloon and int(balloon) > maxmem:
            raise die("balloon value too large (must be smaller than assigned memory)")  # Qemu.pm:2216

    @staticmethod
    def check_boot_order(conf: VMConf, values: dict[str, Any], delete: list[str]) -> None:
        """Qemu.pm:2509-2520: every device of a new ``boot: order=`` must exist (config, pending
        or this request) and not be deleted by it; PVE's message has the stray quote."""
        if "boot" not in values:
            return
        m = re.search(r"(?:^|,)order=([^,]*)", str(values["boot"]))
        for dev in split_list(m.group(1) if m else ""):
            exists = conf.values.get(dev) or conf.pending.get(dev) or values.get(dev)
            if not exists or dev in delete:
                raise die(f"invalid bootorder: device '{dev}' does not exist'")

    @staticmethod
    def boot_order_changes(conf: VMConf, values: dict[str, Any], delete: list[str]) -> str | None:
        """The ``boot`` an update leaves pending besides an explicit one (None: unchanged).

        qemu-server 9.1.19 Qemu.pm:2234-2240 takes ``order=`` of the current ``boot``; a deleted
        option that is set and in it is dropped from it (2274-2278), a new CD drive that is not in
        it is appended to it (2408-2419; ``drive_is_cdrom($drive, 1)``: a cloud-init drive is not a
        CD there); ``print_bootorder`` writes ``order=a;b`` (an empty list: an empty value). An
        explicit ``boot`` in the same request wins."""
        m = re.search(r"(?:^|,)order=([^,]*)", conf.values.get("boot", ""))
        order = split_list(m.group(1)) if m else []
        if not order:
            return None
        new = list(order)
        if "bootorder" not in delete:
            new = [dev for dev in new if not (dev in delete and (dev in conf.values or dev in conf.pending))]
        for key, val in values.items():
            val = str(val)
            if is_drive_key(key) and Node.is_cdrom(val) and not re.search(r"(^|:)cloudinit(,|$)", val.split(",")[0]) \
                    and not Node.is_cloudinit_value(val) and key not in new:
                new.append(key)
        if new == order:
            return None
        return f"order={';'.join(new)}" if new else ""

    def apply_update(self, vmid: int, prep: dict[str, Any], ident: Identity, log_fn: Callable[[str], None]) -> None:
        """qemu-server update_vm_api: the part under the config lock."""
        values, delete, revert, force = prep["values"], prep["delete"], prep["revert"], prep["force"]
        with self.locks.hold(vmid):
            conf = self.load(vmid)
            self.check_update(conf, prep)
            self.check_boot_order(conf, values, delete)
            boot = self.boot_order_changes(conf, values, delete)
            if boot is not None and "boot" not in values:
                values = {**values, "boot": boot}
            effective = conf.effective()
            # one cloud-init drive only
            new_ci = [k for k, v in values.items() if is_drive_key(k) and re.search(r"(^|:)cloudinit(,|$)", str(v).split(",")[0])]
            for key in new_ci:
                for other, val in effective.items():
                    if other != key and is_drive_key(other) and self.is_cloudinit_value(val):
                        raise die(f"cloud-init drive is already attached at '{other}'")
            running = self.runtime.get(vmid) is not None
            created: list[str] = []
            try:
                for key, val in values.items():
                    val = config_value(val)
                    if is_drive_key(key):
                        val, new = self.create_disk(vmid, key, val, ident, log_fn, default_storage=None)
                        created.extend(new)
                    elif NET_RE.match(key):
                        net = self.parse_net(key, val)
                        if not net.get("macaddr"):
                            old = effective.get(key)
                            old_mac = parse_nic(old).get("macaddr") if old else None
                            net["macaddr"] = old_mac or random_mac(self.cfg.mac_prefix)
                        val = print_net(net, {})
                    if CLOUDINIT_KEYS.match(key) and conf.values.get(key) != val:
                        conf.special_cloudinit.setdefault(key, conf.values.get(key, ""))
                    if running and (key in FAST_PLUG or CLOUDINIT_KEYS.match(key)):
                        conf.values[key] = val  # hot-pluggable: applied at once
                        conf.pending.pop(key, None)
                    else:
                        conf.pending[key] = val
                        conf.pending_delete.pop(key, None)
            except Exception:
                for volid in created:
                    try:
                        self.storage.free(volid)
                    except ApiError:
                        pass
                raise
            for opt in delete:
                if opt not in conf.values and opt not in conf.pending:
                    log_fn(f"cannot delete '{opt}' - not set in current configuration!")
                    continue
                if CLOUDINIT_KEYS.match(opt) and opt in conf.values:
                    conf.special_cloudinit.setdefault(opt, conf.values[opt])
                conf.pending.pop(opt, None)
                if running and (opt in FAST_PLUG or CLOUDINIT_KEYS.match(opt)):
                    conf.values.pop(opt, None)
                elif opt in conf.values:
                    conf.pending_delete[opt] = force
            for opt in revert:
                conf.pending.pop(opt, None)
                conf.pending_delete.pop(opt, None)
            if not running:
                self.commit_pending(conf)
            self.write(conf)
            # adding a cloud-init drive generates it (qemu-server does so at once)
            for key in new_ci:
                self.regenerate_cloudinit(conf, log_fn)

    def commit_pending(self, conf: VMConf) -> None:
        """vmconfig_apply_pending: replaced disks become unusedN, deleted ones are detached/freed."""
        for key, new in list(conf.pending.items()):
            old = conf.values.get(key)
            if is_drive_key(key) and old is not None and old != new:
                self._detach(conf, key, old)
        for opt, force in list(conf.pending_delete.items()):
            old = conf.values.get(opt)
            if old is not None and (is_drive_key(opt) or UNUSED_RE.match(opt)):
                self._delete_drive(conf, opt, old, force)
        conf.apply_pending()

    def _detach(self, conf: VMConf, key: str, old: str) -> None:
        volid = self.drive_volume(old)
        if volid is None or self.is_cdrom(old) and not self.is_cloudinit_value(old):
            return
        if self.is_cloudinit_value(old):
            try:
                self.storage.free(volid)
            except ApiError:
                pass
            return
        conf.values[conf.next_unused_key()] = volid

    def _delete_drive(self, conf: VMConf, key: str, old: str, force: bool) -> None:
        volid = self.drive_volume(old) if not UNUSED_RE.match(key) else old.split(",", 1)[0]
        if volid is None:
            return
        if UNUSED_RE.match(key) or force or self.is_cloudinit_value(old):
            try:
                self.storage.free(volid)
            except ApiError as exc:
                log.warning("could not remove %s: %s", volid, exc.message.strip())
            return
        if self.is_cdrom(old):
            return
        conf.values[conf.next_unused_key()] = volid

    def config_api(self, vmid: int, current: bool) -> dict[str, Any]:
        conf = self.load(vmid)
        values = dict(conf.values) if current else conf.effective()
        out = self.typed_config(values)
        if "cipassword" in out:
            out["cipassword"] = "**********"
        out["digest"] = conf.digest
        return out

    def pending_api(self, vmid: int) -> list[dict[str, Any]]:
        conf = self.load(vmid)
        keys = sorted(set(conf.values) | set(conf.pending) | set(conf.pending_delete))
        out: list[dict[str, Any]] = []
        for key in keys:
            item: dict[str, Any] = {"key": key}
            if key in conf.values:
                item["value"] = conf.values[key]
            if key in conf.pending:
                item["pending"] = conf.pending[key]
            if key in conf.pending_delete:
                item["delete"] = 2 if conf.pending_delete[key] else 1
            if key == "cipassword":
                for k in ("value", "pending"):
                    if k in item:
                        item[k] = "**********"
            out.append(item)
        return out

    # ------------------------------------------------------------ cloud-init
    def ci_drive(self, values: dict[str, str]) -> tuple[str, str] | None:
        for key in sorted(values):
            if is_drive_key(key) and self.is_cloudinit_value(values[key]):
                return key, values[key]
        return None

    def read_snippet(self, volid: str) -> str:
        vol = self.storage.parse(volid)
        if vol.vtype != "snippets":
            raise die(f"{volid} is not in the snippets directory")
        return vol.path.read_text()[: 1024 * 1024]

    def regenerate_cloudinit(self, conf: VMConf, log_fn: Callable[[str], None]) -> bool:
        values = conf.values
        found = self.ci_drive(values)
        if not found:
            return False
        if cloudinit.citype(values) != "nocloud":
            raise die(f"cloud-init format '{cloudinit.citype(values)}' is not supported by the simulator")
        _key, value = found
        volid = self.drive_volume(value)
        assert volid is not None
        vol = self.storage.parse(volid)
        if not vol.path.exists():
            self.storage.alloc_cloudinit(vol.storeid, conf.vmid, vol.fmt or "qcow2")
        files = cloudinit.generate(values, conf.vmid, self.dns, self.read_snippet)
        log_fn("generating cloud-init ISO")
        cloudinit.write_drive(files, vol.path, vol.fmt or "qcow2")
        conf.special_cloudinit.clear()
        return True

    # --------------------------------------------------------------- create
    def create_vm(self, params: dict[str, Any], ident: Identity) -> Task:
        vmid = int(params["vmid"])
        if params.get("archive"):
            raise die("restore from backup archives is not supported by the simulator")
        if params.get("pool"):
            raise die(f"pool '{params['pool']}' does not exist")
        values = {k: config_value(v) for k, v in params.items() if k not in CREATE_CONTROL}
        if "cdrom" in values:
            values["ide2"] = values.pop("cdrom")
            if "media=cdrom" not in values["ide2"]:
                values["ide2"] += ",media=cdrom"
        if not (ident.authid == "root@pam" or self.access.has(ident.authid, f"/vms/{vmid}", ["VM.Allocate"])):
            raise perm_error(f"/vms/{vmid}, VM.Allocate")
        self.check_modify_config_perm(ident, vmid, [k for k in values if not is_drive_key(k)])
        for key in [k for k in values if is_drive_key(k)]:
            self.check_storage_access(ident, vmid, key, self.parse_drive(key, values[key]))
        if "sshkeys" in values:  # Qemu.pm:1253-1256
            validate_ssh_keys(unquote(values["sshkeys"]))
        if "cipassword" in values and not ENCRYPTED_PW_RE.match(values["cipassword"]):
            values["cipassword"] = encrypt_pw(values["cipassword"])
        if "tags" in values:
            values["tags"] = unique_tags(values["tags"])
        storage = params.get("storage")
        # Q:1346 create_and_lock_config (pve-guest-common AbstractConfig): claim the id before forking, so
        # of two creates of one vmid exactly one gets it (nixgold's refresh lock marker relies on that)
        with self.locks.hold(vmid, timeout=5):
            if self.exists(vmid):
                raise die(f"unable to create VM {vmid} - VM {vmid} already exists on node '{self.name}'")
            self.write(VMConf(vmid, {"lock": "create"}))
        start_after = bool(params.get("start"))

        def worker(task: Task) -> None:
            created: list[str] = []
            try:
                with self.locks.hold(vmid):
                    conf = VMConf(vmid, {})
                    for key in sorted(values, key=lambda k: (not is_drive_key(k), k)):
                        val = values[key]
                        if is_drive_key(key):
                            val, new = self.create_disk(vmid, key, val, ident, task.log, default_storage=storage)
                            created.extend(new)
                        elif NET_RE.match(key):
                            net = self.parse_net(key, val)
                            net.setdefault("macaddr", random_mac(self.cfg.mac_prefix))
                            val = print_net(net, {})
                        conf.values[key] = val
                    task.check_cancel()
                    if "boot" not in conf.values:
                        conf.values["boot"] = "order=" + ";".join(self._default_boot(conf.values))
                    conf.values.setdefault("smbios1", new_smbios1())
                    conf.values.setdefault("vmgenid", str(uuid.uuid4()))
                    conf.values.setdefault("meta", f"creation-qemu=7.2.0,ctime={int(time.time())}")
                    self.write(conf)
                    if self.ci_drive(conf.values):
                        self.regenerate_cloudinit(conf, task.log)
                        self.write(conf)
            except Exception as exc:
                for volid in created:
                    try:
                        self.storage.free(volid)
                    except ApiError:
                        pass
                self.remove(vmid)
                msg = exc.message.strip() if isinstance(exc, ApiError) else str(exc).strip()
                raise TaskError(f"unable to create VM {vmid} - {msg}") from None
            if start_after:
                self._start_in_task(task, vmid, {})

        return self.tasks.spawn("qmcreate", str(vmid), ident.authid, worker,
                                on_injected_failure=lambda: self.remove(vmid))

    def _default_boot(self, values: dict[str, str]) -> list[str]:
        disks = [k for k in sorted(values, key=lambda k: (k[:3], k)) if is_drive_key(k)]
        first_disk = [k for k in disks if not self.is_cdrom(values[k])][:1]
        cdroms = [k for k in disks if self.is_cdrom(values[k]) and not self.is_cloudinit_value(values[k])]
        nets = sorted((k for k in values if NET_RE.match(k)), key=lambda k: int(k[3:]))[:1]
        return first_disk + cdroms + nets

    # ---------------------------------------------------------------- clone
    def clone_vm(self, vmid: int, params: dict[str, Any], ident: Identity, fired: FiredFaults) -> Task:
        newid = int(params["newid"])
        storage = params.get("storage")
        fmt = params.get("format")
        target = params.get("target")
        if params.get("pool"):
            raise die(f"pool '{params['pool']}' does not exist")
        if params.get("snapname"):
            raise die(f"snapshot '{params['snapname']}' does not exist")
        if target and target != self.name:
            raise die(f"no such cluster node '{target}'")
        if storage:
            self.storage.get(storage)
            if not self.access.has(ident.authid, f"/storage/{storage}", ["Datastore.AllocateSpace"]):
                raise perm_error(f"/storage/{storage}, Datastore.AllocateSpace")

        def load_and_check() -> tuple[VMConf, bool]:
            conf = self.load(vmid)
            self.check_lock(conf)
            full = params["full"] if params.get("full") is not None else not conf.is_template
            if storage is not None and not full:
                raise die("parameter 'storage' not allowed for linked clones")
            if fmt is not None and not full:
                raise die("parameter 'format' not allowed for linked clones")
            if not full:
                for key in conf.drives():
                    value = conf.values[key]
                    if self.is_cdrom(value) or self.is_cloudinit_value(value):
                        continue
                    volid = self.drive_volume(value)
                    if volid is None or not self.storage.parse(volid).is_base:  # Qemu.pm:4521-4540
                        raise die(f"Linked clone feature is not supported for '{value.split(',', 1)[0]}' ({key})")
            if self.exists(newid):
                raise die(f"unable to create VM {newid}: config file already exists")
            return conf, bool(full)

        load_and_check()  # early checks before forking (sync 500s)
        running = self.runtime.get(vmid) is not None
        slow = fired.get("slow_task")
        lock_fault = fired.get("clone_lock_timeout")
        stuck = fired.get("stuck_lock")

        def worker(task: Task) -> None:
            if lock_fault is not None:
                time.sleep(1.0)  # PVE's 1 s flock timeout
                raise TaskError(lock_fault.message or f"clone failed: {lock_timeout_message(newid)}")
            with self.locks.hold(vmid, timeout=1, shared=not running):
                with self.locks.hold(newid, timeout=1):
                    self._clone_locked(task, vmid, newid, params, load_and_check, slow.seconds if slow else 0.0,
                                       bool(stuck))

        return self.tasks.spawn("qmclone", str(vmid), ident.authid, worker, sleeps_itself=True)

    def _clone_locked(self, task: Task, vmid: int, newid: int, params: dict[str, Any],
                      load_and_check: Callable[[], tuple[VMConf, bool]], slow: float, stuck: bool) -> None:
        try:
            conf, full = load_and_check()
        except ApiError as exc:
            raise TaskError(exc.message.strip()) from None
        task.log(f"creating a clone of VM {vmid} with ID {newid}")  # Q clone_vm $clonefn, after $load_and_check
        self.write_raw(newid, "# qmclone temporary file\nlock: clone\n")
        created: list[str] = []
        try:
            if slow:
                task.sleep(slow)
            newconf = VMConf(newid, {})
            for key, value in conf.values.items():
                # Q:4489-4500 skip snapshot state and unused disks; Q:4579 delete $newconf->{template};
                # everything else is copied (Q:4554 "copy everything else"): protection, tags, description
                if key in ("template", "lock", "parent", "snapstate", "vmstate", "runningmachine", "runningcpu") or UNUSED_RE.match(key):
                    continue
                newconf.values[key] = value
            target_storage = params.get("storage")
            for key in conf.drives():
                value = conf.values[key]
                volid = self.drive_volume(value)
                if volid is None or (self.is_cdrom(value) and not self.is_cloudinit_value(value)):
                    continue
                drive = self.parse_drive(key, value)
                if self.is_cloudinit_value(value):
                    src = self.storage.parse(volid)
                    newvol = self.storage.alloc_cloudinit(target_storage or src.storeid, newid, src.fmt or "qcow2")
                    created.append(newvol)
                    drive["file"] = newvol
                elif full:
                    task.log(f"create full clone of drive {key} ({volid})")
                    newvol = self.storage.full_copy(volid, target_storage or self.storage.parse(volid).storeid, newid,
                                                    params.get("format"))
                    created.append(newvol)
                    drive["file"] = newvol
                    drive["size"] = format_size(self.storage.size(newvol))
                    task.log(f"transferred {drive['size']} of {drive['size']} (100.00%)")
                else:
                    task.log(f"create linked clone of drive {key} ({volid})")
                    newvol = self.storage.linked_clone(volid, newid)
                    created.append(newvol)
                    drive["file"] = newvol
                newconf.values[key] = print_drive(drive)
                task.check_cancel()
            for key in [k for k in newconf.values if NET_RE.match(k)]:
                net = parse_nic(newconf.values[key])
                net_full = self.parse_net(key, newconf.values[key])
                net_full["macaddr"] = random_mac(self.cfg.mac_prefix)
                net_full["model"] = net.get("model", net_full.get("model"))
                newconf.values[key] = print_net(net_full, {})
            smbios = parse_kv(newconf.values.get("smbios1", ""))
            smbios["uuid"] = str(uuid.uuid4())
            newconf.values["smbios1"] = ",".join(f"{k}={v}" for k, v in sorted(smbios.items(), key=lambda kv: kv[0] != "uuid"))
            if "vmgenid" in newconf.values:
                newconf.values["vmgenid"] = str(uuid.uuid4())
            newconf.values["name"] = params.get("name") or f"Copy-of-VM-{conf.values.get('name') or vmid}"  # Q:4581-4585
            if params.get("description"):  # Q:4587 `if ($param->{description})`: an empty one keeps the source's
                newconf.values["description"] = params["description"]
            if stuck:
                newconf.values["lock"] = "clone"
            self.write(newconf)
        except Exception as exc:
            for volid in created:
                try:
                    self.storage.free(volid)
                except ApiError:
                    pass
            self.remove(newid)
            msg = exc.message.strip() if isinstance(exc, ApiError) else str(exc).strip()
            if isinstance(exc, TaskError) and msg.startswith("clone failed"):
                raise
            from .tasks import TaskCancelled

            if isinstance(exc, TaskCancelled):
                raise
            raise TaskError(f"clone failed: {msg}") from None

    # ------------------------------------------------------------- template
    def template_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        conf = self.load(vmid)
        self.check_lock(conf)
        if conf.is_template:
            raise die("you can't convert a template to a template")
        if self.runtime.get(vmid) is not None:
            raise die("you can't convert a VM to template if VM is running")
        only = params.get("disk")

        def worker(task: Task) -> None:
            with self.locks.hold(vmid):
                conf = self.load(vmid)
                self.check_lock(conf)
                conf.values["lock"] = "template"
                self.write(conf)
                try:
                    for key in conf.drives():
                        value = conf.values[key]
                        if only and key != only:
                            continue
                        if self.is_cdrom(value) or self.is_cloudinit_value(value):
                            continue
                        volid = self.drive_volume(value)
                        if volid is None:
                            continue
                        newvol = self.storage.create_base(volid)
                        drive = self.parse_drive(key, value)
                        drive["file"] = newvol
                        conf.values[key] = print_drive(drive)
                    conf.values["template"] = "1"
                finally:
                    conf.values.pop("lock", None)
                    self.write(conf)

        return self.tasks.spawn("qmtemplate", str(vmid), ident.authid, worker)

    # -------------------------------------------------------------- destroy
    def destroy_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        conf = self.load(vmid)
        skiplock = bool(params.get("skiplock"))
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        if is_flag_set(conf.values.get("protection")):  # Qemu.pm:2798 check_protection
            raise die(f"can't remove VM {vmid} - protection mode enabled")
        if self.runtime.get(vmid) is not None:
            raise die(f"VM {vmid} is running - destroy failed")
        purge_unref = bool(params.get("destroy-unreferenced-disks"))

        def worker(task: Task) -> None:
            with self.locks.hold(vmid):
                conf = self.load(vmid)
                if self.runtime.get(vmid) is not None:
                    raise TaskError(f"VM {vmid} is running - destroy failed")
                if not skiplock and conf.lock != "suspended":
                    self.check_lock(conf)
                vols: list[str] = []
                for key, value in conf.values.items():
                    if is_drive_key(key) or UNUSED_RE.match(key):
                        volid = self.drive_volume(value) if is_drive_key(key) else value.split(",", 1)[0]
                        if volid is None or (self.is_cdrom(value) and not self.is_cloudinit_value(value)):
                            continue
                        vols.append(volid)
                if conf.is_template:
                    for volid in vols:
                        if self.storage.is_base_and_used(volid):
                            raise TaskError(f"base volume '{volid}' is still in use by linked cloned")  # QS:1853
                conf.values["lock"] = "destroyed"
                self.write(conf)
                for volid in vols:
                    try:
                        self.storage.free(volid)
                    except ApiError as exc:
                        task.warn(f"Could not remove disk '{volid}', check manually: {exc.message.strip()}")
                if purge_unref:
                    for volid in self.storage.owned_volumes(vmid):
                        if volid not in vols:
                            task.log(f"purging unreferenced disk '{volid}'")
                            self.storage.free(volid)
                self.remove(vmid)
                task.log(f"destroyed VM {vmid}")

        return self.tasks.spawn("qmdestroy", str(vmid), ident.authid, worker)

    # -------------------------------------------------------------- power
    def _start_in_task(self, task: Task, vmid: int, params: dict[str, Any], slow: float = 0.0) -> None:
        """QemuServer.pm vm_start: the whole start runs under the config lock (``lock_config``), so a
        destroy sent meanwhile waits for it and then finds the VM running (see :meth:`destroy_vm`)."""
        with self.locks.hold(vmid):
            if slow:
                task.sleep(slow)  # the fault: a slow start (storage activation, a big guest) in the lock
            conf = self.load(vmid)
            if conf.is_template:
                raise TaskError("you can't start a vm if it's a template")
            if not params.get("skiplock"):
                self.check_lock(conf)
            if self.runtime.get(vmid) is not None:
                raise TaskError(f"VM {vmid} already running")
            if conf.pending or conf.pending_delete:
                self.commit_pending(conf)
                self.write(conf)
            if self.ci_drive(conf.values):
                self.regenerate_cloudinit(conf, task.log)
                self.write(conf)
            timeout = float(params.get("timeout") or max(30, memory_mib(conf.values) // 1024))
            inst = self.runtime.start(vmid, conf.values, task.log, timeout=timeout)
            task.log(f"VM {vmid} started with PID {inst.pid}.")

    def start_vm(self, vmid: int, params: dict[str, Any], ident: Identity, fired: FiredFaults | None = None) -> Task:
        self.load(vmid)
        if params.get("skiplock") and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        slow = fired.get("slow_task") if fired is not None else None
        seconds = float(slow.seconds) if slow is not None else 0.0
        return self.tasks.spawn("qmstart", str(vmid), ident.authid,
                                lambda task: self._start_in_task(task, vmid, params, seconds), sleeps_itself=True)

    def _stop_in_task(self, task: Task, vmid: int, *, shutdown: bool, timeout: float | None, force: bool,
                      skiplock: bool) -> None:
        """QemuServer.pm vm_stop -> _do_vm_stop, under the config lock throughout (``PVE::QemuConfig->
        lock_config($vmid, sub { _do_vm_stop(...) })``): a stop sent while a start holds the lock
        waits for it (and gives up after the lock's 10 s: ``can't lock file ... got timeout``)."""
        with self.locks.hold(vmid):
            self._stop_locked(task, vmid, shutdown=shutdown, timeout=timeout, force=force, skiplock=skiplock)

    def _stop_locked(self, task: Task, vmid: int, *, shutdown: bool, timeout: float | None, force: bool,
                     skiplock: bool) -> None:
        conf = self.load(vmid)
        if not skiplock and conf.lock not in (None, "backup", "suspended"):
            self.check_lock(conf)
        inst = self.runtime.get(vmid)
        if inst is None:
            return
        if not shutdown:
            self.runtime.kill(vmid, grace=timeout if timeout is not None else 5.0)
        elif not self._send_shutdown(task, vmid, inst, conf):  # QemuServer.pm:6283-6294
            if not inst.alive:
                task.log("Unexpected: VM shutdown command failed, but VM not running anymore..")
                return
            if not force:
                raise TaskError("VM quit/powerdown failed")
            task.warn("VM quit/powerdown failed - terminating now with SIGTERM")
            self.runtime.kill(vmid, grace=0.5)
        elif not inst.exited.wait(60.0 if timeout is None else float(timeout)):  # QemuServer.pm:6263-6278
            if not force:
                raise TaskError("VM quit/powerdown failed - got timeout")
            task.warn("VM still running - terminating now with SIGTERM")
            self.runtime.kill(vmid, grace=0.5)
        self._stop_cleanup(task, vmid)  # QemuServer.pm:6280 and :6311

    def _send_shutdown(self, task: Task, vmid: int, inst: QemuInstance, conf: VMConf) -> bool:
        """QemuServer.pm:6250-6260: ``guest-shutdown`` only if the agent is enabled *and* answers
        guest-ping, else ACPI (QMP ``system_powerdown``).  False if the command failed."""
        try:
            if self.agent_enabled(conf.values) and self._qga_check_running(task, vmid, inst):
                inst.qga("guest-shutdown", timeout=10)
            else:
                inst.qmp("system_powerdown")
        except Exception as exc:  # QMP and QGA failures alike: PVE's eval around mon_cmd
            log.info("VM %s: shutdown command failed: %s", vmid, exc)
            return False
        return True

    def _qga_check_running(self, task: Task | None, vmid: int, inst: QemuInstance) -> bool:
        """Agent.pm:82-89 qga_check_running: guest-ping, 3 s.  Without ``nowarn`` (task given)
        PVE ``warn``s, which pvedaemon's __WARN__ handler prints as a plain task log line."""
        conf = self.try_load(vmid)
        delay = self.faults.agent_delay_for(vmid, str(conf.values.get("name", "")) if conf else "")
        try:
            if (delay and inst.uptime() < delay) or not inst.agent:
                raise QgaTimeout("got timeout")
            inst.qga("guest-ping", timeout=3)
        except (QgaTimeout, QgaError, OSError):
            if task is not None:
                task.log(f"QEMU Guest Agent is not running - VM {vmid} qmp command 'guest-ping' failed - "
                         "got timeout")
            return False
        return True

    def _stop_cleanup(self, task: Task, vmid: int) -> None:
        """QemuServer.pm:6214 vm_stop_cleanup(..., $apply_pending_changes = 1, $noerr = 1): an API
        stop/shutdown commits pending changes; a guest-initiated exit (``qm cleanup``) does not."""
        try:
            with self.locks.hold(vmid):
                conf = self.load(vmid)
                if conf.pending or conf.pending_delete:
                    self.commit_pending(conf)
                    self.write(conf)
        except ApiError as exc:
            task.log(exc.message.strip())

    def stop_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        self.load(vmid)
        skiplock = bool(params.get("skiplock"))
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        timeout = params.get("timeout")

        def worker(task: Task) -> None:
            self._stop_in_task(task, vmid, shutdown=False, timeout=timeout, force=True, skiplock=skiplock)

        return self.tasks.spawn("qmstop", str(vmid), ident.authid, worker)

    def shutdown_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        self.load(vmid)
        skiplock = bool(params.get("skiplock"))
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        inst = self.runtime.get(vmid)
        force = bool(params.get("forceStop"))
        if inst is not None:
            try:
                paused = inst.qmp("query-status", timeout=3).get("status") == "paused"
            except Exception:
                paused = False
            if paused and not force:
                raise die("VM is paused - cannot shutdown")

        def worker(task: Task) -> None:
            self._stop_in_task(task, vmid, shutdown=True, timeout=params.get("timeout"), force=force, skiplock=skiplock)

        return self.tasks.spawn("qmshutdown", str(vmid), ident.authid, worker)

    def reboot_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        conf = self.load(vmid)
        if self.runtime.get(vmid) is None:
            raise die(f"VM {vmid} not running")
        self.check_lock(conf)

        def worker(task: Task) -> None:
            self._stop_in_task(task, vmid, shutdown=True, timeout=params.get("timeout"), force=False, skiplock=False)
            self._start_in_task(task, vmid, {})

        return self.tasks.spawn("qmreboot", str(vmid), ident.authid, worker)

    def reset_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        conf = self.load(vmid)
        if not params.get("skiplock"):
            self.check_lock(conf)
        inst = self.runtime.get(vmid)
        if inst is None:
            raise die(f"VM {vmid} not running")

        def worker(task: Task) -> None:
            inst.qmp("system_reset")

        return self.tasks.spawn("qmreset", str(vmid), ident.authid, worker)

    # -------------------------------------------------------------- resize
    def resize_vm(self, vmid: int, params: dict[str, Any], ident: Identity) -> Task:
        self.load(vmid)
        disk, size_text = params["disk"], params["size"]
        skiplock = bool(params.get("skiplock"))
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        digest = params.get("digest")

        def worker(task: Task) -> None:
            with self.locks.hold(vmid):
                conf = self.load(vmid)
                if digest and digest != conf.digest:  # Qemu.pm:5984: inside the resize worker
                    raise TaskError("checksum mismatch (file change by other user?)")
                if not skiplock:
                    self.check_lock(conf)
                value = conf.values.get(disk)
                if value is None:
                    raise TaskError(f"disk '{disk}' does not exist")
                if self.is_cdrom(value):
                    raise TaskError("you can't resize a cdrom")
                volid = self.drive_volume(value)
                if volid is None:
                    raise TaskError(f"disk '{disk}' has no associated volume")
                if not self.access.has(ident.authid, f"/storage/{volid.split(':')[0]}", ["Datastore.AllocateSpace"]):
                    raise TaskError(f"Permission check failed (/storage/{volid.split(':')[0]}, Datastore.AllocateSpace)")
                current = self.storage.size(volid)
                m = re.fullmatch(r"(\+)?(\d+(?:\.\d+)?)([KMGT])?", size_text)
                assert m
                amount = parse_size(m.group(2) + (m.group(3) or ""))
                new = current + amount if m.group(1) else amount
                if new < current:
                    raise TaskError("shrinking disks is not supported")
                if new == current:
                    task.log("ignore resize request - size already set")
                    return
                inst = self.runtime.get(vmid)
                if inst is not None:
                    inst.qmp("block_resize", {"device": f"drive-{disk}", "size": new})
                else:
                    self.storage.resize(volid, new)
                drive = self.parse_drive(disk, value)
                drive["size"] = format_size(new)
                conf.values[disk] = print_drive(drive)
                self.write(conf)
                task.log(f"Image resized. ({format_size(current)} -> {format_size(new)})")

        return self.tasks.spawn("resize", str(vmid), ident.authid, worker)

    # ------------------------------------------------------------- monitor
    def sendkey(self, vmid: int, key: str, skiplock: bool, ident: Identity) -> None:
        if skiplock and ident.authid != "root@pam":
            raise param_error({"skiplock": "Only root may use this option."})
        with self.locks.hold(vmid):
            conf = self.load(vmid)
            if not skiplock:
                self.check_lock(conf)
            inst = self.runtime.get(vmid)
            if inst is None:
                raise die(f"VM {vmid} not running")
            try:
                res = inst.qmp("human-monitor-command", {"command-line": f"sendkey {key}"})
            except Exception as exc:
                raise die(f"VM {vmid} qmp command 'human-monitor-command' failed - {exc}") from None
            if res:
                raise die(str(res).strip())

    # --------------------------------------------------------------- agent
    def agent_cmd(self, vmid: int, command: str, arguments: dict[str, Any] | None = None,
                  timeout: float = 10.0) -> Any:
        conf = self.load(vmid)
        # Agent.pm:110-112 assert_agent_available: only an absent key is "not configured"
        if "agent" not in conf.values:
            raise die("No QEMU guest agent configured")
        inst = self.runtime.get(vmid)
        if inst is None:
            raise die(f"VM {vmid} is not running")
        if not self._qga_check_running(None, vmid, inst):
            raise die("QEMU guest agent is not running")
        try:
            return inst.qga(f"guest-{command}", arguments, timeout=timeout)
        except QgaError as exc:
            raise die(f"Agent error: {exc.desc}") from None
        except (QgaTimeout, OSError):
            raise die(f"VM {vmid} qmp command 'guest-{command}' failed - got timeout") from None

    # --------------------------------------------------------------- status
    def vm_status(self, vmid: int, conf: VMConf | None = None) -> dict[str, Any]:
        conf = conf or self.load(vmid)
        values = conf.values
        inst = self.runtime.get(vmid)
        sockets, cores = int(values.get("sockets", "1") or 1), int(values.get("cores", "1") or 1)
        bootdisk_size = 0
        for key in parse_boot_order(values.get("boot"), values):
            if is_drive_key(key) and key in values and not self.is_cdrom(values[key]):
                m = re.search(r"(?:^|,)size=([^,]+)", values[key])
                if m:
                    try:
                        bootdisk_size = parse_size(m.group(1))
                    except ValueError:
                        pass
                break
        out: dict[str, Any] = {
            "vmid": vmid,
            "status": "running" if inst else "stopped",
            "name": values.get("name", f"VM {vmid}"),
            "cpus": sockets * cores,
            "maxmem": memory_mib(values) * 1024 * 1024,
            "mem": 0, "maxdisk": bootdisk_size, "disk": 0, "cpu": 0,
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
            "uptime": inst.uptime() if inst else 0,
        }
        if inst:
            out["pid"] = inst.pid
            out["mem"] = out["maxmem"] // 4
            try:
                out["qmpstatus"] = inst.qmp("query-status", timeout=3).get("status", "running")
            except Exception:
                out["qmpstatus"] = "running"
            out["running-qemu"] = "7.2.0"
            out["running-machine"] = "pc-i440fx-7.2+pve0"
        else:
            out["qmpstatus"] = "stopped"
        if values.get("lock"):
            out["lock"] = values["lock"]
        if conf.is_template:
            out["template"] = 1
        if values.get("tags"):
            out["tags"] = values["tags"]
        return out

    def shutdown(self) -> None:
        self.tasks.cancel_all(timeout=5)
        self.runtime.shutdown()
