"""`invoke refresh`, `invoke rollback`, `invoke templates`: the nightly job and its tools.

    result = run_refresh(config, creds, RefreshOptions(), progress=Progress(), out=sys.stdout)

Phases of a refresh (one progress line each, with elapsed time):

1. **decide**: the input digest (:mod:`nixgold.refresh.digest`); when the promoted template carries
   it and passed verification, and no run left anything behind, "up to date" (exit 0): no lock, no
   build. ``--force`` builds anyway. A digest that ``invoke rollback`` rolled back is held back
   (up to date) until ``--force``;
2. **lock** (:mod:`nixgold.refresh.lock`): local file lock, then the cluster marker; a second run
   exits "locked" (7); a stale marker is taken over. ``--update-lock`` runs `invoke lock` here;
3. **recover**: finish a promotion a dead run left half done (:func:`nixgold.refresh.swap.resume`),
   remove what dead runs left (candidates of other inputs, their verify clones, unfinished
   archives, a build VM of the run whose marker was taken over), protect the promoted template;
4. **build** aside at a free staging vmid (:mod:`nixgold.refresh.producer`), never touching the
   promoted template; a staged candidate of the same inputs (built or verified by a run that
   stopped) is used instead of building again;
5. **verify** it with `invoke verify`'s code; a failure destroys it (``--keep-on-error`` keeps it)
   and exits 5, an infrastructure error keeps it for the next run (6); the promoted template
   is untouched either way;
6. **promote** (:mod:`nixgold.refresh.swap`): archive, swap, pre-check; the swap window is printed;
7. **retain** (:mod:`nixgold.refresh.retention`);
8. **report**: the summary lines, ``--json FILE``, and ``<build.output_dir>/refresh-<id>/refresh.json``.

Signals (:mod:`nixgold.signals`): during build and verify they stop those (cleanly, as
build-template and verify do); the swap is never left half way by a signal: it finishes, then the
run exits 130. SIGKILL leaves the written-down steps, which the next run finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TextIO

from nixgold.build.provenance import new_build_id
from nixgold.config.credentials import Credentials
from nixgold.config.model import Config
from nixgold.errors import (
    BuildError,
    ExitCode,
    Interrupted,
    NixgoldError,
    NotPromoted,
    PreflightError,
    ProxmoxError,
    RefreshLocked,
)
from nixgold.progress import Progress
from nixgold.proxmox.client import ProxmoxClient
from nixgold.proxmox.vms import BUILD_VM_RE, linked_clone_map, split_tags
from nixgold.refresh.digest import Digest, input_digest
from nixgold.refresh.lock import ClusterLock, LocalLock
from nixgold.refresh.producer import CandidateRequest, Producer, candidate_config, producer_from_env
from nixgold.refresh.report import Phase, RefreshResult, TemplateRow, summary_lines, write_json
from nixgold.refresh.retention import apply_retention, plan_retention
from nixgold.refresh.state import (
    ARCHIVE,
    ARCHIVED,
    BUILT,
    CANDIDATE,
    CANDIDATE_TAG,
    COPYING,
    DONE,
    FAILED,
    PROMOTED,
    VERIFIED,
    VERIFYING,
    View,
    VmState,
    now_iso,
    read_vm,
    scan,
)
from nixgold.refresh.swap import Promotion, SwapContext, destroy, plan_promotion, promote, resume, settle, write
from nixgold.render.manifest import NIXGOLD_TAG
from nixgold.secrets import Redactor
from nixgold.signals import Cancel, Cancelled, handle_signals
from nixgold.units import duration_seconds

VERIFY_CLONE_TAG = "nixgold-verify"


class RefreshFailed(NixgoldError):
    """A refresh or rollback ended without a good outcome; ``result`` says which (exit code with it)."""

    def __init__(self, result: RefreshResult):
        self.result = result
        self.exit_code = ExitCode(result.exit_code) if result.exit_code in ExitCode._value2member_map_ \
            else ExitCode.INFRA  # type: ignore[assignment]
        super().__init__(result.message or result.outcome)


@dataclass(frozen=True)
class RefreshOptions:
    force: bool = False  # build even when up to date (or held back after a rollback)
    keep_on_error: bool = False  # keep a candidate that failed verification, for inspection
    json_path: Path | None = None
    update_lock: Callable[[], Any] | None = None  # `invoke lock`, run once the refresh holds the lock
    producer: Producer | None = None  # default: $NIXGOLD_REFRESH_PRODUCER (test seam) or the Packer build


@dataclass(frozen=True)
class RollbackOptions:
    archive_vmid: int | None = None  # default: the newest verified archive
    json_path: Path | None = None


class Refresher:
    def __init__(self, config: Config, creds: Credentials, *, command: str, progress: Progress, out: TextIO,
                 env: Mapping[str, str] | None = None, redactor: Redactor | None = None, cancel: Cancel | None = None,
                 client: ProxmoxClient | None = None):
        self.config = config
        self.creds = creds
        self.progress = progress
        self.out = out
        self.env = dict(os.environ if env is None else env)
        self.redactor = redactor or Redactor(creds.secrets)
        self.cancel = cancel or Cancel()
        self._client = client
        self.refresh_id = new_build_id()
        self.task_timeout = duration_seconds(config.build.task_timeout)
        self.local = LocalLock(config)
        self.cluster: ClusterLock | None = None
        self.result = RefreshResult(refresh_id=self.refresh_id, command=command, template_vmid=config.template.vmid,
                                    template_name=config.template.name, started_at=now_iso())
        self.run_dir = Path(config.build.output_dir) / f"{command}-{self.refresh_id}"
        self.swap = SwapContext(client=None, config=config, refresh_id=self.refresh_id, say=self.say,  # type: ignore[arg-type]
                                task_timeout=self.task_timeout)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def client(self) -> ProxmoxClient:
        if self._client is None:
            self._client = ProxmoxClient(self.creds, timeout=self.config.proxmox.timeout)
        self.swap.client = self._client
        return self._client

    def say(self, text: str) -> None:
        self.progress.line(self.redactor(text))

    @contextlib.contextmanager
    def phase(self, name: str, title: str) -> Iterator[Phase]:
        record = Phase(name, 0.0, ok=False)
        t0 = time.monotonic()
        self.result.phases.append(record)
        try:
            with self.progress.stage(f"{name}: {title}"):
                yield record
            record.ok = True
        finally:
            record.seconds = round(time.monotonic() - t0, 2)

    def check_cancel(self, where: str) -> None:
        if self.cancel.is_set:
            raise Interrupted(f"interrupted by {self.cancel.interrupted_by or 'a signal'} {where}")

    def scan(self) -> View:
        return scan(self.client, self.config)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, body: Callable[[], None], json_path: Path | None) -> RefreshResult:
        t0 = time.monotonic()
        result = self.result
        with handle_signals(self.cancel):
            try:
                body()
            except (Interrupted, Cancelled) as exc:
                result.finish("interrupted", str(exc))
            except RefreshLocked as exc:
                result.finish("locked", str(exc))
            except NotPromoted as exc:
                result.finish("not-promoted", str(exc))
            except BuildError as exc:
                result.finish("build-failed", f"the candidate's build failed; the promoted template was not touched: "
                                              f"{exc}")
            except NixgoldError as exc:
                if getattr(exc, "report", None) is not None and int(exc.exit_code) == int(ExitCode.VERIFY):
                    result.finish("verify-failed", f"the candidate failed verification; the promoted template was not "
                                                   f"touched: {exc}")
                elif self.cancel.interrupted_by:
                    result.finish("interrupted", f"interrupted by {self.cancel.interrupted_by}: {exc}")
                else:
                    result.finish("error", str(exc))
                    result.exit_code = int(exc.exit_code)
            except Exception as exc:  # a bug: the traceback follows the summary
                result.finish("error", f"internal error (a bug; traceback below): {type(exc).__name__}: {exc}")
                result.exit_code = int(ExitCode.INTERNAL)
                raise
            finally:
                self._release()
                result.wall_seconds = round(time.monotonic() - t0, 2)
                for line in summary_lines(result, self.redactor):
                    print(line, file=self.out, flush=True)
                try:
                    write_json(result, self.run_dir / f"{result.command}.json", self.redactor)
                    if json_path is not None:
                        write_json(result, json_path, self.redactor)
                        self.say(f"wrote {json_path}")
                except OSError as exc:
                    self.say(f"could not write the JSON report: {exc}")
        if result.exit_code in (int(ExitCode.OK), int(ExitCode.PROMOTED)):
            return result
        raise RefreshFailed(result)

    def _lock(self, options_update_lock: Callable[[], Any] | None = None) -> None:
        self.local.acquire()
        self.cluster = ClusterLock(self.client, self.config, self.refresh_id, say=self.say)
        self.cluster.acquire(timeout=self.task_timeout)
        if self.cluster.previous is not None:
            self.result.lock_taken_over = self.cluster.previous
        if options_update_lock is not None:
            self.say("--update-lock: pinning the channel's newest ISO in nixgold.lock")
            options_update_lock()

    def _release(self) -> None:
        try:
            if self.cluster is not None and self.cluster.held:
                self.cluster.release(timeout=self.task_timeout)
        except NixgoldError as exc:
            text = (f"could not remove the lock marker VM {self.config.refresh.lock_vmid}: {exc}; the next run "
                    f"takes it over (this machine at once, others after refresh.lock_timeout)")
            self.say(text)
            self.result.message = (self.result.message + "\n  " if self.result.message else "") + text
        finally:
            self.local.release()

    def journal(self, phase: str, **extra: Any) -> None:
        """Heartbeat and the run's journal in the lock marker (written before the phase starts)."""
        if self.cluster is not None:
            self.cluster.update(phase, **extra)

    # -- refresh ----------------------------------------------------------------------------------
    def refresh(self, options: RefreshOptions) -> RefreshResult:
        return self.run(lambda: self._refresh(options), options.json_path)

    def _refresh(self, options: RefreshOptions) -> None:
        result = self.result
        with self.phase("decide", "input digest, promoted template, leftovers") as ph:
            digest = input_digest(self.config, self.env)
            result.input_digest = digest.sha256
            view = self.scan()
            self._check_target(view)
            promoted = view.promoted
            result.promoted_digest = promoted.digest if promoted else None
            fresh, why = self.up_to_date(view, digest, options.force)
            leftovers = self.leftovers(view)
            ph.detail = f"digest {digest.short}; " + ("up to date" if fresh else why)
            if leftovers:
                ph.detail += "; left behind: " + "; ".join(leftovers)
        if fresh and not leftovers and options.update_lock is None:
            self._describe_promoted(view)
            result.finish("up-to-date", why)
            return  # (with --update-lock the digest is only known once `invoke lock` ran, under the lock)
        self.check_cancel("before taking the lock; nothing was changed")
        with self.phase("lock", f"local lock and marker VM {self.config.refresh.lock_vmid}") as ph:
            self._lock(options.update_lock)
            if options.update_lock is not None:
                digest = input_digest(self.config, self.env)
                result.input_digest = digest.sha256
            ph.detail = (f"took over the stale marker of refresh {self.cluster.previous.get('id')}"
                         if self.cluster and self.cluster.previous else "")
        with self.phase("recover", "finish or undo what earlier runs left") as ph:
            self.journal("recover")
            finished = self.recover(digest, force=options.force)
            ph.detail = "; ".join(result.recovered) or "nothing to do"
        view = self.scan()
        fresh, why = self.up_to_date(view, digest, options.force)
        if fresh:
            self._retain(view)
            self._describe_promoted(view)
            if finished is not None:
                self._describe_promotion(finished)
                result.finish("promoted", f"finished the promotion a stopped run had started; {why}")
            else:
                result.finish("up-to-date", why)
            return
        self.check_cancel("before the build; nothing was changed")
        candidate = None if options.force else self.reusable_candidate(view, digest)
        if candidate is None:
            with self.phase("build", "the candidate, aside at a staging vmid") as ph:
                candidate = self.build(view, digest, options)
                ph.detail = f"{candidate.describe()}"
        else:
            self.say(f"using {candidate.describe()} ({candidate.step}) staged by refresh {candidate.refresh_id}: "
                     f"same inputs, no build")
            self.result.recovered.append(f"used the staged candidate {candidate.vmid} ({candidate.step})")
        result.candidate_vmid, result.candidate_build_id = candidate.vmid, candidate.build_id
        self.check_cancel(f"after the build; candidate {candidate.vmid} stays staged for the next run")
        if not candidate.verified:
            with self.phase("verify", f"candidate {candidate.vmid} with invoke verify's checks") as ph:
                candidate = self.verify(candidate, options)
                ph.detail = self._verification_text(candidate.verification)
        result.verification = candidate.verification
        self.check_cancel(f"after verification; the verified candidate {candidate.vmid} stays staged")
        with self.phase("promote", f"archive, swap into {self.config.template.vmid}") as ph:
            self.journal("promote", candidate=candidate.vmid)
            view = self.scan()
            plan = plan_promotion(self.swap, view, candidate)
            promotion = promote(self.swap, view, candidate, plan)
            self._describe_promotion(promotion)
            ph.detail = self._promotion_text(promotion)
        view = self.scan()
        self._retain(view)
        self._describe_promoted(view)
        self.check_cancel("after the promotion (it finished)")
        result.finish("promoted", f"template {result.promoted_vmid} '{self.config.template.name}' is build "
                                  f"{result.promoted_build_id} (digest {digest.short})")

    # -- decide -----------------------------------------------------------------------------------
    def _check_target(self, view: View) -> None:
        """template.vmid is free, or holds a template nixgold built; never anything else."""
        there = view.at(self.config.template.vmid)
        if there is None or (there.locked in ("clone", "create") and there.manifest is None):
            return  # a copy in progress (PVE writes the config when it is done): recover settles it
        owner = there.owner
        if there.role == PROMOTED and there.record.get("of") == self.config.template.vmid:
            return  # ours, perhaps a copy a stopped swap did not finish (recover finishes it)
        if owner is None or owner.kind in ("verify", "refresh-lock") or (owner.kind == "build" and not there.is_template):
            raise PreflightError(f"template.vmid {there.vmid} holds {there.describe()}, which is not a template "
                                 f"nixgold built: the refresh never replaces a VM nixgold did not create; set "
                                 f"template.vmid to a free id or to a nixgold template")

    def up_to_date(self, view: View, digest: Digest, force: bool) -> tuple[bool, str]:
        promoted = view.promoted
        if promoted is None:
            return False, "no promoted template yet"
        if promoted.digest is None:
            return False, f"{promoted.describe()} carries no input digest (built before the refresh)"
        if force:
            return False, "--force"
        held = promoted.record.get("rolled_back_from") or {}
        if held.get("input_digest") == digest.sha256:
            return True, (f"up to date: these inputs (digest {digest.short}) were rolled back at {held.get('at')} "
                          f"(invoke rollback); --force builds them again")
        if promoted.digest != digest.sha256:
            return False, f"inputs changed: digest {digest.short}, promoted {str(promoted.digest)[:12]}"
        if not promoted.verified:
            return False, f"{promoted.describe()} did not pass verification"
        return True, (f"up to date: {promoted.describe()} was built from the same inputs (digest {digest.short}) and "
                      f"passed verification at {promoted.verification.get('at')}")

    def leftovers(self, view: View) -> list[str]:
        """What an earlier run left that needs the lock to clean up (nothing when it is all tidy)."""
        found = []
        lock = view.lock
        live = ""  # the id of a refresh that is running now: what it is working on is not left behind
        if lock is not None:
            marker = lock.lock_marker
            if marker is None or ClusterLock(self.client, self.config, self.refresh_id).stale_reason(marker) is not None:
                found.append(f"the lock marker {lock.vmid}")
            else:
                live = str(marker.get("id") or "").lower()
                self.say(f"refresh {marker.get('id')} is running ({marker.get('phase')}, since {marker.get('started')})")
        if view.in_flight is not None and not (live and view.in_flight.promotion.get("by") == live):
            found.append(f"an unfinished promotion of {view.in_flight.vmid}")
        for vmid in self.config.refresh.staging:
            vm = view.at(vmid)
            if vm is None or vm.role in (PROMOTED, ARCHIVE):
                continue
            if live and (vm.refresh_id == live or (vm.owner is not None and vm.owner.id == live)):
                continue
            if vm.role == CANDIDATE or (not vm.is_template and BUILD_VM_RE.search(vm.name)):
                found.append(f"{vm.describe()}")
        found += [f"the unfinished archive {a.vmid}" for a in view.archives if a.step != ARCHIVED]
        complete = [a for a in view.archives if a.step == ARCHIVED]
        if len(complete) > self.config.refresh.keep:
            found.append(f"{len(complete)} archives (refresh.keep = {self.config.refresh.keep})")
        promoted = view.promoted
        if promoted is not None and promoted.role == PROMOTED and not promoted.protected:
            found.append(f"{promoted.describe()} is not protected")
        return found

    # -- recover ----------------------------------------------------------------------------------
    def recover(self, digest: Digest, *, force: bool) -> Promotion | None:
        view = self.scan()
        finished = None
        source = view.in_flight
        if source is not None:
            step = source.promotion.get("step") if source.promotion else "?"
            finished = resume(self.swap, source)
            self.result.recovered.append(f"finished the promotion of {source.vmid} by refresh "
                                         f"{source.promotion.get('by') if source.promotion else '?'} (it had reached "
                                         f"'{step}')")
            view = self.scan()
        dead = str((self.cluster.previous or {}).get("id") or "").lower() if self.cluster else ""
        for vmid in self.config.refresh.staging:
            vm = view.at(vmid)
            if vm is None:
                continue
            if vm.role == CANDIDATE and vm.record.get("of") == self.config.template.vmid:
                if not force and vm.digest == digest.sha256 and vm.step in (BUILT, VERIFYING, VERIFIED):
                    self._remove_verify_clones(vm)
                    continue  # reused by the build phase
                why = ("kept after failing verification (--keep-on-error)" if vm.step == FAILED
                       else f"built from other inputs (digest {str(vm.digest)[:12]})" if vm.digest != digest.sha256
                       else "--force")
                self._remove_candidate(vm, why)
            elif vm.locked in ("clone", "create"):
                self.say(f"{vm.vmid} is being created or copied (lock {vm.locked}) by a task that is still running; "
                         f"leaving it")
            elif vm.owner is not None and vm.owner.kind == "build" and not vm.role \
                    and ((not vm.is_template and BUILD_VM_RE.search(vm.name)) or (dead and vm.owner.id == dead)):
                self._remove_verify_clones(vm)
                self._remove(vm, f"the build VM of a stopped run (build {vm.owner.id or '?'}; the staging vmids are "
                                 f"the refresh's)")
        for archive in view.archives:
            if archive.step == COPYING:
                self._remove(archive, "an archive copy a stopped run did not finish")
        promoted = view.promoted
        if promoted is not None and promoted.role == PROMOTED and promoted.step == DONE and not promoted.protected:
            write(self.swap, promoted, protection=1)
            self.result.recovered.append(f"protected {promoted.vmid} again")
        return finished

    def _remove(self, vm: VmState, why: str) -> None:
        self.say(f"removing {vm.describe()}: {why}")
        destroy(self.swap, vm)
        self.result.recovered.append(f"removed {vm.vmid} ({why})")

    def _remove_candidate(self, vm: VmState, why: str) -> None:
        self._remove_verify_clones(vm)
        self._remove(vm, why)

    def _remove_verify_clones(self, vm: VmState) -> None:
        """verify clones of ``vm`` left by a run that was killed while verifying it (its description
        names the template, and verify's marker proves they are verify's)."""
        mention = f"clone of template {vm.vmid} ({vm.name})"
        for res in self.client.vm_resources():
            if VERIFY_CLONE_TAG not in split_tags(res.get("tags")) or int(res["vmid"]) == vm.vmid:
                continue
            clone = read_vm(self.client, int(res["vmid"]), str(res.get("node") or vm.node))
            if clone is None or clone.owner is None or clone.owner.kind != "verify" \
                    or mention not in str(clone.config.get("description") or ""):
                continue
            self._remove(clone, f"a verify clone of {vm.vmid} left by a stopped run")

    # -- build ------------------------------------------------------------------------------------
    def reusable_candidate(self, view: View, digest: Digest) -> VmState | None:
        usable = [vm for vm in view.candidates if vm.digest == digest.sha256 and vm.step in (BUILT, VERIFYING, VERIFIED)
                  and vm.is_template and vm.promotion is None]
        return max(usable, key=lambda vm: (vm.verified, vm.vmid)) if usable else None

    def build(self, view: View, digest: Digest, options: RefreshOptions) -> VmState:
        vmid = view.free(self.config.refresh.staging)
        if vmid is None:
            raise ProxmoxError(f"no free vmid in refresh.staging_vmids {self.config.refresh.staging_vmids}: "
                               + ", ".join(view.at(v).describe() if view.at(v) else f"{v} (taken)"
                                           for v in self.config.refresh.staging))
        producer, spec = (options.producer, None) if options.producer else producer_from_env(self.env)
        if spec:
            self.say(f"WARNING: {spec} builds the candidate ($NIXGOLD_REFRESH_PRODUCER, a test seam): it is NOT "
                     f"built from the configuration; its record says so")
            self.result.test_producer = spec
        self.journal("build", candidate=vmid, build_id=self.refresh_id)
        request = CandidateRequest(config=candidate_config(self.config, vmid, self.refresh_id),
                                   refresh_id=self.refresh_id, input_digest=digest.sha256, creds=self.creds,
                                   progress=self.progress, out=self.out, env=self.env, redactor=self.redactor,
                                   cancel=self.cancel)
        try:
            produced = producer(request)
        except (NixgoldError, Cancelled):
            raise
        except Exception as exc:  # a producer is code of its own: its failure is the build's
            raise BuildError(f"{type(exc).__name__}: {exc}", stage="producing the candidate") from exc
        vm = read_vm(self.client, produced.vmid, produced.node)
        if vm is None or not vm.is_template or vm.build_id != produced.build_id:
            raise BuildError(f"the build reported template {produced.vmid} (build {produced.build_id}), but the "
                             f"cluster has {vm.describe() if vm else 'nothing'} there", stage="checking the candidate")
        record = {"role": CANDIDATE, "id": self.refresh_id.lower(), "of": self.config.template.vmid, "vmid": vm.vmid,
                  "step": BUILT,
                  "input_digest": digest.sha256, "built_at": now_iso(), "test_producer": spec}
        return write(self.swap, vm, record={k: v for k, v in record.items() if v is not None},
                     tags=f"{NIXGOLD_TAG};{CANDIDATE_TAG}")

    # -- verify -----------------------------------------------------------------------------------
    def verify(self, candidate: VmState, options: RefreshOptions) -> VmState:
        from nixgold.verify.verifier import ChecksFailed, VerifyOptions, run_verify

        self.journal("verify", candidate=candidate.vmid)
        candidate = write(self.swap, candidate, record={"step": VERIFYING})
        report_path = self.run_dir / "verify.json"
        verify_config = dataclasses.replace(self.config, template=dataclasses.replace(
            self.config.template, vmid=candidate.vmid, name=candidate.name))
        try:
            report = run_verify(verify_config, self.creds, VerifyOptions(vmid=candidate.vmid, json_path=report_path),
                                progress=self.progress, out=self.out, redactor=self.redactor, cancel=self.cancel)
        except ChecksFailed as exc:
            self._verify_summary(exc.report, report_path)
            summary = self._verification(exc.report, report_path)
            if options.keep_on_error:
                write(self.swap, candidate, record={"step": FAILED, "verification": summary})
                self.say(f"--keep-on-error: keeping the failed candidate {candidate.describe()} for inspection (the "
                         f"next refresh removes it); `invoke verify --vmid {candidate.vmid} --keep` boots it again")
            else:
                self._remove_candidate(candidate, "it failed verification")
            raise
        except NixgoldError as exc:
            if getattr(exc, "report", None) is not None:
                self._verify_summary(exc.report, report_path)  # type: ignore[attr-defined]
            with contextlib.suppress(NixgoldError):
                write(self.swap, candidate, record={"step": BUILT})
            self.say(f"the candidate {candidate.vmid} stays staged (not verified): the next refresh verifies it "
                     f"without building again")
            raise
        self._verify_summary(report, report_path)
        return write(self.swap, candidate, record={"step": VERIFIED,
                                                   "verification": self._verification(report, report_path)})

    def _verification(self, report: Any, path: Path) -> dict[str, Any]:
        counts = dict(report.counts)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {"outcome": report.outcome, "at": now_iso(), "checks": sum(counts.values()), "passed": counts["passed"],
                "failed": counts["failed"] + counts["error"], "profile": report.profile,
                "clones": len(report.clones), "report_sha256": digest, "refresh_id": self.refresh_id.lower()}

    def _verify_summary(self, report: Any, path: Path) -> None:
        import json

        try:
            self.result.verify_report = json.loads(path.read_text()) if path.is_file() else None
        except ValueError:
            self.result.verify_report = None
        self.result.verification = self._verification(report, path)

    @staticmethod
    def _verification_text(v: dict[str, Any]) -> str:
        return f"{v.get('outcome')}: {v.get('passed')} of {v.get('checks')} checks passed"

    # -- promote / retain / report ------------------------------------------------------------------
    def _describe_promotion(self, p: Promotion) -> None:
        self.result.promotion = dataclasses.asdict(p)
        self.result.archive_vmid = p.archive_vmid
        self.result.swap_window_seconds = (round(p.swap_window_seconds, 2) if p.swap_window_seconds is not None
                                           else self.result.swap_window_seconds)
        if p.old:
            self.result.replaced_build_id = p.old.get("build_id")

    @staticmethod
    def _promotion_text(p: Promotion) -> str:
        if p.mode == "by-name":
            return f"by name: {p.source} is the promoted template"
        archived = f"old archived at {p.archive_vmid}, " if p.archive_vmid else ""
        window = f"swap window {p.swap_window_seconds:.1f}s" if p.swap_window_seconds is not None else ""
        return f"{archived}{p.source} copied into {p.target}; {window}"

    def _describe_promoted(self, view: View) -> None:
        promoted = view.promoted
        if promoted is not None:
            self.result.promoted_vmid = promoted.vmid
            self.result.promoted_build_id = promoted.build_id
            if self.result.verification is None and promoted.verification:
                self.result.verification = promoted.verification

    def _retain(self, view: View) -> None:
        complete = [a for a in view.archives if a.step == ARCHIVED]
        if len(complete) <= self.config.refresh.keep:
            return
        with self.phase("retain", f"keep {self.config.refresh.keep} verified archives") as ph:
            self.journal("retain")
            plan = plan_retention(view.archives, self.config.refresh.keep, linked_clone_map(self.client))
            outcome = apply_retention(self.swap, plan)
            self.result.retention = dataclasses.asdict(outcome)
            ph.detail = (f"deleted {', '.join(str(d['vmid']) for d in outcome.deleted) or 'none'}; kept "
                         f"{', '.join(str(k['vmid']) for k in outcome.kept) or 'none'}")
            for kept in outcome.kept:
                self.say(f"retention: kept {kept['vmid']} '{kept['name']}': {kept['why']}")
            if outcome.problems:
                raise ProxmoxError(f"template {self.config.template.vmid} is in place, but retention failed (the next "
                                   f"run tries again): " + "; ".join(outcome.problems))

    # -- rollback ---------------------------------------------------------------------------------
    def rollback(self, options: RollbackOptions) -> RefreshResult:
        return self.run(lambda: self._rollback(options), options.json_path)

    def _rollback(self, options: RollbackOptions) -> None:
        result = self.result
        with self.phase("lock", f"local lock and marker VM {self.config.refresh.lock_vmid}"):
            self._lock()
        view = self.scan()
        with self.phase("recover", "undo a half-done promotion, remove leftovers") as ph:
            self.journal("rollback")
            undone = self._undo_in_flight(view)
            ph.detail = undone or "nothing in flight"
        if undone:
            view = self.scan()
            self._describe_promoted(view)
            result.finish("rolled-back", undone)
            return
        view = self.scan()
        current = view.promoted
        archives = [a for a in view.archives if a.step == ARCHIVED]
        if options.archive_vmid is not None:
            source = next((a for a in archives if a.vmid == options.archive_vmid), None)
            if source is None:
                raise PreflightError(f"vmid {options.archive_vmid} is not a finished archive of template "
                                     f"{self.config.template.vmid} (archives: "
                                     f"{', '.join(a.describe() for a in archives) or 'none'})")
        else:
            verified = [a for a in archives if a.verified]
            if not verified:
                raise PreflightError(f"no verified archive of template {self.config.template.vmid} to roll back to "
                                     f"(archives: {', '.join(a.describe() for a in archives) or 'none'})")
            source = verified[0]
        extra = {"rolled_back_from": {"build_id": current.build_id, "input_digest": current.digest, "at": now_iso(),
                                      "vmid": current.vmid}} if current is not None else {}
        with self.phase("promote", f"archive {current.vmid if current else '-'}, restore {source.vmid} into "
                                   f"{self.config.template.vmid}") as ph:
            plan = plan_promotion(self.swap, view, source, extra=extra)
            promotion = promote(self.swap, view, source, plan)
            self._describe_promotion(promotion)
            ph.detail = self._promotion_text(promotion)
        view = self.scan()
        self._retain(view)
        self._describe_promoted(view)
        held = f"; the next refresh holds back digest {str(current.digest)[:12]} until --force" \
            if current is not None and current.digest else ""
        result.finish("rolled-back", f"restored {source.describe()} as template {result.promoted_vmid}{held}")

    def _undo_in_flight(self, view: View) -> str:
        """A candidate's promotion a run left half done: put the template it was replacing back."""
        source = view.in_flight
        if source is None or source.role != CANDIDATE:
            if source is not None:  # a rollback's own promotion: finish it
                resume(self.swap, source)
                return f"finished the rollback a stopped run had started ({source.vmid})"
            return ""
        plan = source.promotion or {}
        old = plan.get("old") or {}
        target = self.config.template.vmid
        there = settle(self.swap, target)
        if there is not None and there.role == PROMOTED and there.build_id == source.build_id and there.step == DONE:
            resume(self.swap, source)  # it was complete: finish, then roll back like after any promotion
            return ""
        if there is not None and there.build_id == old.get("build_id") and there.role != ARCHIVE:
            if not there.protected:
                write(self.swap, there, protection=1)
            archive = settle(self.swap, int(plan["archive_vmid"])) if plan.get("archive_vmid") else None
            if archive is not None and archive.role == ARCHIVE and archive.build_id == old.get("build_id") \
                    and archive.record.get("from_vmid") == old.get("vmid"):  # the copy this promotion made
                self._remove(archive, "the copy of the old template a stopped promotion made (the old one stays)")
            write(self.swap, source, record={"promotion": None})
            self._remove_candidate(source, "its promotion was rolled back")
            return f"undid the promotion of {source.vmid}: {target} is still build {old.get('build_id')}"
        if there is not None and there.role == PROMOTED and there.build_id == source.build_id:
            self._remove(there, f"the unfinished copy of candidate {source.vmid}")
        elif there is not None:
            raise ProxmoxError(f"template.vmid {target} holds {there.describe()}; rollback does not touch it")
        archive = read_vm(self.client, int(plan.get("archive_vmid") or 0), self.config.proxmox.node) \
            if plan.get("archive_vmid") else None
        if archive is None or archive.step != ARCHIVED:
            raise ProxmoxError(f"the half-done promotion of {source.vmid} destroyed {target} but its archive "
                               f"{plan.get('archive_vmid')} is not complete: run `invoke refresh` to finish the "
                               f"promotion instead")
        write(self.swap, source, record={"promotion": None})
        view = self.scan()
        extra = {"rolled_back_from": {"build_id": source.build_id, "input_digest": source.digest, "at": now_iso()}}
        restore = plan_promotion(self.swap, view, archive, extra=extra)
        promotion = promote(self.swap, view, archive, restore)
        self._describe_promotion(promotion)
        self._remove_candidate(source, "its promotion was rolled back")
        return (f"restored {target} from archive {archive.vmid} (build {archive.build_id}); the half-done promotion of "
                f"candidate {source.vmid} was undone")

    # -- templates --------------------------------------------------------------------------------
    def templates(self) -> list[TemplateRow]:
        view = self.scan()
        pins = linked_clone_map(self.client)
        rows = []
        promoted = view.promoted
        for vm in sorted(view.vms.values(), key=lambda v: v.vmid):
            if vm.lock_marker is not None:
                role = "lock"
            elif promoted is not None and vm.vmid == promoted.vmid:
                role = "promoted"
            elif vm.role in (ARCHIVE, CANDIDATE) and vm.record.get("of") == self.config.template.vmid:
                role = vm.role
            elif vm.owner is not None and vm.owner.kind == "build" and not vm.is_template:
                role = "building"
            else:
                continue
            v = vm.verification
            verification = (f"{v.get('outcome')} {v.get('passed')}/{v.get('checks')} {v.get('at')}" if v
                            else "-")
            rows.append(TemplateRow(role=role, vmid=vm.vmid, name=vm.name, build_id=vm.build_id, digest=vm.digest,
                                    verification=verification, linked_clones=len(pins.get(vm.vmid, [])),
                                    protected=vm.protected, step=vm.step or (vm.lock_marker or {}).get("phase"),
                                    built=(vm.manifest or {}).get("build_time")))
        return rows


def run_refresh(config: Config, creds: Credentials, options: RefreshOptions, *, progress: Progress, out: TextIO,
                env: Mapping[str, str] | None = None, redactor: Redactor | None = None, cancel: Cancel | None = None,
                client: ProxmoxClient | None = None) -> RefreshResult:
    """One refresh (see the module doc); RefreshFailed (with ``.result``) unless up to date or promoted."""
    return Refresher(config, creds, command="refresh", progress=progress, out=out, env=env, redactor=redactor,
                     cancel=cancel, client=client).refresh(options)


def run_rollback(config: Config, creds: Credentials, options: RollbackOptions, *, progress: Progress, out: TextIO,
                 redactor: Redactor | None = None, cancel: Cancel | None = None,
                 client: ProxmoxClient | None = None) -> RefreshResult:
    """Promote the newest verified archive (or ``archive_vmid``) back to template.vmid; the current is archived."""
    return Refresher(config, creds, command="rollback", progress=progress, out=out, redactor=redactor, cancel=cancel,
                     client=client).rollback(options)


def list_templates(config: Config, creds: Credentials, *, client: ProxmoxClient | None = None) -> list[TemplateRow]:
    """Promoted, archived, staged and candidate templates of template.vmid with what their records say."""
    return Refresher(config, creds, command="templates", progress=Progress(stream=sys.stderr), out=sys.stdout,
                     client=client).templates()
