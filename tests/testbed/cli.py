"""Plain functions behind ``invoke testbed.up`` / ``testbed.import`` / ``testbed.down``.

No invoke import here; tasks.py wraps these.  Also runnable directly::

    python -m tests.testbed.cli up [--root DIR] [--netns NAME] [--no-template] [--variant good]
    python -m tests.testbed.cli import --image FILE|VARIANT --vmid N [--name NAME] [--no-template]
    python -m tests.testbed.cli status | down
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .bed import DEFAULT_ROOT, Testbed, TestbedError


def _bed(root: str | Path | None, netns: str | None, **kwargs: Any) -> Testbed:
    opts: dict[str, Any] = {k: v for k, v in kwargs.items() if v is not None}
    return Testbed(root=Path(root) if root else DEFAULT_ROOT, netns=netns or "nixgold-testbed", **opts)


def up(root: str | Path | None = None, netns: str | None = None, *, template: bool = True,
       variant: str = "good", description: str | None = None, port: int = 8006) -> Testbed:
    """Start namespace + bridge + DHCP + simulator, import ``variant`` as template 9004, write
    ``<root>/env`` and ``<root>/nixgold.toml``; print how to use it."""
    bed = _bed(root, netns, image_variant=variant, description=description, port=port)
    bed.up(template=template)
    print(f"test bed up: {bed.url} (node {bed.node}, storage {bed.storage}, bridge {bed.bridge}, "
          f"netns {bed.netns})")
    print(f"environment: {bed.env_path}")
    print(bed.usage())
    return bed


def down(root: str | Path | None = None, netns: str | None = None) -> None:
    """Stop every guest and the simulator, delete the namespace; fails if anything survives."""
    _bed(root, netns).down()
    print("test bed down")


def import_image(image: str, vmid: int, root: str | Path | None = None, netns: str | None = None, *,
                 kernel: str | None = None, initrd: str | None = None, cmdline: str | None = None,
                 name: str | None = None, description: str | None = None, template: bool = True) -> int:
    """Import ``image`` as VM ``vmid`` (a template unless ``template=False``).

    ``image`` is a stand-in variant name (``good``, ``agent-off``...), a cached image directory
    (``disk.qcow2`` + ``vmlinuz`` + ``initrd.img`` + ``image.json``), that directory's
    ``disk.qcow2``, or any qcow2 (booted by SeaBIOS unless ``kernel`` is given)."""
    bed = _bed(root, netns)
    if not bed.is_up():
        raise TestbedError("the test bed is not up (run testbed.up first)")
    path = Path(image)
    if not path.exists():
        from .images import VARIANTS

        if image in VARIANTS:
            return bed.import_variant(image, vmid, name=name, description=description)
        raise TestbedError(f"{image} is neither a file nor an image variant ({', '.join(VARIANTS)})")
    if path.is_dir():
        path = path / "disk.qcow2"
    meta_file = path.parent / "image.json"
    if kernel is None and (path.parent / "vmlinuz").exists() and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        kernel = str(path.parent / "vmlinuz")
        initrd = initrd or str(path.parent / "initrd.img")
        cmdline = cmdline or meta.get("cmdline")
    return bed.import_image(path, vmid, kernel, initrd, cmdline, name=name, description=description,
                            template=template)


def status(root: str | Path | None = None, netns: str | None = None) -> dict[str, Any]:
    bed = _bed(root, netns)
    out: dict[str, Any] = {"up": bed.is_up(), "url": bed.url, "netns": bed.netns, "root": str(bed.root),
                           "network": bed.net.status()}
    if bed.is_up():
        with bed.enter():
            out["simulator"] = bed.sim_admin.state()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.testbed.cli", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--netns", default=None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--no-template", action="store_true")
    p_up.add_argument("--variant", default="good")
    p_up.add_argument("--description", default=None)
    p_imp = sub.add_parser("import")
    p_imp.add_argument("--image", required=True)
    p_imp.add_argument("--vmid", type=int, required=True)
    p_imp.add_argument("--name")
    p_imp.add_argument("--kernel")
    p_imp.add_argument("--initrd")
    p_imp.add_argument("--cmdline")
    p_imp.add_argument("--description")
    p_imp.add_argument("--no-template", action="store_true")
    sub.add_parser("down")
    sub.add_parser("status")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            up(args.root, args.netns, template=not args.no_template, variant=args.variant,
               description=args.description)
        elif args.cmd == "import":
            vmid = import_image(args.image, args.vmid, args.root, args.netns, kernel=args.kernel,
                                initrd=args.initrd, cmdline=args.cmdline, name=args.name,
                                description=args.description, template=not args.no_template)
            print(f"imported as {vmid}")
        elif args.cmd == "down":
            down(args.root, args.netns)
        else:
            print(json.dumps(status(args.root, args.netns), indent=2))
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
