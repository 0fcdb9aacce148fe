"""`invoke verify`: prove a template works by cloning, booting and checking throwaway clones.

    report = run_verify(config, creds, VerifyOptions(vmid=9004), progress=Progress(), out=sys.stdout)

Stages (one progress line each, with elapsed time):

1. resolve the template (``--vmid``, ``--name`` unique among templates, or ``--tag``: the newest
   nixgold template with that tag by manifest ``build_time``, else the highest vmid);
2. template pre-checks from its API config (``nixgold.checks.template_checks``); a blocking
   failure (not a template, agent disabled, no cloud-init drive) skips the clone phase;
3. clone ``verify.clones`` times (linked when PVE allows it, see ``verify.clone_mode``), each with
   the run's ephemeral SSH key, ``ciuser``, ``ipconfig0``, ``ciupgrade=0`` and a grown boot disk;
4. boot them in parallel: guest agent ``ping`` -> address from ``network-get-interfaces`` ->
   SSH key login. A guest that never gets there is a failed check (``boot.agent``,
   ``boot.address``, ``boot.ssh``: the image's fault, exit 5), not an infrastructure error;
5. run the check suite over SSH (``nixgold.checks.run_checks``);
6. destroy every clone (also on failure, SIGINT, SIGTERM) unless ``--keep``.

Exit: the returned report has ``exit_code`` 0; otherwise an exception with ``.report`` set:
:class:`ChecksFailed` (5), :class:`~nixgold.errors.ProxmoxError` (6),
:class:`~nixgold.errors.Interrupted` (130), :class:`TemplateSelectionError` (2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from . import sshkeys
from .config import Config, Credentials, duration_seconds, redact
from .errors import ExitCode, Interrupted, NixgoldError, ProxmoxError, ProxmoxTaskError, VerifyError
from .manifest import Manifest, ManifestError, parse_manifest
from .progress import Progress
from .proxmox import LINKED_REFUSED_RE, CloneJob, ProxmoxClient, agent_addresses
from .report import CloneInfo, StageInfo, VerifyReport, format_keep, format_table, write_reports

log = logging.getLogger("nixgold.verify")

VERIFY_TAG = "nixgold-verify"
CLONE_ATTEMPTS = 5  # new vmid after "already exists", lock timeouts, linked -> full fallback
LOCK_WAIT = 120.0  # seconds to wait for a VM lock (template busy, clone lock after the task)
AGENT_POLL = 1.0  # seconds between agent pings (PVE's own guest-ping waits up to 3 s)
SSH_PORT = 22
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


class TemplateSelectionError(NixgoldError):
    """--vmid/--name/--tag does not name exactly one template (a flag error: nothing was touched)."""

    exit_code = ExitCode.CONFIG


class ChecksFailed(VerifyError):
    """At least one check failed; ``report`` holds everything."""

    def __init__(self, message: str, report: VerifyReport):
        self.report = report
        super().__init__(message)


class _Cancelled(Exception):
    """A worker noticed the run is being torn down."""


@dataclass(frozen=True)
class VerifyOptions:
    vmid: int | None = None
    name: str | None = None
    tag: str | None = None
    keep: bool = False
    junit: Path | None = None
    json_path: Path | None = None
    insecure: bool = False


@dataclass
class Template:
    vmid: int
    node: str
    name: str
    config: dict[str, Any]
    description: str | None
    manifest: Manifest | None
    selected_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"vmid": self.vmid, "node": self.node, "name": self.name, "selected_by": self.selected_by,
                "manifest": dataclasses.asdict(self.manifest) if self.manifest else None}


@dataclass
class CloneRun:
    """One throwaway clone and everything we know about it (mutated by its worker thread)."""

    index: int
    job: CloneJob
    mac: str | None = None
    disk: str | None = None
    disk_bytes: int = 0
    address: str | None = None
    boot_results: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    destroyed: bool = False
    kept: bool = False

    @property
    def vmid(self) -> int:
        assert self.job.vmid is not None
        return self.job.vmid

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def node(self) -> str:
        return self.job.node

    @property
    def booted(self) -> bool:
        return len(self.boot_results) == 3 and all(r.outcome == "passed" for r in self.boot_results)


# --- pure helpers ------------------------------------------------------------------------------
def dns_label(text: str, limit: int = 63) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", label)[:limit].strip("-") or "nixgold"


def clone_name(template_name: str, index: int) -> str:
    """``<template-name>-verify-<n>``, a valid DNS label (PVE uses it as the guest hostname)."""
    suffix = f"-verify-{index}"
    return dns_label(template_name, 63 - len(suffix)) + suffix


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not m:
        raise ValueError(f"not a disk size: {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


_DISK_KEY_RE = re.compile(r"^(ide|sata|scsi|virtio)\d+$")


def _is_disk(value: str) -> bool:
    return "media=cdrom" not in value and "cloudinit" not in value.split(",", 1)[0] and \
        value.split(",", 1)[0] not in ("none", "cdrom")


def boot_disk(config: dict[str, Any]) -> tuple[str, int | None]:
    """The boot disk key (from ``boot: order=...``, legacy ``bootdisk``, else the first disk) and size."""
    candidates: list[str] = []
    boot = str(config.get("boot") or "")
    m = re.search(r"(?:^|,)order=([^,]*)", boot)
    if m:
        candidates += [d for d in m.group(1).split(";") if d]
    if config.get("bootdisk"):
        candidates.append(str(config["bootdisk"]))
    candidates += sorted((k for k in config if _DISK_KEY_RE.match(k)),
                         key=lambda k: (["scsi", "virtio", "sata", "ide"].index(re.sub(r"\d+", "", k)),
                                        int(re.sub(r"\D", "", k))))
    for key in candidates:
        value = config.get(key)
        if _DISK_KEY_RE.match(key) and isinstance(value, str) and _is_disk(value):
            sm = re.search(r"(?:^|,)size=([^,]+)", value)
            return key, (parse_size(sm.group(1)) if sm else None)
    raise ProxmoxError(f"the template has no boot disk (boot: {boot or 'unset'})")


def net0_mac(config: dict[str, Any]) -> str | None:
    m = re.search(r"(?:^|,)(?:[a-z0-9-]+)=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", str(config.get("net0") or ""))
    return m.group(1) if m else None


def split_tags(tags: str | None) -> list[str]:
    return [t.lower() for t in re.split(r"[;,\s]+", tags or "") if t]


def _fmt_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:g}s"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- template resolution -----------------------------------------------------------------------
def resolve_template(client: ProxmoxClient, *, vmid: int | None, name: str | None, tag: str | None,
                     default_vmid: int, say: Callable[[str], None] = lambda s: None) -> Template:
    """Find the template to verify; TemplateSelectionError unless exactly one matches."""
    given = [f for f, v in (("--vmid", vmid), ("--name", name), ("--tag", tag)) if v is not None]
    if len(given) > 1:
        raise TemplateSelectionError(f"use only one of --vmid, --name, --tag (got {', '.join(given)})")
    resources = client.vm_resources()
    templates = [r for r in resources if int(r.get("template") or 0) == 1]

    def load(res: dict[str, Any], selected_by: str) -> Template:
        node, rid = str(res["node"]), int(res["vmid"])
        config = client.vm_config(node, rid)
        description = config.get("description")
        try:
            manifest = parse_manifest(description)
        except ManifestError:
            manifest = None
        return Template(rid, node, str(config.get("name") or res.get("name") or f"vm{rid}"), config,
                        description, manifest, selected_by)

    if name is not None:
        matches = [r for r in templates if r.get("name") == name]
        if not matches:
            known = ", ".join(f"{r.get('name')} ({r['vmid']})" for r in sorted(templates, key=lambda r: int(r["vmid"])))
            raise TemplateSelectionError(f"no template named {name!r} (templates: {known or 'none'})")
        if len(matches) > 1:
            ids = ", ".join(str(r["vmid"]) for r in sorted(matches, key=lambda r: int(r["vmid"])))
            raise TemplateSelectionError(f"template name {name!r} is ambiguous: vmids {ids}; pick one with --vmid")
        return load(matches[0], f"--name {name}")
    if tag is not None:
        wanted = tag.lower()
        tagged = [r for r in templates if wanted in split_tags(r.get("tags"))]
        loaded = [load(r, f"--tag {tag}") for r in tagged]
        ours = [t for t in loaded if t.manifest is not None]
        if not ours:
            extra = (f" ({', '.join(str(t.vmid) for t in loaded)} carry the tag but no nixgold build manifest)"
                     if loaded else "")
            raise TemplateSelectionError(f"no nixgold template tagged {tag!r}{extra}")
        dated = [t for t in ours if t.manifest and t.manifest.build_time]
        if dated:
            chosen = max(dated, key=lambda t: (_build_time(t.manifest.build_time), t.vmid))  # type: ignore[union-attr]
            why = f"newest by manifest build_time ({chosen.manifest.build_time})"  # type: ignore[union-attr]
        else:
            chosen = max(ours, key=lambda t: t.vmid)
            why = "highest vmid (no manifest has a build_time)"
        others = sorted(t.vmid for t in ours if t.vmid != chosen.vmid)
        say(f"--tag {tag}: chose template {chosen.vmid} ({chosen.name}), {why}"
            + (f"; also tagged: {', '.join(map(str, others))}" if others else ""))
        return chosen
    target = vmid if vmid is not None else default_vmid
    res = next((r for r in resources if int(r["vmid"]) == int(target)), None)
    if res is None:
        raise TemplateSelectionError(f"no VM {target} in the cluster (cluster/resources); check "
                                     f"{'--vmid' if vmid is not None else 'template.vmid'}")
    return load(res, f"--vmid {target}" if vmid is not None else f"template.vmid = {target}")


def _build_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# --- signals -----------------------------------------------------------------------------------
class _Signals:
    """SIGINT/SIGTERM -> KeyboardInterrupt in the main thread, once; later ones only print."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.received: str | None = None
        self.cleaning = False
        self._old: dict[int, Any] = {}

    def handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None and not self.cleaning:
            self.received = name
            raise KeyboardInterrupt(name)
        self.received = self.received or name
        self.say(f"{name} received: still cleaning up (destroying clones), please wait")

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Signals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self.handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


# --- the run -----------------------------------------------------------------------------------
class Verifier:
    def __init__(self, config: Config, creds: Credentials, options: VerifyOptions, *, progress: Progress,
                 out: TextIO, client: ProxmoxClient | None = None):
        self.config = config
        self.creds = creds
        self.options = options
        self.progress = progress
        self.out = out
        self._client = client
        self.run_id = uuid.uuid4().hex[:12]
        self.cancel = threading.Event()
        self.clones: list[CloneRun] = []
        self._vmid_lock = threading.Lock()
        self._used_vmids: set[int] = set()
        self.key: sshkeys.EphemeralKey | None = None
        self.template: Template | None = None
        self.task_timeout = duration_seconds(config.build.task_timeout)
        self.agent_timeout = duration_seconds(config.verify.agent_timeout)
        self.ssh_timeout = duration_seconds(config.verify.ssh_timeout)
        self.signals = _Signals(self.progress.line)
        self._secrets: list[str] = list(creds.secrets)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def client(self) -> ProxmoxClient:
        if self._client is None:
            self._client = ProxmoxClient(self.creds, timeout=self.config.proxmox.timeout,
                                         insecure=self.options.insecure)
        return self._client

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def say(self, text: str) -> None:
        self.progress.line(self.redact(text))

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise _Cancelled()

    def pause(self, seconds: float) -> None:
        if self.cancel.wait(max(0.0, seconds)):
            raise _Cancelled()

    def _description(self) -> str:
        try:
            who = getpass.getuser()
        except Exception:  # no passwd entry in a container
            who = str(os.getuid())
        assert self.template is not None
        return (f"Throwaway clone of template {self.template.vmid} ({self.template.name}) created by "
                f"nixgold verify (run {self.run_id}) as {who}@{socket.gethostname()} "
                f"via {self.client.authid} at {_now_iso()}; it is destroyed when the run ends unless --keep.")

    def _marker(self) -> str:
        return f"nixgold verify (run {self.run_id})"

    def allocate_vmid(self) -> int:
        with self._vmid_lock:
            vmid = self.client.next_vmid(exclude=self._used_vmids)
            self._used_vmids.add(vmid)
            return vmid

    def parallel(self, fn: Callable[[CloneRun], None], clones: Sequence[CloneRun]) -> None:
        """Run ``fn`` for every clone at once; cancel the rest and re-raise the first error."""
        if not clones:
            return
        pool = ThreadPoolExecutor(max_workers=len(clones), thread_name_prefix="verify")
        futures: list[Future[None]] = [pool.submit(fn, c) for c in clones]
        try:
            while True:
                done, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None
                          and not isinstance(f.exception(), _Cancelled)]
                if failed:
                    self.cancel.set()
                    wait(futures)
                    raise failed[0].exception()  # type: ignore[misc]
                if not pending:
                    break
        except BaseException:
            self.cancel.set()
            raise
        finally:
            pool.shutdown(wait=True)
        if self.cancel.is_set():
            raise _Cancelled()

    # -- the whole run ---------------------------------------------------------------------------
    def run(self) -> VerifyReport:
        started = time.monotonic()
        first_stage = len(self.progress.timings)
        report = VerifyReport(template={}, profile=self.config.verify.profile,
                              clone_mode=self.config.verify.clone_mode, started_at=_now_iso())
        error: BaseException | None = None
        with self.signals.installed():
            try:
                self._run(report)
            except KeyboardInterrupt as exc:
                error = exc
            except _Cancelled:
                error = KeyboardInterrupt(self.signals.received or "SIGINT")
            except NixgoldError as exc:
                error = exc
            finally:
                self.cancel.set()
                self.signals.cleaning = True
                cleanup_errors = self._cleanup()
            if self.signals.received and error is None:
                error = KeyboardInterrupt(self.signals.received)
        report.clones = [CloneInfo(vmid=c.vmid, name=c.name, node=c.node, address=c.address,
                                   mode=c.job.mode if c.job.done else None, kept=c.kept, destroyed=c.destroyed,
                                   timings=dict(c.timings))
                         for c in self.clones if c.job.requested]
        report.stages = [StageInfo(s.name, s.seconds, s.ok) for s in self.progress.timings[first_stage:]]
        report.wall_seconds = time.monotonic() - started
        kept = [c for c in self.clones if c.kept]
        if kept and self.key is not None:
            report.ssh_key_file = str(self.key.private_key_file)
            report.ssh_commands = [
                f"ssh -i {self.key.private_key_file} {self.config.verify.ciuser}@{c.address}" if c.address
                else f"# {c.vmid} ({c.name}): no address (the guest agent never reported one)" for c in kept]
        exc_out = self._verdict(report, error, cleanup_errors)

        if report.results:
            print(format_table(report, self.redact), file=self.out, flush=True)
        keep_text = format_keep(report)
        if keep_text:
            print(keep_text, file=self.out, flush=True)
        for path in write_reports(report, junit=self.options.junit, json_path=self.options.json_path,
                                  redact=self.redact):
            self.say(f"wrote {path}")
        if self.key is not None and not kept:
            self.key.remove()
        if exc_out is not None:
            exc_out.report = report  # type: ignore[attr-defined]
            raise exc_out
        return report

    def _verdict(self, report: VerifyReport, error: BaseException | None,
                 cleanup_errors: list[str]) -> BaseException | None:
        """Set outcome and exit code; the exception to raise (None: all passed).

        Precedence: interrupted (130) > infrastructure, including a clone that could not be
        destroyed (6) > a failed check (5) > passed (0).
        """
        if isinstance(error, (KeyboardInterrupt, Interrupted)):
            report.outcome, report.exit_code = "interrupted", int(ExitCode.INTERRUPTED)
            left = [str(c.vmid) for c in self.clones if c.job.requested and not c.destroyed and not c.kept]
            kept = [str(c.vmid) for c in self.clones if c.kept]
            report.error = (f"interrupted by {self.signals.received or 'SIGINT'}; "
                            + (f"clones NOT destroyed: {', '.join(left)}" if left else
                               f"clones kept (--keep): {', '.join(kept)}" if kept else "every clone was destroyed"))
            return Interrupted(report.error)
        if error is not None or cleanup_errors:
            message = "\n".join(([str(error)] if error is not None else []) + cleanup_errors)
            report.outcome = "error"
            report.exit_code = int(getattr(error, "exit_code", ExitCode.INFRA)) if not cleanup_errors \
                else int(ExitCode.INFRA)
            report.error = self.redact(message)
            return error if error is not None and not cleanup_errors else ProxmoxError(report.error)
        failed = report.failed
        if failed:
            report.outcome, report.exit_code = "failed", int(ExitCode.VERIFY)
            names = ", ".join(f"{r.id} on {r.target}" for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
            return ChecksFailed(f"{len(failed)} of {len(report.results)} checks failed: {names}", report)
        report.outcome, report.exit_code = "passed", int(ExitCode.OK)
        return None

    def _run(self, report: VerifyReport) -> None:
        """The stages; results go into ``report.results`` as they come (kept when a later stage fails)."""
        from nixgold.checks import BLOCKING_TEMPLATE_CHECKS, template_checks

        opts, results = self.options, report.results
        with self.progress.stage("finding the template"):
            template = resolve_template(self.client, vmid=opts.vmid, name=opts.name, tag=opts.tag,
                                        default_vmid=self.config.template.vmid, say=self.say)
            self.template = template
            report.template = template.as_dict()
        with self.progress.stage(f"checking the Proxmox config of template {template.vmid} ({template.name})"):
            results.extend(template_checks(template.config, template.description))
        blocking = [r for r in results if r.id in BLOCKING_TEMPLATE_CHECKS and r.outcome in ("failed", "error")]
        if blocking:
            self.say("not cloning: " + "; ".join(f"{r.id}: {r.reason}" for r in blocking))
            return

        count = self.config.verify.clones
        self.key = sshkeys.generate(f"nixgold-verify-{self.run_id}")
        self._secrets += list(self.key.secret_lines)
        mode = self.config.verify.clone_mode
        # PVE makes linked clones of templates by default; full=1 only when asked (or after a refusal).
        full = {"linked": False, "full": True}.get(mode, None if int(template.config.get("template") or 0) else True)
        description = self._description()
        for i in range(1, count + 1):
            job = CloneJob(node=template.node, source=template.vmid, name=clone_name(template.name, i), full=full,
                           description=description, vmid=self.allocate_vmid())
            self.clones.append(CloneRun(index=i, job=job))
        label = "full" if full else "linked"
        with self.progress.stage(f"cloning {template.vmid} -> {', '.join(str(c.vmid) for c in self.clones)} "
                                 f"({label}{', falls back to full' if mode == 'auto' else ''})"):
            self.parallel(self._clone, self.clones)
        with self.progress.stage(f"booting {count} clone{'s' if count > 1 else ''}: waiting for guest agents, "
                                 f"addresses and SSH"), _quiet_paramiko():
            self.parallel(self._boot, self.clones)
        for c in self.clones:
            results.extend(c.boot_results)
        if not all(c.booted for c in self.clones):
            bad = [c for c in self.clones if not c.booted]
            self.say(f"not running the check suite: {len(bad)} of {count} clones did not come up "
                     f"({', '.join(str(c.vmid) for c in bad)})")
            return
        results.extend(self._checks())

    # -- clone ------------------------------------------------------------------------------------
    def _clone(self, c: CloneRun) -> None:
        assert self.template is not None and self.key is not None
        client = self.client
        t0 = time.monotonic()
        try:
            client.run_clone(c.job, timeout=self.task_timeout, allocate=self.allocate_vmid,
                             linked_fallback=self.config.verify.clone_mode == "auto", attempts=CLONE_ATTEMPTS,
                             lock_wait=LOCK_WAIT, cancel=self.cancel.is_set, say=self.say)
        except ProxmoxError as exc:
            if self.cancel.is_set():
                raise _Cancelled() from None
            if LINKED_REFUSED_RE.search(str(exc)) and self.config.verify.clone_mode == "linked":
                raise ProxmoxError(f"{exc}\n  verify.clone_mode = linked, but the template's storage cannot make "
                                   f"linked clones: use auto or full", exc.status) from None
            raise
        config = client.wait_unlocked(c.node, c.vmid, LOCK_WAIT, cancel=self.cancel.is_set)
        c.mac = net0_mac(config)
        values: dict[str, Any] = {"ciuser": self.config.verify.ciuser, "sshkeys": [self.key.public_key],
                                  "ipconfig0": self.config.verify.ipconfig0, "ciupgrade": False,
                                  "tags": VERIFY_TAG}
        if self.config.verify.nameserver:
            values["nameserver"] = self.config.verify.nameserver
        client.set_config(c.node, c.vmid, **values)
        c.disk, size = boot_disk(config)
        upid = client.resize(c.node, c.vmid, c.disk, self.config.verify.disk_grow)
        if upid:
            client.wait_task(upid, self.task_timeout, cancel=self.cancel.is_set)
        after = client.vm_config(c.node, c.vmid)
        _, grown = boot_disk(after)
        c.disk_bytes = grown or ((size or 0) + parse_size(self.config.verify.disk_grow.lstrip("+")))
        c.timings["clone"] = time.monotonic() - t0
        self.say(f"{c.vmid} {c.name}: {c.job.mode} clone ready in {c.timings['clone']:.1f}s "
                 f"({c.disk} grown {self.config.verify.disk_grow} to {c.disk_bytes / 1024 ** 3:.1f} GiB)")

    # -- boot --------------------------------------------------------------------------------------
    def _result(self, check_id: str, target: str, outcome: str, seconds: float, reason: str = "",
                summary: str = "") -> Any:
        from nixgold.checks import CheckResult

        return CheckResult(id=check_id, target=target, outcome=outcome, seconds=round(seconds, 3),
                           reason=reason, summary=summary)

    def _boot(self, c: CloneRun) -> None:
        client = self.client
        upid = client.start(c.node, c.vmid)
        t0 = time.monotonic()
        client.wait_task(upid, self.task_timeout, cancel=self.cancel.is_set)
        deadline = t0 + self.agent_timeout
        last = ""
        while True:
            self.check_cancel()
            try:
                client.agent(c.node, c.vmid, "ping")
                break
            except ProxmoxError as exc:
                if exc.status != 500:
                    raise
                last = str(exc).split(": ", 1)[-1]
                if "No QEMU guest agent configured" in last or re.search(r"VM \d+ is not running", last):
                    c.timings["boot_to_agent"] = time.monotonic() - t0
                    c.boot_results.append(self._result(
                        "boot.agent", c.name, "failed", c.timings["boot_to_agent"], one(last),
                        "the QEMU guest agent answers ping after boot"))
                    return
            if time.monotonic() >= deadline:
                c.timings["boot_to_agent"] = time.monotonic() - t0
                c.boot_results.append(self._result(
                    "boot.agent", c.name, "failed", c.timings["boot_to_agent"],
                    f"guest agent did not answer within {_fmt_duration(self.agent_timeout)} "
                    f"(last: {one(last) or 'no answer'})", "the QEMU guest agent answers ping after boot"))
                self.say(f"{c.vmid} guest agent did not answer within {_fmt_duration(self.agent_timeout)}")
                return
            self.pause(min(AGENT_POLL, max(0.0, deadline - time.monotonic())))
        agent_up = time.monotonic()
        c.timings["boot_to_agent"] = agent_up - t0
        c.boot_results.append(self._result("boot.agent", c.name, "passed", c.timings["boot_to_agent"],
                                           summary="the QEMU guest agent answers ping after boot"))
        # The address: the DHCP lease may come a little after qemu-ga starts.
        deadline = agent_up + self.ssh_timeout
        seen: list[str] = []
        while True:
            self.check_cancel()
            try:
                interfaces = client.agent(c.node, c.vmid, "network-get-interfaces")
                addresses = agent_addresses(interfaces or [], c.mac)
                seen = [a.get("ip-address", "") for i in interfaces or [] for a in i.get("ip-addresses") or []]
            except ProxmoxError as exc:
                if exc.status != 500:
                    raise
                addresses = []
            if addresses:
                c.address = addresses[0]
                break
            if time.monotonic() >= deadline:
                c.boot_results.append(self._result(
                    "boot.address", c.name, "failed", time.monotonic() - agent_up,
                    f"the guest agent reported no usable address within {_fmt_duration(self.ssh_timeout)} "
                    f"(saw: {', '.join(seen) or 'none'})", "the guest agent reports a routable address"))
                return
            self.pause(AGENT_POLL)
        c.timings["agent_to_address"] = time.monotonic() - agent_up
        c.boot_results.append(self._result("boot.address", c.name, "passed", c.timings["agent_to_address"],
                                           summary="the guest agent reports a routable address"))
        self.say(f"{c.vmid} agent up after {c.timings['boot_to_agent']:.1f}s, address {c.address}")
        self._ssh(c, agent_up)

    def _ssh(self, c: CloneRun, agent_up: float) -> None:
        """TCP + key login as ciuser, bounded by verify.ssh_timeout from the moment the agent answered."""
        assert self.key is not None and c.address
        deadline = agent_up + self.ssh_timeout
        user = self.config.verify.ciuser
        last = "no attempt"
        while True:
            self.check_cancel()
            ok, last = ssh_login(c.address, user, self.key.private_key_file,
                                 timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            if ok:
                break
            if time.monotonic() >= deadline:
                c.timings["agent_to_ssh"] = time.monotonic() - agent_up
                c.boot_results.append(self._result(
                    "boot.ssh", c.name, "failed", c.timings["agent_to_ssh"],
                    f"no SSH key login as {user}@{c.address} within {_fmt_duration(self.ssh_timeout)} after "
                    f"the agent came up (last: {last})", "SSH accepts the injected key for the cloud-init user"))
                return
            self.pause(1.0)
        c.timings["agent_to_ssh"] = time.monotonic() - agent_up
        c.boot_results.append(self._result("boot.ssh", c.name, "passed", c.timings["agent_to_ssh"],
                                           summary="SSH accepts the injected key for the cloud-init user"))
        self.say(f"{c.vmid} SSH up {c.timings['agent_to_ssh']:.1f}s after the agent (key login as {user})")

    # -- checks ------------------------------------------------------------------------------------
    def _checks(self) -> list[Any]:
        from nixgold.checks import CheckContext, CloneTarget, run_checks

        assert self.template is not None and self.key is not None
        client, node = self.client, self.template.node
        manifest = self.template.manifest
        ctx = CheckContext(
            profile=self.config.verify.profile,
            nixos_release=manifest.nixos_release if manifest else self.config.nixos.release,
            permit_root_login=self.config.nixos.permit_root_login,
            ciuser=self.config.verify.ciuser,
            injected_public_key=self.key.public_key,
            allowed_keys=tuple(k for u in self.config.users for k in u.ssh_keys),
            clones=tuple(CloneTarget(vmid=c.vmid, name=c.name, node=c.node, address=c.address or "",
                                     ssh_user=self.config.verify.ciuser, ssh_key_file=self.key.private_key_file,
                                     disk_bytes=c.disk_bytes) for c in self.clones),
            agent=lambda vmid, command: client.agent(node, vmid, command),
        )
        extra = [Path(self.config.verify.checks_dir)] if self.config.verify.checks_dir else []
        n = len(self.clones)
        with self.progress.stage(f"running the {self.config.verify.profile} checks on {n} clone{'s' if n > 1 else ''}"):
            results = list(run_checks(ctx, extra))
        if self.signals.received:
            raise KeyboardInterrupt(self.signals.received)
        for c in self.clones:
            c.timings["checks"] = sum(r.seconds for r in results if r.target == c.name)
        counts = {o: sum(1 for r in results if r.outcome == o) for o in ("passed", "failed", "error", "skipped")}
        self.say(f"{len(results)} checks: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        return results

    # -- cleanup -----------------------------------------------------------------------------------
    def _cleanup(self) -> list[str]:
        """Destroy every clone we (may have) created; returns messages for the ones that survive."""
        requested = [c for c in self.clones if c.job.requested]
        for c in requested:  # --keep keeps finished clones; one still being cloned is destroyed
            c.kept = self.options.keep and c.job.done and not c.job.upid
        todo = [c for c in requested if not c.kept]
        if not todo:
            return []
        errors: list[str] = []
        n = len(todo)
        saved_cancel = self.cancel
        self.cancel = threading.Event()  # cleanup itself must not be cancelled
        try:
            with self.progress.stage(f"destroying {n} clone{'s' if n > 1 else ''} "
                                     f"({', '.join(str(c.vmid) for c in todo)})"):
                pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="destroy")
                futures = {pool.submit(self._destroy, c): c for c in todo}
                pool.shutdown(wait=True)
                for fut, c in futures.items():
                    exc = fut.exception()
                    if exc is not None:
                        errors.append(f"could not destroy clone {c.vmid} ({c.name}): {exc}\n  remove it by hand: "
                                      f"qm stop {c.vmid}; qm destroy {c.vmid} --purge 1 --destroy-unreferenced-disks 1")
                if errors:
                    raise ProxmoxError("\n".join(errors))
        except ProxmoxError:
            pass
        finally:
            self.cancel = saved_cancel
        return errors

    def _destroy(self, c: CloneRun) -> None:
        client = self.client
        t0 = time.monotonic()
        job = c.job
        if job.upid:  # the clone task may still be running: let it finish, then destroy its result
            try:
                client.wait_task(job.upid, self.task_timeout)
                job.done = True
            except ProxmoxTaskError:
                pass  # a failed clone task cleans up after itself
            job.upid = None
        res = client.find_vm(c.vmid)
        if res is None:
            c.destroyed = True
            return
        if not job.done:
            # The clone request's outcome is unknown (an error after sending): destroy only what is ours.
            description = str(client.vm_config(c.node, c.vmid).get("description") or "")
            if self._marker() not in description:
                return
        if res.get("lock"):
            client.wait_unlocked(c.node, c.vmid, LOCK_WAIT)
        if client.vm_status(c.node, c.vmid).get("status") != "stopped":
            client.wait_task(client.stop(c.node, c.vmid), self.task_timeout)
        client.wait_task(client.destroy(c.node, c.vmid), self.task_timeout)
        c.destroyed = True
        c.timings["destroy"] = time.monotonic() - t0


def one(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _quiet_paramiko() -> Iterator[None]:
    """paramiko logs every refused banner as an ERROR with a traceback while sshd starts."""
    logger = logging.getLogger("paramiko")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def ssh_login(address: str, user: str, key_file: Path, timeout: float = 10.0) -> tuple[bool, str]:
    """TCP connect to port 22, then a key login as ``user``. (ok, what happened)."""
    import paramiko

    try:
        with socket.create_connection((address, SSH_PORT), timeout=min(timeout, 3.0)):
            pass
    except OSError as exc:
        return False, f"port {SSH_PORT}: {exc.strerror or exc}"
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())  # fresh clone: unknown host key
    try:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key_file))
        client.connect(address, port=SSH_PORT, username=user, pkey=pkey, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, look_for_keys=False, allow_agent=False)
        return True, "ok"
    except paramiko.AuthenticationException as exc:
        return False, f"key rejected for {user} ({exc})"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def run_verify(config: Config, creds: Credentials, options: VerifyOptions, *, progress: Progress,
               out: TextIO, client: ProxmoxClient | None = None) -> VerifyReport:
    """Verify one template end to end (see the module doc); raises with ``.report`` unless all passed."""
    return Verifier(config, creds, options, progress=progress, out=out, client=client).run()
