"""`invoke build-template`: preflight, render into ``build/<id>/``, run Packer, check the result.

    result = run_build(config, creds, BuildOptions(replace=False), progress=Progress(), out=sys.stdout)

1. Packer present + dialect, config + lock (:func:`nixgold.render.files.prepare_inputs`, ISO required);
2. preflight (:mod:`nixgold.build.preflight`): everything checkable before the long build. Nothing
   is written or changed before it passes (``packer init``, if the plugin is missing, gets a
   rendered copy in a temporary directory);
3. ``build/<id>/``: the rendered ``packer/`` and ``http/`` (plus ``$NIXGOLD_RENDER_OVERLAY``, a
   test hook whose files replace rendered files of the same relative path: loud warning,
   ``"overlay": true`` in the manifest), the per-build key pair (``build_key`` 0600,
   ``build_key.pub``; the bundled dialect also serves it as ``http/build_key.pub``),
   ``packer.log`` and finally ``manifest.json`` + ``build.json``;
4. ``packer validate``; the install status endpoint (:mod:`nixgold.build.install_status`); with
   ``--replace`` the old template is destroyed now (not earlier);
5. ``packer build`` under pexpect (:mod:`nixgold.packer.runner`): one progress line per stage, the
   full (redacted) output in ``packer.log``; secrets only in Packer's environment
   (``PKR_VAR_proxmox_password``/``_token``), the private key only as a 0600 file path,
   ``SSL_CERT_FILE`` = ``PROXMOX_CA_BUNDLE`` (never ``insecure_skip_tls_verify``). The build VM's
   name carries the build id (:func:`nixgold.proxmox.vms.build_vm_name`): the ownership proof;
6. success: the template's description is read back and must be this build's manifest; the
   bundled dialect sets ``serial0: socket`` and the tags through the API (Packer 1.6 cannot);
7. failure: :class:`~nixgold.errors.BuildError` naming the stage with Packer's last lines; no VM
   of the build is left (checked through the API, destroyed if Packer did not and it carries this
   build's id) unless ``--keep-on-error`` (``-on-error=abort``), which prints how to inspect it.
   A cleanup that fails too is reported with the build's error, never instead of it.
   SIGINT/SIGTERM (:mod:`nixgold.signals`): forwarded to Packer, its cleanup awaited, then the
   same API check -> :class:`~nixgold.errors.Interrupted` (130).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from nixgold.bootcmd.stats import stats as boot_stats
from nixgold.build import keys as buildkeys
from nixgold.build.install_status import InstallReport, InstallStatusServer, report_token
from nixgold.build.preflight import PreflightResult, check_packer, packer_identity, run_preflight
from nixgold.build.provenance import git_commit, new_build_id
from nixgold.config.credentials import Credentials
from nixgold.config.model import Config
from nixgold.errors import BuildError, Interrupted, NixgoldError
from nixgold.lock import lock_path, read_lock
from nixgold.packer.env import packer_environment, tool_environment
from nixgold.packer.output import STAGE_BOOT_WAIT, STAGE_INSTALL, STAGE_ISO, STAGE_START, STAGE_TYPING, StageSpan, \
    StageTracker, machine_readable_spellings
from nixgold.packer.runner import BuildOutcome, PackerRunner
from nixgold.progress import Progress, StageTiming
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import Owner, build_vm_name, destroy_vm, merged_tags, owner_of
from nixgold.render.files import OVERLAY_ENV, apply_overlay, prepare_inputs, render_files, write_files
from nixgold.render.inputs import BUILD_KEY_PUB, HTTP_DIR, PACKER_DIR, RenderInputs
from nixgold.render.manifest import MARKER_KEY, NIXGOLD_TAG, ManifestError, parse_manifest
from nixgold.secrets import Redactor
from nixgold.signals import Cancel, handle_signals
from nixgold.units import duration_seconds

log = logging.getLogger("nixgold.build")

#: Packer 1.6.6's stepFinalizeISOTemplate error on PVE >= 7 (see Builder._packer166_unmount_bug).
UNMOUNT_BUG = "Cannot eject ISO from cdrom drive, ide2 is not present, or not a cdrom media"
HEARTBEAT = 300.0  # seconds between "still waiting" lines


@dataclass(frozen=True)
class BuildOptions:
    replace: bool = False
    keep_on_error: bool = False
    verify: bool = False
    build_id: str | None = None
    cleanup_timeout: float = 900.0  # how long Packer may take to clean up after an interrupt


@dataclass
class BuildResult:
    build_id: str
    build_dir: Path
    dialect: str
    vmid: int
    name: str
    node: str
    manifest: dict[str, Any]
    overlay: bool
    stages: list[dict[str, Any]] = field(default_factory=list)
    keystrokes: int = 0
    typing_estimate_seconds: float = 0.0
    wall_seconds: float = 0.0
    verify_report: Any = None  # set by nixgold.commands.build when --verify ran


class Builder:
    def __init__(self, config: Config, creds: Credentials, options: BuildOptions, *, progress: Progress, out: TextIO,
                 env: Mapping[str, str] | None = None, redactor: Redactor | None = None, cancel: Cancel | None = None,
                 client_factory: Callable[[Credentials], ProxmoxClient] | None = None):
        self.config = config
        self.creds = creds
        self.options = options
        self.progress = progress
        self.out = out
        self.env = dict(os.environ if env is None else env)
        self.redactor = redactor or Redactor(creds.secrets)
        self.redactor.add_spelling(machine_readable_spellings)
        self.cancel = cancel or Cancel()
        self._client: ProxmoxClient | None = None
        self._client_factory = client_factory or (lambda c: ProxmoxClient(c, timeout=config.proxmox.timeout))
        self.dialect = ""
        self.build_id = options.build_id or new_build_id()
        self.vm_name = build_vm_name(config.template.name, self.build_id)
        self.build_dir = Path(config.build.output_dir) / self.build_id
        self.log: TextIO | None = None
        self._runner: PackerRunner | None = None
        self._install_status: InstallStatusServer | None = None
        self._install_started: float | None = None
        self._install_last: InstallReport | None = None
        self._install_failed: InstallReport | None = None
        self._no_report_warned = False
        self._last_beat = 0.0
        self._iso_detail = ""

    # -- helpers ---------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.progress.line(self.redactor(text))

    def client(self) -> ProxmoxClient:
        if self._client is None:
            self._client = self._client_factory(packer_identity(self.dialect, self.creds))
        return self._client

    def _check_cancel(self, what: str) -> None:
        """Between stages: a signal that came while nothing was running for it to stop."""
        if self.cancel.is_set:
            raise Interrupted(f"interrupted by {self.cancel.interrupted_by} {what}")

    def _stage_line(self, old: StageSpan | None, new: StageSpan) -> None:
        if old is not None:
            self.progress.timings.append(StageTiming(f"packer: {old.name}", old.seconds, ok=True))
        detail = {
            STAGE_ISO: self._iso_detail,
            STAGE_BOOT_WAIT: f" ({self.config.build.boot_wait} for the ISO's boot menu)",
            STAGE_TYPING: f" ({self._typing.keystrokes} keys at {self.config.build.key_interval}/key, "
                          f"{self._typing.wait_seconds:.0f}s of waits)",
            STAGE_INSTALL: f" (install.sh runs, the VM reboots; ssh_timeout {self.config.build.ssh_timeout})",
        }.get(new.name, "")
        took = f" ({old.name} took {old.seconds:.1f}s)" if old is not None else ""
        self.say(f"packer: {new.name}{detail} ...{took}")

    def _tick(self, tracker: StageTracker) -> None:
        self._install_reports()
        span = tracker.spans[-1] if tracker.spans else None
        if span is None:
            return
        wait = duration_seconds(self.config.build.install_report_wait)
        if (span.name == STAGE_INSTALL and self._install_status is not None and self._install_started is None
                and wait > 0 and span.seconds >= wait and not self._no_report_warned):
            self._no_report_warned = True
            self.say(f"install: WARNING: no report from install.sh {self.config.build.install_report_wait} after the "
                     f"boot command (build.install_report_wait). {self._no_report_causes()} Packer keeps waiting for "
                     f"SSH until build.ssh_timeout ({self.config.build.ssh_timeout}); Ctrl-C stops it.")
        if time.monotonic() - max(self._last_beat, span.started) >= HEARTBEAT:
            self._last_beat = time.monotonic()
            where = ""
            if self._install_last is not None and self._install_last.state == "running":
                where = f"; install: {self._install_line(self._install_last)}"
            self.say(f"packer: still {span.name} ({span.seconds / 60:.0f} min{where})")

    def _no_report_causes(self) -> str:
        """Why install.sh may not have reported at all (the boot command typed, the installer silent)."""
        b = self.config.build
        return (f"Either it never started: the keys came before the ISO's shell was ready (raise "
                f"build.live_boot_wait, now {b.live_boot_wait}; the VM's console in Proxmox shows the typed line or "
                f"its absence), or it cannot fetch from Packer's HTTP server; or it runs but its reports do not reach "
                f"this machine's port {b.status_port} (build.status_port: open it like build.http_port, or 0 to build "
                f"without reports).")

    def _install_line(self, report: InstallReport) -> str:
        assert self._install_started is not None
        elapsed = report.received - self._install_started
        return f"{report.name} ({report.position}) {int(elapsed // 60)}m{int(elapsed % 60):02d}s"

    def _install_reports(self) -> None:
        """Show install.sh's new reports; on a failure stop Packer at once (it then cleans up)."""
        if self._install_status is None:
            return
        for report in self._install_status.take():
            if self._install_started is None:
                self._install_started = report.received
            last, self._install_last = self._install_last, report
            if report.state == "running" and (last is None or (last.step, last.state) != (report.step, report.state)):
                self.say(f"install: {self._install_line(report)}")
            elif report.state == "finished":
                self.say(f"install: finished ({report.position}) after "
                         f"{(report.received - self._install_started) / 60:.1f} min; rebooting into the installed system")
            elif report.state == "failed" and self._install_failed is None:
                self._install_failed = report
                self.say(f"install: FAILED in step {report.position} ({report.name}), exit code {report.code}: "
                         f"stopping Packer")
                assert self._runner is not None
                self._runner.interrupt("install failure")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> BuildResult:
        with handle_signals(self.cancel):
            return self._run()

    def _run(self) -> BuildResult:
        started = time.monotonic()
        config = self.config
        with self.progress.stage("checking packer and the configuration"):
            packer_check = check_packer(config)
            self.dialect = dialect = packer_check[1]
            inputs = prepare_inputs(config, dialect=dialect, lock=read_lock(lock_path(config)), require_iso=True)
            overlay_dir = self.env.get(OVERLAY_ENV)
            if overlay_dir:
                inputs = dataclasses.replace(inputs, manifest={**inputs.manifest, "overlay": True})
            self._typing = boot_stats(list(inputs.boot_command), duration_seconds(config.build.key_interval))
        assert inputs.iso is not None
        iso = inputs.iso
        packer_path = packer_check[0].path
        with self.progress.stage("preflight: packer, Proxmox API, privileges, node, storages, bridge, ISO, vmid"), \
                tempfile.TemporaryDirectory(prefix="nixgold-preflight-") as scratch:
            # `packer init` (plugin missing) needs the template: a throwaway copy, nothing of the build yet
            write_files(Path(scratch), render_files(inputs))
            tools = PackerRunner(packer_path, env=tool_environment(self.env), redact=self.redactor)
            pre = run_preflight(config, self.creds, iso_volume=iso.volume, iso_download_on_pve=iso.download_on_pve,
                                replace=self.options.replace, template_dir=Path(scratch) / PACKER_DIR,
                                packer_runner_factory=lambda info: tools,
                                client_factory=lambda c: self.client(), say=self.say, packer=packer_check)
        for warning in pre.warnings:
            self.say(f"warning: {warning}")
        self._check_cancel("during preflight; nothing was changed")

        # build/<id>/: rendered files, overlay, key pair, log
        self.build_dir.mkdir(parents=True, exist_ok=False)
        self.build_dir.chmod(0o700)
        write_files(self.build_dir, render_files(inputs))
        if overlay_dir:
            replaced = apply_overlay(self.build_dir, Path(overlay_dir))
            self.say(f"WARNING: {OVERLAY_ENV}={overlay_dir} is active: {', '.join(replaced) or 'no files'} replaced "
                     f"the rendered files (a test hook: this template is NOT what the config describes; "
                     f"its manifest says \"overlay\": true)")
        key = buildkeys.generate(self.build_dir, self.build_id)
        self.redactor.add(*key.secret_lines)
        if dialect == "bundled":
            shutil.copyfile(key.public_key_file, self.build_dir / HTTP_DIR / BUILD_KEY_PUB)
        log_path = self.build_dir / "packer.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.log = os.fdopen(fd, "w", encoding="utf-8")
        self.say(f"build {self.build_id} in {self.build_dir} ({dialect} dialect); Packer's output: {log_path}")
        try:
            commit = git_commit(Path(config.source).resolve().parent if config.source else Path.cwd())
            env = packer_environment(self.env, dialect=dialect, creds=self.creds,
                                     private_key_file=key.private_key_file, public_key=key.public_key,
                                     build_id=self.build_id, build_vm_name=self.vm_name, commit=commit,
                                     iso_url=iso.url if iso.volume is None else None,
                                     iso_sha256=iso.sha256 if iso.volume is None else None)
            template_dir = (self.build_dir / PACKER_DIR).resolve()
            self._runner = runner = PackerRunner(packer_path, env=env, redact=self.redactor, log=self.log,
                                                 cwd=self.build_dir.resolve())
            with self.progress.stage("packer validate"):
                runner.validate(template_dir)
            if config.build.status_port:
                # Before anything changes on the cluster: a taken port must not cost the old template.
                self._install_status = InstallStatusServer(config.build.http_bind_address or "0.0.0.0",
                                                           config.build.status_port, report_token(key.public_key))
                self._install_status.start()
            try:
                return self._build(inputs, pre, runner, template_dir, started)
            finally:
                if self._install_status is not None:
                    self._install_status.stop()
        finally:
            self.log.close()

    def _build(self, inputs: RenderInputs, pre: PreflightResult, runner: PackerRunner, template_dir: Path,
               started: float) -> BuildResult:
        config, dialect = self.config, self.dialect
        self._check_cancel("before the build started; nothing was changed on the cluster")
        if pre.vmid is not None and pre.vmid.status == "replace":
            with self.progress.stage(f"--replace: destroying {pre.vmid.existing['what']} at vmid {pre.vmid.vmid}"):
                node = str(pre.vmid.existing.get("node") or config.proxmox.node)
                destroy_vm(self.client(), node, pre.vmid.vmid, timeout=duration_seconds(config.build.task_timeout))
        self._check_cancel(f"before the build started (after --replace destroyed vmid {config.template.vmid})")

        on_error = "abort" if self.options.keep_on_error else "cleanup"
        iso = inputs.iso
        pve_downloads = dialect == "plugin" and iso is not None and iso.volume is None and iso.download_on_pve
        self._iso_detail = " (the PVE node downloads it and checks its sha256)" if pve_downloads else \
            " (Packer downloads it and uploads it to PVE)"
        outcome = runner.build(template_dir, dialect=dialect, on_error=on_error, on_stage=self._stage_line,
                               on_error_line=lambda line: self.say(f"packer error: {line}"),
                               on_guest_line=lambda line: self.say(f"guest: {line}"), on_tick=self._tick,
                               cancel=self.cancel, say=self.say, cleanup_timeout=self.options.cleanup_timeout,
                               first_stage=STAGE_ISO if pve_downloads else STAGE_START)
        tracker = outcome.tracker
        if tracker.spans:
            last = tracker.spans[-1]
            self.progress.timings.append(StageTiming(f"packer: {last.name}", last.seconds, ok=outcome.ok))
        stages = [{"name": s.name, "seconds": round(s.seconds, 1)} for s in tracker.spans]
        self._install_reports()  # a failure reported in Packer's last second
        signal_name = self.cancel.interrupted_by
        failed = self._install_failed
        if failed is not None and signal_name is None:
            self._write_report(stages, outcome="failed", stage=STAGE_INSTALL)
            tail = [self.redactor(line) for line in failed.log_tail]
            raise self._after_failure(BuildError(
                f"install.sh failed in step {failed.position} ({self.redactor(failed.name)}) with exit code "
                f"{failed.code}; Packer was stopped at once (full output: {self.build_dir / 'packer.log'})",
                stage=STAGE_INSTALL, tail=tail, tail_title="last lines of the install log"), interrupted=False)
        if signal_name is not None or outcome.interrupted_by:
            by = signal_name or outcome.interrupted_by
            raise self._after_failure(Interrupted(
                f"interrupted by {by} during '{tracker.failed_stage or tracker.current}'; Packer cleaned up"
                + (" (killed)" if outcome.killed else "") + f"; no VM of build {self.build_id} is left"),
                interrupted=True)
        vmid_built: int | None = None
        if self._packer166_unmount_bug(outcome):
            # Packer 1.6.6 converted the VM and set name/description/cloud-init drive, then failed
            # its ISO unmount: it checks that ide2 ENDS with "media=cdrom", but PVE >= 7 appends
            # ",size=..." (packer-plugin-proxmox #83, #102; fixed there with Contains). The template
            # is complete and Packer (state "success") kept it; nixgold unmounts the ISO itself.
            self.say("packer: Packer 1.6.6 could not unmount the ISO (its ide2 check misses PVE's ',size=...', "
                     "packer-plugin-proxmox #83); the template is complete, nixgold unmounts the ISO through the API")
            vmid_built = config.template.vmid
        elif not outcome.ok or not tracker.artifact_id:
            stage = tracker.failed_stage or tracker.current or "packer build"
            message = (tracker.errors[0] if tracker.errors else tracker.build_errors[0] if tracker.build_errors
                       else f"packer exited with status {outcome.exit_status}")
            if outcome.ok and not tracker.artifact_id:
                message = "packer finished but reported no artifact (template id)"
            kept = (f"\n  the VM was kept for debugging (--keep-on-error): {self._inspect_hint()}"
                    if self.options.keep_on_error else "")
            if stage == STAGE_INSTALL and self._install_status is not None and self._install_started is None:
                kept += f"\n  install.sh never reported. {self._no_report_causes()}"
            self._write_report(stages, outcome="failed", stage=stage)
            raise self._after_failure(BuildError(
                self.redactor(message) + f" (full output: {self.build_dir / 'packer.log'}){kept}", stage=stage,
                tail=tracker.tail()), interrupted=False)

        # success
        vmid = vmid_built if vmid_built is not None else int(str(tracker.artifact_id).strip())
        with self.progress.stage(f"checking template {vmid}: manifest, tags"
                                 + (", serial0" if dialect == "bundled" else "")):
            manifest, name, node = self._finish_template(vmid, inputs)
        result = BuildResult(build_id=self.build_id, build_dir=self.build_dir, dialect=dialect, vmid=vmid, name=name,
                             node=node, manifest=manifest, overlay=bool(manifest.get("overlay")), stages=stages,
                             keystrokes=self._typing.keystrokes, typing_estimate_seconds=self._typing.typing_seconds,
                             wall_seconds=time.monotonic() - started)
        self._write_report(stages, outcome="built", stage=None, result=result)
        print(f"template {vmid} '{name}' on {node} built ({dialect} dialect, build {self.build_id}, "
              f"{result.wall_seconds / 60:.1f} min); manifest: {self.build_dir / 'manifest.json'}", file=self.out,
              flush=True)
        print("stages: " + ", ".join(f"{s['name']} {s['seconds']:.0f}s" for s in stages), file=self.out, flush=True)
        return result

    # -- after the build -------------------------------------------------------------------------------------
    def _packer166_unmount_bug(self, outcome: BuildOutcome) -> bool:
        """The build's only error is Packer 1.6.6's ISO unmount check, after the conversion."""
        tracker = outcome.tracker
        return (self.dialect == "bundled" and not outcome.interrupted_by and bool(tracker.errors)
                and all(UNMOUNT_BUG in e for e in tracker.errors)
                and "Converting VM to template" in tracker.recent and not tracker.artifact_id)

    def _finish_template(self, vmid: int, inputs: RenderInputs) -> tuple[dict[str, Any], str, str]:
        client = self.client()
        res = client.find_vm(vmid)
        if res is None:
            raise BuildError(f"Packer reported template {vmid}, but the cluster has no VM {vmid}",
                             stage="checking the template")
        node = str(res.get("node") or self.config.proxmox.node)
        cfg = client.vm_config(node, vmid)
        description = str(cfg.get("description") or "")
        try:
            parse_manifest(description)
            manifest = json.loads(description[description.find("{"):])
        except (ManifestError, ValueError):
            raise BuildError(f"template {vmid}'s description is not a nixgold manifest: {description[:200]!r}",
                             stage="checking the template") from None
        expected = {**inputs.manifest, "build_id": self.build_id, MARKER_KEY: manifest.get(MARKER_KEY)}
        wrong = {k: (manifest.get(k), v) for k, v in expected.items() if manifest.get(k) != v}
        if wrong:
            raise BuildError(f"the manifest in template {vmid}'s description differs from this build's: "
                             + "; ".join(f"{k}: {got!r} != {want!r}" for k, (got, want) in sorted(wrong.items())),
                             stage="checking the template")
        if int(cfg.get("template") or 0) != 1:
            raise BuildError(f"VM {vmid} is not a template after the build", stage="checking the template")
        changes: dict[str, Any] = {}
        tags = merged_tags(cfg.get("tags"), [*self.config.template.tags, NIXGOLD_TAG])
        if tags is not None:
            changes["tags"] = tags
        if self.dialect == "bundled" and cfg.get("serial0") != "socket":
            changes["serial0"] = "socket"
        ide2 = str(cfg.get("ide2") or "")
        if self.dialect == "bundled" and "media=cdrom" in ide2 and not ide2.startswith("none,") \
                and "cloudinit" not in ide2:
            changes["ide2"] = "none,media=cdrom"  # the installer ISO (Packer 1.6.6 could not unmount it)
        if changes:
            client.set_config(node, vmid, **changes)
        path = self.build_dir / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest, str(cfg.get("name") or ""), node

    def _write_report(self, stages: list[dict[str, Any]], *, outcome: str, stage: str | None,
                      result: BuildResult | None = None) -> None:
        data = {"build_id": self.build_id, "dialect": self.dialect, "outcome": outcome, "failed_stage": stage,
                "stages": stages, "overlay": bool(self.env.get(OVERLAY_ENV)),
                "keystrokes": self._typing.keystrokes,
                "typing_estimate_seconds": round(self._typing.typing_seconds, 2),
                "vmid": result.vmid if result else self.config.template.vmid}
        if result is not None:
            data["wall_seconds"] = round(result.wall_seconds, 1)
        (self.build_dir / "build.json").write_text(self.redactor(json.dumps(data, indent=2)) + "\n")

    def _inspect_hint(self) -> str:
        vmid, node = self.config.template.vmid, self.config.proxmox.node
        return (f"VM {vmid} on {node}: its serial console `qm terminal {vmid}` (or the web console), Packer's "
                f"output {self.build_dir / 'packer.log'}, the build key {self.build_dir / buildkeys.PRIVATE_NAME} "
                f"(`ssh -i ... root@<ip>` once the installed system is up); remove it with `qm stop {vmid}; "
                f"qm destroy {vmid} --purge 1 --destroy-unreferenced-disks 1` or rebuild with --replace")

    def _after_failure(self, error: NixgoldError, *, interrupted: bool) -> NixgoldError:
        """Make sure no VM of this build is left (unless --keep-on-error on a failure); return the error
        to raise: the build's own, with a cleanup problem attached to it, never replacing it."""
        if self.options.keep_on_error and not interrupted:
            self.say(f"--keep-on-error: leaving the failed VM: {self._inspect_hint()}")
            return error
        stage = f"making sure no VM of build {self.build_id} is left (vmid {self.config.template.vmid})"
        try:
            with self.progress.stage(stage):
                self._remove_build_vm()
        except NixgoldError as exc:
            error.add_cleanup_problem(f"{stage} failed: {self.redactor(str(exc))}")
        if self.cancel.is_set and not interrupted:
            error.add_cleanup_problem(f"{self.cancel.interrupted_by} arrived during the cleanup; it finished first")
        return error

    def _remove_build_vm(self) -> None:
        vmid = self.config.template.vmid
        client = self.client()
        res = client.find_vm(vmid)
        if res is None:
            return
        node = str(res.get("node") or self.config.proxmox.node)
        cfg = client.vm_config(node, vmid)
        if owner_of(cfg) != Owner("build", self.build_id.lower()):
            self.say(f"vmid {vmid} holds a VM that is not this build's ({cfg.get('name')!r}: it does not carry "
                     f"build id {self.build_id}); leaving it alone")
            return
        self.say(f"Packer left VM {vmid} ({cfg.get('name')}) behind: destroying it")
        destroy_vm(client, node, vmid, timeout=duration_seconds(self.config.build.task_timeout))


def run_build(config: Config, creds: Credentials, options: BuildOptions, *, progress: Progress, out: TextIO,
              env: Mapping[str, str] | None = None, redactor: Redactor | None = None, cancel: Cancel | None = None,
              client_factory: Callable[[Credentials], ProxmoxClient] | None = None) -> BuildResult:
    """Build the template end to end (see the module doc). Raises a NixgoldError subclass on failure."""
    builder = Builder(config, creds, options, progress=progress, out=out, env=env, redactor=redactor, cancel=cancel,
                      client_factory=client_factory)
    return builder.run()
