"""`invoke verify`: prove a template works by cloning, booting and checking throwaway clones.

    report = run_verify(config, creds, VerifyOptions(vmid=9004), progress=Progress(), out=sys.stdout)

Stages (one progress line each, with elapsed time):

1. resolve the template (``--vmid``, ``--name`` unique among templates, or ``--tag``: the newest
   nixgold template with that tag by manifest ``build_time``, else the highest vmid);
2. template pre-checks from its API config (``nixgold.verify.checks.template_checks``); a blocking
   failure (not a template, agent disabled, no cloud-init drive) skips the clone phase;
3. clone ``verify.clones`` times (linked when PVE allows it, see ``verify.clone_mode``), each with
   the run's ephemeral SSH key, ``ciuser``, ``ipconfig0``, ``ciupgrade=0`` and a grown boot disk;
4. boot them in parallel: guest agent ``ping`` -> address from ``network-get-interfaces`` ->
   SSH key login. A guest that never gets there is a failed check (``boot.agent``,
   ``boot.address``, ``boot.ssh``: the image's fault, exit 5), not an infrastructure error;
   each clone's own checks run as soon as it answers SSH (a child process per clone,
   ``nixgold.verify.checks.start_checks``, started when the clone is made: it loads and collects
   the suite while the guest boots; the clones at the same time), in the same stage as 3 and 4;
5. the checks across clones (machine-id, host keys) once every clone is in, from the facts the
   clones' runs gathered; the results are merged in the suite's order (by check, then by clone);
6. destroy every clone (also on failure, SIGINT, SIGTERM) unless ``--keep``.

Exit: the returned report has ``exit_code`` 0; otherwise an exception with ``.report`` set:
:class:`ChecksFailed` (5), :class:`~nixgold.errors.ProxmoxError` (6),
:class:`~nixgold.errors.Interrupted` (130), :class:`TemplateSelectionError` (2).
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import logging
import os
import re
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

from nixgold.config.credentials import Credentials
from nixgold.config.model import Config
from nixgold.errors import ExitCode, Interrupted, NixgoldError, ProxmoxError, ProxmoxTaskError, VerifyError
from nixgold.progress import Progress
from nixgold.proxmox.agent import agent_addresses
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import (
    LINKED_REFUSED_RE,
    CloneJob,
    Owner,
    destroy_vm,
    owner_of,
    run_clone,
    settled_config,
    unanswered_clone_tasks,
    verify_marker,
)
from nixgold.secrets import Redactor
from nixgold.signals import Cancel, Cancelled, handle_signals
from nixgold.text import one_line
from nixgold.units import duration_seconds, fmt_duration, parse_size
from nixgold.verify import keys as sshkeys
from nixgold.verify.clones import (
    AGENT_POLL,
    CLONE_ATTEMPTS,
    LOCK_WAIT,
    VERIFY_TAG,
    CloneRun,
    boot_disk,
    clone_name,
    net0_mac,
    ssh_login,
)
from nixgold.verify.report import CloneInfo, StageInfo, VerifyReport, format_keep, format_table, write_reports
from nixgold.verify.select import Template, resolve_template
from nixgold.verify.ssh import quiet as ssh_quiet

if TYPE_CHECKING:  # the suite is imported when a run needs it (it pulls in pytest's plugin side lazily)
    from nixgold.verify.checks import CheckChild, CheckContext, CheckResult, CheckRun

log = logging.getLogger("nixgold.verify")

class ChecksFailed(VerifyError):
    """At least one check failed; ``report`` holds everything."""

    def __init__(self, message: str, report: VerifyReport):
        self.report = report
        super().__init__(message)

@dataclass(frozen=True)
class VerifyOptions:
    vmid: int | None = None
    name: str | None = None
    tag: str | None = None
    keep: bool = False
    junit: Path | None = None
    json_path: Path | None = None
    insecure: bool = False

def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

# --- the run -----------------------------------------------------------------------------------
class Verifier:
    def __init__(self, config: Config, creds: Credentials, options: VerifyOptions, *, progress: Progress,
                 out: TextIO, client: ProxmoxClient | None = None, redactor: Redactor | None = None,
                 cancel: Cancel | None = None):
        self.config = config
        self.creds = creds
        self.options = options
        self.progress = progress
        self.out = out
        self._client = client
        self.run_id = uuid.uuid4().hex[:12]
        self.cancel = cancel or Cancel()  # signals and a failing worker set it; workers poll it
        self._give_up: Callable[[], bool] = lambda: False  # cleanup: a further signal ends a clone-task wait
        # how long cleanup looks for the VM or task of a clone request that got no answer (None: the
        # client's read timeout)
        self.unanswered_grace: float | None = None
        self.check_warnings: list[str] = []  # what the check suite said about itself (shown once)
        self.clones: list[CloneRun] = []
        self._lock = threading.Lock()  # the vmids and addresses the clones of this run took
        self._used_vmids: set[int] = set()
        self._addresses: dict[str, str] = {}  # address -> the clone that reported it first
        self.key: sshkeys.EphemeralKey | None = None
        self.template: Template | None = None
        #: The run of the checks across clones, started (collecting the suite) when all clones but
        #: one have ended their own pipeline, each booted (by then a core is free, and it is ready
        #: when the last is in), or at the stage's start with one clone; else when it is needed.
        self._cross: CheckChild | None = None
        self._ended = 0  # clones whose pipeline ended (checked, failed to boot, or failed)
        self._all_booted = True  # every clone whose pipeline ended came up
        self.task_timeout = duration_seconds(config.build.task_timeout)
        self.agent_timeout = duration_seconds(config.verify.agent_timeout)
        self.ssh_timeout = duration_seconds(config.verify.ssh_timeout)
        self.redactor = redactor or Redactor(creds.secrets)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def client(self) -> ProxmoxClient:
        if self._client is None:
            self._client = ProxmoxClient(self.creds, timeout=self.config.proxmox.timeout,
                                         insecure=self.options.insecure)
        return self._client

    def redact(self, text: str) -> str:
        return self.redactor(text)

    def say(self, text: str) -> None:
        self.progress.line(self.redact(text))

    def check_cancel(self) -> None:
        self.cancel.check()

    def pause(self, seconds: float) -> None:
        self.cancel.sleep(seconds)

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
        return verify_marker(self.run_id)

    def allocate_vmid(self) -> int:
        with self._lock:
            vmid = self.client.next_vmid(exclude=self._used_vmids)
            self._used_vmids.add(vmid)
            return vmid

    def claim_address(self, clone: str, address: str) -> str | None:
        """Record that ``clone`` answers at ``address``; the other clone of this run that reported it
        first, if any (then SSH cannot tell the two apart: whatever answers ARP last gets the login)."""
        with self._lock:
            first = self._addresses.setdefault(address, clone)
        return None if first == clone else first

    def parallel(self, fn: Callable[[CloneRun], None], clones: Sequence[CloneRun]) -> None:
        """Run ``fn`` for every clone at once; cancel the rest and re-raise the first error.

        The main thread only waits here (polling the cancel token: a signal is noticed within
        0.25 s); the workers poll the same token in their own waits."""
        if not clones:
            return
        pool = ThreadPoolExecutor(max_workers=len(clones), thread_name_prefix="verify")
        futures: list[Future[None]] = [pool.submit(fn, c) for c in clones]
        try:
            while True:
                done, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None
                          and not isinstance(f.exception(), Cancelled)]
                if failed:
                    self.cancel.abort("a clone failed")
                    wait(futures)
                    raise failed[0].exception()  # type: ignore[misc]
                if not pending:
                    break
                self.check_cancel()
        except BaseException:
            self.cancel.abort("stopping")
            raise
        finally:
            pool.shutdown(wait=True)
        self.check_cancel()

    # -- the whole run ---------------------------------------------------------------------------
    def run(self) -> VerifyReport:
        started = time.monotonic()
        first_stage = len(self.progress.timings)
        report = VerifyReport(template={}, profile=self.config.verify.profile,
                              clone_mode=self.config.verify.clone_mode, started_at=_now_iso())
        error: BaseException | None = None
        cleanup_errors: list[str] = []
        with handle_signals(self.cancel):
            try:
                try:
                    self._run(report)
                except Cancelled:
                    error = Interrupted(self.cancel.reason or "cancelled")
                except NixgoldError as exc:
                    error = exc
                finally:
                    cleanup_errors = self._cleanup()  # it always finishes; a signal ends only a clone-task wait
                if self.cancel.interrupted_by and not isinstance(error, Interrupted):
                    error = Interrupted(self.cancel.interrupted_by)
                report.clones = [CloneInfo(vmid=c.vmid, name=c.name, node=c.node, address=c.address,
                                           mode=c.job.mode if c.job.done else None, kept=c.kept,
                                           destroyed=c.destroyed, timings=dict(c.timings))
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
            finally:
                # The key lives exactly as long as the run (whatever ends it), unless clones are kept.
                if self.key is not None and not any(c.kept for c in self.clones):
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
        if isinstance(error, Interrupted):
            report.outcome, report.exit_code = "interrupted", int(ExitCode.INTERRUPTED)
            left = [str(c.vmid) for c in self.clones if c.job.requested and not c.destroyed and not c.kept]
            kept = [str(c.vmid) for c in self.clones if c.kept]
            report.error = self.redact(
                f"interrupted by {self.cancel.interrupted_by or 'SIGINT'}; "
                + (f"clones NOT destroyed: {', '.join(left)}" if left else
                   f"clones kept (--keep): {', '.join(kept)}" if kept else "every clone was destroyed")
                + "".join(f"\n{e}" for e in cleanup_errors))  # why each was not, and how to remove it
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
        from nixgold.verify.checks import BLOCKING_TEMPLATE_CHECKS, template_checks

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
        self.redactor.add(*self.key.secret_lines)
        mode = self.config.verify.clone_mode
        # PVE makes linked clones of templates by default; full=1 only when asked (or after a refusal).
        full = {"linked": False, "full": True}.get(mode, None if int(template.config.get("template") or 0) else True)
        description = self._description()
        for i in range(1, count + 1):
            job = CloneJob(node=template.node, source=template.vmid, name=clone_name(template.name, i), full=full,
                           description=description, vmid=self.allocate_vmid())
            self.clones.append(CloneRun(index=i, job=job))
        label = "full" if full else "linked"
        ids = ", ".join(str(c.vmid) for c in self.clones)
        try:
            self._clones_and_checks(report, count, mode, label, ids)
        finally:
            if self._cross is not None:  # not handed its clones (one did not come up, an error, a signal)
                self._cross.stop()

    def _clones_and_checks(self, report: VerifyReport, count: int, mode: str, label: str, ids: str) -> None:
        assert self.template is not None
        template, results = self.template, report.results
        if count == 1:
            self._start_cross()
        # Each clone goes its own way at once: clone, boot (agent, address, SSH), its checks as soon
        # as it answers SSH; the checks across clones run when all are in.
        with self.progress.stage(f"cloning {template.vmid} -> {ids} ({label}"
                                 f"{', falls back to full' if mode == 'auto' else ''}), booting and checking each "
                                 f"as soon as it answers SSH"), ssh_quiet():
            self.parallel(self._pipeline, self.clones)
        for c in self.clones:
            results.extend(c.boot_results)
        booted = [c for c in self.clones if c.booted]
        runs = [c.check_run for c in booted if c.check_run is not None]
        if len(booted) < count:
            bad = [c for c in self.clones if not c.booted]
            self.say(f"not running the checks across clones: {len(bad)} of {count} clones did not come up "
                     f"({', '.join(str(c.vmid) for c in bad)})")
        else:
            facts = {name: answers for run in runs for name, answers in run.facts.items()}
            across = f"the {count} clones" if count > 1 else "clones on the one clone"
            with self.progress.stage(f"running the checks across {across} (machine-id, host keys)"):
                runs.append(self._run_checks(booted, scope="cross", facts=facts, child=self._start_cross()))
        results.extend(merged_results(runs, [c.name for c in self.clones]))
        suite = [r for r in results if not r.id.startswith(("template.", "boot."))]
        counts = {o: sum(1 for r in suite if r.outcome == o) for o in ("passed", "failed", "error", "skipped")}
        if suite:
            self.say(f"{len(suite)} checks: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))

    def _start_cross(self) -> CheckChild:
        """The run of the checks across clones, started now if it is not yet (it collects the suite
        and waits for the clones' facts)."""
        with self._lock:
            if self._cross is None:
                self._cross = self._start_checks(self.clones, scope="cross")
            return self._cross

    def _pipeline(self, c: CloneRun) -> None:
        """One clone, start to end: clone, boot, then its own checks right away. The check child
        starts with the boot (it imports pytest and collects the suite while the guest boots)."""
        child: CheckChild | None = None
        try:
            self._clone(c)
            child = self._start_checks([c], scope="clone")
            self._boot(c)
            if c.booted:
                t0 = time.monotonic()
                c.check_run = self._run_checks([c], scope="clone", child=child)
                c.timings["checks"] = time.monotonic() - t0
        finally:
            if child is not None:
                child.stop()
            with self._lock:
                self._ended += 1
                self._all_booted = self._all_booted and c.booted
                last_one_left = self._ended == len(self.clones) - 1 and self._all_booted
        if last_one_left and not self.cancel.is_set:
            self._start_cross()
        if c.check_run is not None:
            gathered = c.check_run.gather_seconds.get(c.name)
            if gathered is not None:
                c.timings["checks_facts"] = gathered
            failed = sum(1 for r in c.check_run.results if r.outcome in ("failed", "error"))
            self.say(f"{c.vmid} checked in {c.timings['checks']:.1f}s: {len(c.check_run.results)} checks, "
                     f"{failed} failed")

    # -- clone ------------------------------------------------------------------------------------
    def _clone(self, c: CloneRun) -> None:
        assert self.template is not None and self.key is not None
        client = self.client
        t0 = time.monotonic()
        try:
            run_clone(client, c.job, timeout=self.task_timeout, allocate=self.allocate_vmid,
                             linked_fallback=self.config.verify.clone_mode == "auto", attempts=CLONE_ATTEMPTS,
                             lock_wait=LOCK_WAIT, cancel=lambda: self.cancel.is_set, say=self.say)
        except ProxmoxError as exc:
            if self.cancel.is_set:
                raise Cancelled() from None
            if LINKED_REFUSED_RE.search(str(exc)) and self.config.verify.clone_mode == "linked":
                raise ProxmoxError(f"{exc}\n  verify.clone_mode = linked, but the template's storage cannot make "
                                   f"linked clones: use auto or full", exc.status) from None
            raise
        config = client.wait_unlocked(c.node, c.vmid, LOCK_WAIT, cancel=lambda: self.cancel.is_set)
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
            client.wait_task(upid, self.task_timeout, cancel=lambda: self.cancel.is_set)
        after = client.vm_config(c.node, c.vmid)
        _, grown = boot_disk(after)
        c.disk_bytes = grown or ((size or 0) + parse_size(self.config.verify.disk_grow.lstrip("+")))
        c.timings["clone"] = time.monotonic() - t0
        self.say(f"{c.vmid} {c.name}: {c.job.mode} clone ready in {c.timings['clone']:.1f}s "
                 f"({c.disk} grown {self.config.verify.disk_grow} to {c.disk_bytes / 1024 ** 3:.1f} GiB)")

    # -- boot --------------------------------------------------------------------------------------
    def _result(self, check_id: str, target: str, outcome: str, seconds: float, reason: str = "",
                summary: str = "") -> Any:
        from nixgold.verify.checks import CheckResult

        return CheckResult(id=check_id, target=target, outcome=outcome, seconds=round(seconds, 3),
                           reason=reason, summary=summary)

    def _boot(self, c: CloneRun) -> None:
        client = self.client
        upid = client.start(c.node, c.vmid)
        t0 = time.monotonic()
        client.wait_task(upid, self.task_timeout, cancel=lambda: self.cancel.is_set)
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
                        "boot.agent", c.name, "failed", c.timings["boot_to_agent"], one_line(last),
                        "the QEMU guest agent answers ping after boot"))
                    return
            if time.monotonic() >= deadline:
                c.timings["boot_to_agent"] = time.monotonic() - t0
                c.boot_results.append(self._result(
                    "boot.agent", c.name, "failed", c.timings["boot_to_agent"],
                    f"guest agent did not answer within {fmt_duration(self.agent_timeout)} "
                    f"(last: {one_line(last) or 'no answer'})", "the QEMU guest agent answers ping after boot"))
                self.say(f"{c.vmid} guest agent did not answer within {fmt_duration(self.agent_timeout)}")
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
                    f"the guest agent reported no usable address within {fmt_duration(self.ssh_timeout)} "
                    f"(saw: {', '.join(seen) or 'none'})", "the guest agent reports a routable address"))
                return
            self.pause(AGENT_POLL)
        c.timings["agent_to_address"] = time.monotonic() - agent_up
        other = self.claim_address(c.name, c.address)
        if other is not None:  # no SSH or checks through an address that two clones answer at
            c.boot_results.append(self._result(
                "boot.address", c.name, "failed", c.timings["agent_to_address"],
                f"the guest agent reports {c.address}, which clone {other} reported first: two clones answer at "
                f"one address, so neither can be checked over SSH for certain (they share a DHCP identity: a "
                f"client id or DUID baked into the template, often derived from /etc/machine-id)",
                "the guest agent reports a routable address"))
            self.say(f"{c.vmid} reports address {c.address}, which {other} has too")
            return
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
                    f"no SSH key login as {user}@{c.address} within {fmt_duration(self.ssh_timeout)} after "
                    f"the agent came up (last: {last})", "SSH accepts the injected key for the cloud-init user"))
                return
            self.pause(1.0)
        c.timings["agent_to_ssh"] = time.monotonic() - agent_up
        c.boot_results.append(self._result("boot.ssh", c.name, "passed", c.timings["agent_to_ssh"],
                                           summary="SSH accepts the injected key for the cloud-init user"))
        self.say(f"{c.vmid} SSH up {c.timings['agent_to_ssh']:.1f}s after the agent (key login as {user})")

    # -- checks ------------------------------------------------------------------------------------
    def _context(self, clones: Sequence[CloneRun], agent: Any) -> CheckContext:
        from nixgold.verify.checks import CheckContext, CloneTarget

        assert self.template is not None and self.key is not None
        manifest = self.template.manifest
        return CheckContext(
            profile=self.config.verify.profile,
            nixos_release=manifest.nixos_release if manifest else self.config.nixos.release,
            permit_root_login=self.config.nixos.permit_root_login,
            ciuser=self.config.verify.ciuser,
            injected_public_key=self.key.public_key,
            allowed_keys=tuple(k for u in self.config.users for k in u.ssh_keys),
            clones=tuple(CloneTarget(vmid=c.vmid, name=c.name, node=c.node, address=c.address or "",
                                     ssh_user=self.config.verify.ciuser, ssh_key_file=self.key.private_key_file,
                                     disk_bytes=c.disk_bytes) for c in clones),
            agent=agent,
        )

    def _extra_dirs(self) -> list[Path]:
        return [Path(self.config.verify.checks_dir)] if self.config.verify.checks_dir else []

    def _start_checks(self, clones: Sequence[CloneRun], *, scope: str) -> CheckChild:
        """A check child for ``clones`` (as planned: names and vmids), collecting the suite until
        :meth:`_run_checks` hands it their final context."""
        from nixgold.verify.checks import AgentAnswers, start_checks

        return start_checks(self._context(clones, AgentAnswers()), self._extra_dirs(), scope=scope)

    def _run_checks(self, clones: Sequence[CloneRun], *, scope: str, child: CheckChild,
                    facts: dict[str, list[dict[str, Any]]] | None = None) -> CheckRun:
        """The check suite (``child``, started by :meth:`_start_checks`) for ``clones``; the agent
        answers it needs are asked here first: by the time the injected key logs in (cloud-init's
        config stage) the init stage has set the hostname (cloud-init.nix: update_hostname in
        cloud_init_modules)."""
        from nixgold.verify.checks import AGENT_COMMANDS, AgentAnswers

        assert self.template is not None
        client, node = self.client, self.template.node
        answers = AgentAnswers()
        if scope != "cross":
            for c in clones:
                for command in AGENT_COMMANDS:
                    answers.record(c.vmid, command, functools.partial(client.agent, node, c.vmid, command))
        child.go(self._context(clones, answers), facts)
        run = child.wait(cancelled=lambda: self.cancel.is_set)
        for warning in run.warnings:
            if warning not in self.check_warnings:
                self.check_warnings.append(warning)
                self.say(f"check suite: {warning}")
        return run

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
        # The destroy calls do not poll the token: a signal now only counts. Waiting for a clone task
        # (minutes, for a full copy) is the one wait a further signal ends: that clone is then left,
        # named in the verdict with how to remove it.
        signals = self.cancel.count
        self._give_up = lambda: self.cancel.count > signals
        with self.progress.stage(f"destroying {n} clone{'s' if n > 1 else ''} ({', '.join(str(c.vmid) for c in todo)})"):
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="destroy") as pool:
                futures = {pool.submit(self._destroy, c): c for c in todo}
            for fut, c in futures.items():
                exc = fut.exception()
                if exc is not None:
                    errors.append(f"could not destroy clone {c.vmid} ({c.name}): {exc}\n  remove it by hand: "
                                  f"qm stop {c.vmid}; qm destroy {c.vmid} --purge 1 --destroy-unreferenced-disks 1")
        return errors

    def _destroy(self, c: CloneRun) -> None:
        client = self.client
        t0 = time.monotonic()
        job = c.job
        if job.upid:  # the clone task may still be running: let it finish, then destroy its result
            try:
                client.wait_task(job.upid, self.task_timeout, cancel=self._give_up)
                job.done = True
            except ProxmoxTaskError as exc:
                self._raise_if_still_running(c, exc)
                # else: a failed clone task cleans up after itself
            job.upid = None
        res = client.find_vm(c.vmid)
        if res is None and job.requested and not job.answered and not job.done:
            res = self._wait_for_unanswered_clone(c)
            if res is None:  # its task failed, and PVE removed what it had made
                c.destroyed = True
                return
        # Only a VM that carries this run's marker is ours (also when the clone request's outcome is
        # unknown, or another client took the vmid meanwhile). A clone task still running whose UPID
        # never reached us (the request cut by a signal or an error) shows PVE's temporary config,
        # without the marker (settled_config): its marker is read once that task is done.
        try:
            config = None if res is None else settled_config(
                client, c.node, c.vmid, LOCK_WAIT if job.done else self.task_timeout, say=self._say_wait,
                cancel=self._give_up)
        except ProxmoxError:
            if self._give_up():
                raise ProxmoxError(self._left(c, "stopped waiting for the lock: clone on it (its clone task "
                                                 "still runs) on a further signal")) from None
            raise
        if config is None:  # never made, or the clone task failed and PVE removed it
            if res is not None:
                self.say(f"clone {c.vmid}: its clone task failed and PVE removed what it had made")
            c.destroyed = True
            return
        if owner_of(config) != Owner("verify", self.run_id):
            self.say(f"vmid {c.vmid} does not carry this run's marker ({self._marker()}): leaving it alone")
            return
        destroy_vm(client, c.node, c.vmid, timeout=self.task_timeout, lock_wait=LOCK_WAIT)
        c.destroyed = True
        c.timings["destroy"] = time.monotonic() - t0

    def _wait_for_unanswered_clone(self, c: CloneRun) -> dict[str, Any] | None:
        """No VM at ``c.vmid`` although its clone request went out and got no answer. Its task, if PVE
        started one, creates the VM only once it holds its locks (unanswered_clone_tasks), and PVE
        forks it only after the request's early checks (qemu-server clone_vm: ``$load_and_check->()``,
        then ``fork_worker``): so look (the tasks first, then the VM: a task that ends in between has
        written it) until the VM shows up, or one of the tasks turns out to be this one and failed
        (None), for ``unanswered_grace`` after the last task ended (the client's own read timeout:
        PVE took longer than that to answer). Then the outcome is unknown: an error naming the clone,
        never "destroyed"."""
        client, job = self.client, c.job
        grace = self.unanswered_grace if self.unanswered_grace is not None else float(client.timeout)
        deadline = time.monotonic() + grace
        waited: set[str] = set()
        while True:
            pending = [u for u in unanswered_clone_tasks(client, job) if u not in waited]
            res = client.find_vm(c.vmid)
            if res is not None:
                return res
            if pending:
                self._say_wait(f"clone {c.vmid}: its clone request got no answer; waiting for {len(pending)} "
                               f"clone task{'s' if len(pending) > 1 else ''} of {job.source}")
                for upid in pending:
                    waited.add(upid)
                    try:
                        client.wait_task(upid, self.task_timeout, cancel=self._give_up)
                    except ProxmoxTaskError as exc:
                        self._raise_if_still_running(c, exc)
                        # qemu-server clone_vm prints "creating a clone of VM <src> with ID <newid>" once it
                        # holds the locks (the log's first line: a full copy's progress lines follow);
                        # its error path removes the new VM's config ("unlink $conffile")
                        if any(f"with ID {c.vmid}" in line for line in client.task_log(upid)):
                            return None
                deadline = time.monotonic() + grace
                continue
            if time.monotonic() >= deadline or self._give_up():
                raise ProxmoxError(self._left(
                    c, f"its clone request got no answer, and neither VM {c.vmid} nor a clone task of "
                       f"{job.source} by {client.authid} appeared within {fmt_duration(grace)}"))
            client.sleep(1.0)

    def _say_wait(self, message: str) -> None:
        """A wait for a clone task during cleanup, and how to stop it."""
        self.say(message + f"; {'another' if self.cancel.count else 'a'} signal (Ctrl-C) stops the wait "
                           f"and leaves the clone")

    def _raise_if_still_running(self, c: CloneRun, exc: ProxmoxTaskError) -> None:
        """After a wait for a clone task ended in ``exc``: raise, naming the clone, when the task may still
        run (a further signal ended the wait, or task_timeout did); return when the task failed."""
        if not exc.still_running:
            return
        if self._give_up():
            raise ProxmoxError(self._left(c, f"stopped waiting for clone task {exc.upid} on a further signal"))
        raise ProxmoxError(self._left(c, f"clone task {exc.upid} still runs after "
                                         f"{fmt_duration(self.task_timeout)} (verify.task_timeout)"))

    def _left(self, c: CloneRun, why: str) -> str:
        """Why clone ``c`` may be left, and what to check before removing it by hand."""
        return (f"{why}: PVE may still create VM {c.vmid}; once no task of it runs, remove it only if "
                f"its description carries '{self._marker()}'")


def run_verify(config: Config, creds: Credentials, options: VerifyOptions, *, progress: Progress,
               out: TextIO, client: ProxmoxClient | None = None, redactor: Redactor | None = None,
               cancel: Cancel | None = None) -> VerifyReport:
    """Verify one template end to end (see the module doc); raises with ``.report`` unless all passed."""
    return Verifier(config, creds, options, progress=progress, out=out, client=client, redactor=redactor,
                    cancel=cancel).run()


def merged_results(runs: Sequence[CheckRun], clone_names: Sequence[str]) -> list[CheckResult]:
    """Results of several check runs in the suite's order: by check, then by clone (as one pytest
    run over every clone would list them). What every run reports alike (a check module that does
    not import: ``checks.collect``, first as in one run) is listed once."""
    order: list[str] = []
    for run in runs:
        order += [i for i in run.order if i not in order]
    position = {name: n for n, name in enumerate(clone_names)}
    everything = list({(r.id, r.target, r.outcome, r.reason): r for run in runs for r in run.results}.values())
    return sorted(everything, key=lambda r: (order.index(r.id) if r.id in order else -1,
                                             position.get(r.target, -1)))
