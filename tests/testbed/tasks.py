"""The test bed's invoke tasks: `invoke testbed.up / testbed.import / testbed.down` (see tests/testbed/).

A developer tool, not part of the product: a Proxmox VE API simulator with real QEMU guests in a
network namespace. Needs root and the packages of `scripts/setup.sh --dev`. The product's tasks.py
adds this collection.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from invoke import Collection, Exit, task

from .bed import TestbedError


def _testbed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a test bed task; its errors exit 1 with the message."""

    @functools.wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
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
