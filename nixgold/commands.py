"""One function per user command. ``tasks.py`` parses flags and calls these; nothing here
imports invoke. Errors are :class:`~nixgold.errors.NixgoldError` subclasses."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TextIO

from nixgold.config.credentials import Credentials, load_credentials
from nixgold.config.load import describe_config, load_config
from nixgold.config.model import Config
from nixgold.errors import ConfigError, PreflightError
from nixgold.lock import CHANNELS_BASE_URL, IsoLock, lock_path, read_lock, resolve_channel, write_lock
from nixgold.packer.dialect import choose_dialect, detect_packer
from nixgold.progress import Progress
from nixgold.render.files import prepare_inputs, render_files, write_files
from nixgold.render.plan import Plan, format_plan, make_plan
from nixgold.secrets import Redactor

if TYPE_CHECKING:
    from nixgold.build.builder import BuildResult
    from nixgold.refresh.report import RefreshResult
    from nixgold.verify.report import VerifyReport

CHANNELS_URL_ENV = "NIXGOLD_CHANNELS_URL"  # a mirror of channels.nixos.org (also used by tests)


def load(config_path: str | None, overrides: Mapping[str, Any] | None = None,
         env: Mapping[str, str] | None = None) -> tuple[Config, Credentials]:
    config = load_config(config_path, overrides=overrides, env=env)
    return config, load_credentials(config, env)


def render_dialect(config: Config) -> str:
    """`invoke render` is deterministic: auto means the plugin dialect (no packer probing)."""
    return "plugin" if config.build.dialect == "auto" else config.build.dialect


def render(config_path: str | None, overrides: Mapping[str, Any], output: Path, dialect: str | None = None,
           progress: Progress | None = None) -> list[Path]:
    """Write packer/ and http/ for the config under ``output`` (a plain `packer build packer/` works)."""
    progress = progress or Progress()
    config, _ = load(config_path, overrides)
    with progress.stage(f"rendering {config.source or 'defaults'} into {output}/packer and {output}/http"):
        inputs = prepare_inputs(config, dialect=dialect or render_dialect(config),
                                lock=read_lock(lock_path(config)), require_iso=False)
        return write_files(output, render_files(inputs))


def dry_run(config_path: str | None, overrides: Mapping[str, Any], out: TextIO) -> Plan:
    """Validate, choose the dialect, render into <output_dir>/dry-run/, print the plan."""
    config, creds = load(config_path, overrides)
    warnings = []
    try:
        packer = detect_packer(config.build.packer)
        dialect, reason = choose_dialect(config, packer)
    except (ConfigError, PreflightError) as exc:
        # The plan is still worth showing; the build's preflight stops on this.
        dialect = render_dialect(config)
        reason = f"build.dialect = {config.build.dialect}; the installed packer cannot build this config"
        problems = [str(i) for i in exc.issues] if isinstance(exc, ConfigError) else [str(exc)]
        warnings.extend(f"the installed packer cannot build this: {p}" for p in problems)
    inputs = prepare_inputs(config, dialect=dialect, lock=read_lock(lock_path(config)), require_iso=False)
    root = Path(config.build.output_dir) / "dry-run"
    files = write_files(root, render_files(inputs))
    plan = make_plan(config, creds, inputs, reason, files, warnings)
    print(Redactor(creds.secrets)(format_plan(plan)), file=out)
    return plan


def show_config(config_path: str | None, overrides: Mapping[str, Any], as_json: bool = False) -> str:
    """The effective configuration with secrets redacted (TOML-like or JSON)."""
    config, creds = load(config_path, overrides)
    data = describe_config(config, creds)
    if as_json:
        return json.dumps(data, indent=2, sort_keys=True)
    lines = [f"# effective nixgold configuration (from {config.source or 'defaults'}; secrets redacted)"]
    for section, values in data.items():
        if section == "source":
            continue
        if section == "users":
            for user in values:
                lines.append("\n[[users]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in user.items())
            continue
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None)
    return "\n".join(lines)


def lock(config_path: str | None, overrides: Mapping[str, Any], channel: str | None = None,
         progress: Progress | None = None, env: Mapping[str, str] | None = None) -> tuple[IsoLock, Path]:
    """Resolve the channel's latest minimal ISO to a pinned URL + sha256 and write nixgold.lock."""
    env = os.environ if env is None else env
    progress = progress or Progress()
    config, _ = load(config_path, overrides, env)
    channel = channel or config.channel
    base_url = env.get(CHANNELS_URL_ENV) or CHANNELS_BASE_URL
    with progress.stage(f"resolving {channel} at {base_url}"):
        pinned = resolve_channel(channel, base_url=base_url, timeout=config.proxmox.timeout,
                                 verify=env.get("NIXGOLD_CHANNELS_CA") or True)
    path = lock_path(config)
    write_lock(path, pinned)
    progress.line(f"pinned {pinned.file_name} (sha256 {pinned.sha256[:12]}…) in {path}")
    return pinned, path


def verify(config_path: str | None, overrides: Mapping[str, Any], *, vmid: int | None = None,
           name: str | None = None, tag: str | None = None, keep: bool = False, junit: Path | None = None,
           json_path: Path | None = None, insecure: bool = False, progress: Progress | None = None,
           out: TextIO | None = None, env: Mapping[str, str] | None = None) -> "VerifyReport":
    """Clone, boot and check the template (see nixgold.verify); raises with ``.report`` unless all passed.

    ``--profile`` and ``--clones`` arrive as ``verify.profile`` / ``verify.clones`` overrides.
    """
    from nixgold.verify.verifier import VerifyOptions, run_verify

    config, creds = load(config_path, overrides, env)
    redactor = Redactor(creds.secrets)
    progress = progress or Progress(redact=redactor)
    options = VerifyOptions(vmid=vmid, name=name, tag=tag, keep=keep, junit=junit, json_path=json_path,
                            insecure=insecure)
    return run_verify(config, creds, options, progress=progress, out=out or sys.stdout, redactor=redactor)


def build(config_path: str | None, overrides: Mapping[str, Any], *, replace: bool = False,
          keep_on_error: bool = False, verify: bool = False, progress: Progress | None = None,
          out: TextIO | None = None, env: Mapping[str, str] | None = None) -> "BuildResult":
    """`invoke build-template`: preflight, render into build/<id>/, packer build, check (see nixgold.build);
    with ``verify`` then `invoke verify` on the new template (exit 5 when a check fails)."""
    from nixgold.build.builder import BuildOptions, run_build
    from nixgold.verify.verifier import VerifyOptions, run_verify

    env = os.environ if env is None else env
    config, creds = load(config_path, overrides, env)
    redactor = Redactor(creds.secrets)
    progress = progress or Progress(redact=redactor)
    out = out or sys.stdout
    options = BuildOptions(replace=replace, keep_on_error=keep_on_error, verify=verify)
    result = run_build(config, creds, options, progress=progress, out=out, env=env, redactor=redactor)
    if verify:
        verify_config = dataclasses.replace(config, template=dataclasses.replace(config.template, vmid=result.vmid))
        result.verify_report = run_verify(verify_config, creds, VerifyOptions(vmid=result.vmid), progress=progress,
                                          out=out, redactor=redactor)
    return result


def refresh(config_path: str | None, overrides: Mapping[str, Any], *, force: bool = False, keep_on_error: bool = False,
            update_lock: bool = False, json_path: Path | None = None, progress: Progress | None = None,
            out: TextIO | None = None, env: Mapping[str, str] | None = None) -> "RefreshResult":
    """`invoke refresh`, the nightly job (see nixgold.refresh.refresh): up to date (0) or promoted (10)
    returns; every other outcome raises RefreshFailed with ``.result`` and its exit code."""
    from nixgold.refresh.refresh import RefreshOptions, run_refresh

    env = os.environ if env is None else env
    config, creds = load(config_path, overrides, env)
    redactor = Redactor(creds.secrets)
    progress = progress or Progress(redact=redactor)
    pin = (lambda: lock(config_path, overrides, progress=progress, env=env)) if update_lock else None
    options = RefreshOptions(force=force, keep_on_error=keep_on_error, json_path=json_path, update_lock=pin)
    return run_refresh(config, creds, options, progress=progress, out=out or sys.stdout, env=env, redactor=redactor)


def rollback(config_path: str | None, overrides: Mapping[str, Any], *, archive_vmid: int | None = None,
             json_path: Path | None = None, progress: Progress | None = None, out: TextIO | None = None,
             env: Mapping[str, str] | None = None) -> "RefreshResult":
    """`invoke rollback`: the newest verified archive (or ``archive_vmid``) back to template.vmid."""
    from nixgold.refresh.refresh import RollbackOptions, run_rollback

    config, creds = load(config_path, overrides, env)
    redactor = Redactor(creds.secrets)
    progress = progress or Progress(redact=redactor)
    return run_rollback(config, creds, RollbackOptions(archive_vmid=archive_vmid, json_path=json_path),
                        progress=progress, out=out or sys.stdout, redactor=redactor)


def templates(config_path: str | None, overrides: Mapping[str, Any], *, as_json: bool = False,
              env: Mapping[str, str] | None = None) -> str:
    """`invoke templates`: the promoted, archived, staged and candidate templates of template.vmid."""
    from nixgold.refresh.refresh import list_templates
    from nixgold.refresh.report import format_templates

    config, creds = load(config_path, overrides, env)
    rows = list_templates(config, creds)
    if as_json:
        return json.dumps([dataclasses.asdict(r) for r in rows], indent=2)
    return format_templates(rows) if rows else f"no templates of {config.template.vmid} ('{config.template.name}') yet"
