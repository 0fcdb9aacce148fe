"""nixgold's command line: `invoke --list`, `invoke --help <task>`.

Tasks only parse flags and call :mod:`nixgold.app`; :func:`_cli` is the one place where
library errors become messages and exit codes (see README "Exit codes").
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from invoke import Collection, Exit, task

COMMON_HELP = {
    "config": "config file (default: $NIXGOLD_CONFIG, else ./nixgold.toml)",
    "set": "override a config key, e.g. --set vm.cores=4 (repeatable)",
    "verbose": "log debug details to stderr",
}


def _cli(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body; turn nixgold errors into `Exit(message, code)`."""

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        from nixgold.errors import ExitCode, NixgoldError, exit_code_for

        logging.basicConfig(level=logging.DEBUG if kwargs.get("verbose") else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(c, *args, **kwargs)
        except NixgoldError as exc:
            raise Exit(f"nixgold: {exc}", code=exit_code_for(exc)) from None
        except KeyboardInterrupt:
            raise Exit("nixgold: interrupted", code=int(ExitCode.INTERRUPTED)) from None

    return wrapper


def _overrides(set_: list[str] | None, **flags: Any) -> dict[str, Any]:
    """--set KEY=VALUE pairs plus dedicated flags (None = not given)."""
    from nixgold.config import parse_override

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
    from nixgold import app

    for path in app.render(config, _overrides(set_), Path(output), dialect):
        print(path)


@task(help={**COMMON_HELP, "json": "print JSON instead of TOML"}, iterable=["set_"])
@_cli
def config(c, config=None, set_=None, json=False, verbose=False):
    """Print the effective configuration (file < environment < flags), secrets redacted."""
    from nixgold import app

    print(app.show_config(config, _overrides(set_), as_json=json))


@task(help={**COMMON_HELP, "channel": "NixOS channel to pin (default: iso.channel or nixos-<release>)"},
      iterable=["set_"])
@_cli
def lock(c, config=None, set_=None, channel=None, verbose=False):
    """Pin the channel's latest minimal ISO (URL + sha256) in nixgold.lock; needs network."""
    from nixgold import app

    app.lock(config, _overrides(set_), channel)


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
    from nixgold import app

    overrides = _overrides(set_, **{"template.vmid": _int_flag("--vmid", vmid), "proxmox.node": node,
                                    "vm.storage": storage, "vm.bridge": bridge, "nixos.release": release,
                                    "vm.firmware": firmware})
    if dry_run:
        app.dry_run(config, overrides, sys.stdout)
        return
    app.build(config, overrides, replace=replace, keep_on_error=keep_on_error, verify=verify)


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
    from nixgold import app

    overrides = _overrides(set_, **{"verify.profile": profile, "verify.clones": _int_flag("--clones", clones)})
    app.verify(config, overrides, vmid=_int_flag("--vmid", vmid), name=name, tag=tag, keep=keep,
               junit=Path(junit) if junit else None, json_path=Path(json) if json else None, insecure=insecure)


# ------------------------------------------------------------------ the test bed (tests/testbed)
# A developer tool, not part of the product: a Proxmox VE API simulator with real QEMU guests in a
# network namespace (see tests/testbed/README.md). Needs root and the packages of scripts/setup.sh --dev.

def _testbed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a test bed task; its errors exit 1 with the message."""

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tests.testbed.bed import TestbedError

        try:
            return fn(c, *args, **kwargs)
        except TestbedError as exc:
            raise Exit(f"testbed: {exc}", code=1) from None

    return wrapper


TESTBED_HELP = {"root": "state directory (default: ./.testbed)",
                "netns": "network namespace (default: nixgold-testbed)"}


@task(name="up", help={**TESTBED_HELP, "variant": "stand-in image imported as template 9004 (default: good)",
                       "no_template": "start without importing template 9004",
                       "port": "simulator port inside the namespace (default 8006)"})
@_testbed
def testbed_up(c, root=None, netns=None, variant="good", no_template=False, port=8006):
    """Start the test bed (namespace, vmbr0, DHCP, PVE simulator) with stand-in template 9004; write .testbed/env."""
    from tests.testbed import cli

    cli.up(root, netns, template=not no_template, variant=variant, port=int(port))


@task(name="import", help={**TESTBED_HELP, "image": "qcow2 file, cached image directory or stand-in variant name",
                           "vmid": "VM id to import as", "name": "VM name", "kernel": "kernel for direct boot",
                           "initrd": "initrd for direct boot", "cmdline": "kernel command line",
                           "description": "VM description (default: a nixgold build manifest)",
                           "no_template": "import as a plain VM, not a template"})
@_testbed
def testbed_import(c, image, vmid, root=None, netns=None, name=None, kernel=None, initrd=None, cmdline=None,
                   description=None, no_template=False):
    """Register a qcow2 (+ kernel/initrd) in the running test bed as a template."""
    from tests.testbed import cli

    try:
        number = int(vmid)
    except ValueError:
        raise Exit(f"testbed: --vmid {vmid!r} is not a whole number", code=1) from None
    print(f"imported as {cli.import_image(image, number, root, netns, kernel=kernel, initrd=initrd, cmdline=cmdline, name=name, description=description, template=not no_template)}")


@task(name="down", help=TESTBED_HELP)
@_testbed
def testbed_down(c, root=None, netns=None):
    """Stop every guest and the simulator and remove the namespace."""
    from tests.testbed import cli

    cli.down(root, netns)


testbed = Collection("testbed", testbed_up, testbed_import, testbed_down)
ns = Collection(render, config, lock, build_template, verify, testbed)
