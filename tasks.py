"""nixgold's command line: `invoke --list`, `invoke --help <task>`.

Tasks only parse flags and call :mod:`nixgold.commands`; :func:`_cli` is the one place where
library errors become messages and exit codes (see README "Exit codes").
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from invoke import Collection, Exit, task

COMMON_HELP = {
    "config": "config file (default: $NIXGOLD_CONFIG, else ./nixgold.toml)",
    "set": "override a config key, e.g. --set vm.cores=4 (repeatable)",
    "verbose": "log debug details to stderr",
}


def _env_redactor() -> Callable[[str], str]:
    """The backstop: a redactor of the secrets in the environment (PROXMOX_TOKEN_SECRET, PROXMOX_PASSWORD).

    Library code redacts what it prints with the credentials it loaded; this one also covers an
    error raised before they were loaded, or a message that quotes a secret where nobody expected
    one. Values too short to mask safely are left out (credentials loading refuses them anyway).
    """
    from nixgold.config.credentials import SECRET_VARIABLES
    from nixgold.secrets import MIN_SECRET_LENGTH, Redactor

    values = (os.environ.get(name) or "" for name in SECRET_VARIABLES)
    return Redactor([v for v in values if len(v) >= MIN_SECRET_LENGTH])


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str], fmt: str):
        super().__init__(fmt)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def _cli(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body; turn nixgold errors into `Exit(message, code)`. Every message (errors, log
    lines, a bug's traceback) passes the environment's redactor first."""

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        from nixgold.errors import ExitCode, NixgoldError, exit_code_for

        redact = _env_redactor()
        handler = logging.StreamHandler()
        handler.setFormatter(_RedactingFormatter(redact, "%(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.DEBUG if kwargs.get("verbose") else logging.WARNING, handlers=[handler])
        try:
            return fn(c, *args, **kwargs)
        except NixgoldError as exc:
            raise Exit(redact(f"nixgold: {exc}"), code=exit_code_for(exc)) from None
        except KeyboardInterrupt:
            raise Exit("nixgold: interrupted", code=int(ExitCode.INTERRUPTED)) from None
        except Exit:
            raise
        except Exception:  # a bug: its traceback is shown (exit 1), redacted like every other message
            print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
            raise Exit(code=int(ExitCode.INTERNAL)) from None

    return wrapper


def _overrides(set_: list[str] | None, **flags: Any) -> dict[str, Any]:
    """--set KEY=VALUE pairs plus dedicated flags (None = not given)."""
    from nixgold.config.load import parse_override

    result = dict(parse_override(item) for item in (set_ or []))
    result.update({key: value for key, value in flags.items() if value is not None})
    return result


def _int_flag(flag: str, value: Any) -> int | None:
    from nixgold.errors import ConfigError, ConfigIssue

    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(ConfigIssue(flag, value, "a whole number")) from None


@task(help={**COMMON_HELP, "output": "directory to render into (default: the current one)",
            "dialect": "plugin (Packer >= 1.10) or bundled (Packer 1.6); default from build.dialect"},
      iterable=["set_"])
@_cli
def render(c, config=None, set_=None, output=".", dialect=None, verbose=False):
    """Render packer/ and http/ from the config (a plain `packer build packer/` also works)."""
    from nixgold import commands

    for path in commands.render(config, _overrides(set_), Path(output), dialect):
        print(path)


@task(help={**COMMON_HELP, "json": "print JSON instead of TOML"}, iterable=["set_"])
@_cli
def config(c, config=None, set_=None, json=False, verbose=False):
    """Print the effective configuration (file < environment < flags), secrets redacted."""
    from nixgold import commands

    print(commands.show_config(config, _overrides(set_), as_json=json))


@task(help={**COMMON_HELP, "channel": "NixOS channel to pin (default: iso.channel or nixos-<release>)"},
      iterable=["set_"])
@_cli
def lock(c, config=None, set_=None, channel=None, verbose=False):
    """Pin the channel's latest minimal ISO (URL + sha256) in nixgold.lock; needs network."""
    from nixgold import commands

    commands.lock(config, _overrides(set_), channel)


@task(name="build-template",
      help={**COMMON_HELP, "dry_run": "only validate, render into <output_dir>/dry-run/ and print the plan",
            "vmid": "template VM id (template.vmid)", "node": "Proxmox node (proxmox.node)",
            "storage": "VM storage (vm.storage)", "bridge": "network bridge (vm.bridge)",
            "release": "NixOS release (nixos.release)", "firmware": "uefi or bios (vm.firmware)",
            "replace": "rebuild over the nixgold template at the vmid: it is DESTROYED before the build starts",
            "keep_on_error": "leave a failed build's VM for debugging (packer -on-error=abort) and say how to "
                             "inspect it",
            "verify": "run `invoke verify` on the new template (exit 5 when a check fails)"},
      iterable=["set_"])
@_cli
def build_template(c, config=None, set_=None, dry_run=False, vmid=None, node=None, storage=None, bridge=None,
                   release=None, firmware=None, replace=False, keep_on_error=False, verify=False, verbose=False):
    """Build the NixOS golden template with Packer (use --dry-run to see the plan first).

    Exit codes: 2 config, 3 preflight, 4 build (the stage is named), 5 verify, 6 Proxmox API, 130 interrupted.
    """
    from nixgold import commands

    overrides = _overrides(set_, **{"template.vmid": _int_flag("--vmid", vmid), "proxmox.node": node,
                                    "vm.storage": storage, "vm.bridge": bridge, "nixos.release": release,
                                    "vm.firmware": firmware})
    if dry_run:
        commands.dry_run(config, overrides, sys.stdout)
        return
    commands.build(config, overrides, replace=replace, keep_on_error=keep_on_error, verify=verify)


@task(help={**COMMON_HELP, "vmid": "template to verify (default: template.vmid)",
            "name": "template to verify, by name (must be unique among templates)",
            "tag": "verify the newest nixgold template with this tag",
            "profile": "check profile: nixos or generic (verify.profile)",
            "clones": "how many clones to boot in parallel (verify.clones, default 2)",
            "keep": "keep the clones and the SSH key, and print how to reach them",
            "junit": "write a JUnit XML report to this file", "json": "write a JSON report to this file",
            "insecure": "skip TLS verification of the Proxmox API (never the default)"},
      iterable=["set_"])
@_cli
def verify(c, config=None, set_=None, vmid=None, name=None, tag=None, profile=None, clones=None, keep=False,
           junit=None, json=None, insecure=False, verbose=False):
    """Prove a template works: clone it, boot the clones, run the checks over SSH, destroy the clones."""
    from nixgold import commands

    overrides = _overrides(set_, **{"verify.profile": profile, "verify.clones": _int_flag("--clones", clones)})
    commands.verify(config, overrides, vmid=_int_flag("--vmid", vmid), name=name, tag=tag, keep=keep,
               junit=Path(junit) if junit else None, json_path=Path(json) if json else None, insecure=insecure)


@task(help={**COMMON_HELP, "force": "build even when the promoted template is up to date (or held back)",
            "keep_on_error": "keep a candidate that failed verification, for inspection (the next refresh removes it)",
            "update_lock": "run `invoke lock` first (pin the channel's newest ISO), once the refresh holds its lock",
            "json": "write the refresh report (phases, vmids, digests, verify report, swap window) to this file"},
      iterable=["set_"])
@_cli
def refresh(c, config=None, set_=None, force=False, keep_on_error=False, update_lock=False, json=None,
            verbose=False):
    """The nightly job: build a candidate aside, verify it, swap it into template.vmid; keep archives.

    Exit codes: 0 up to date, 10 promoted, 4 build failed and 5 verification failed (the promoted
    template untouched), 7 locked, 8 verified but not promoted (linked clones), 2 config, 3 preflight,
    6 Proxmox API, 130 interrupted.
    """
    from nixgold import commands

    result = commands.refresh(config, _overrides(set_), force=force, keep_on_error=keep_on_error,
                              update_lock=update_lock, json_path=Path(json) if json else None)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(help={**COMMON_HELP, "archive": "vmid of the archive to restore (default: the newest verified one)",
            "json": "write the rollback report to this file"}, iterable=["set_"])
@_cli
def rollback(c, config=None, set_=None, archive=None, json=None, verbose=False):
    """Put the newest verified archive back at template.vmid (the current template is archived), or
    undo a promotion a stopped refresh left half done."""
    from nixgold import commands

    commands.rollback(config, _overrides(set_), archive_vmid=_int_flag("--archive", archive),
                      json_path=Path(json) if json else None)


@task(help={**COMMON_HELP, "json": "print JSON instead of a table"}, iterable=["set_"])
@_cli
def templates(c, config=None, set_=None, json=False, verbose=False):
    """List the promoted, archived, staged and candidate templates: build id, digest, verification,
    linked clones."""
    from nixgold import commands

    print(commands.templates(config, _overrides(set_), as_json=json))


# The test bed's tasks (a developer tool, not part of the product) live with the test bed; they are
# added here as the `testbed` collection only when the tests are there (a source checkout).
ns = Collection(render, config, lock, build_template, verify, refresh, rollback, templates)
try:
    from tests.testbed.tasks import testbed as _testbed_collection
except ImportError:  # an installed nixgold without its tests
    pass
else:
    ns.add_collection(_testbed_collection)
