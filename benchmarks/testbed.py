"""Test bed figures: stand-in image build time (cold and cached) and clone -> SSH-ready time.

    .venv/bin/python benchmarks/testbed.py [--cold] [--clones 3]

Run as root (namespaces, QEMU). ``--cold`` builds the ``good`` image into a fresh temporary
cache (debootstrap from Debian's mirror: minutes); otherwise the cold figure is the one the
cached image recorded when it was built. Each clone is a linked clone of template 9004 made
through the simulator's API, booted alone under TCG; the time runs from the clone request until
port 22 accepts a connection (and separately until the guest agent reports an address).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="build the image into an empty cache (minutes)")
    ap.add_argument("--clones", type=int, default=3, help="clones to boot one after the other")
    args = ap.parse_args()

    from tests.testbed.bed import Testbed
    from tests.testbed.images import build_image

    if args.cold:
        cache = Path(tempfile.mkdtemp(prefix="nixgold-bench-images-"))
        try:
            info = build_image("good", cache_dir=cache)
            print(f"image good: cold build {info.seconds:.1f} s (fresh cache, debootstrap included)", flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    t0 = time.monotonic()
    info = build_image("good")
    cached = time.monotonic() - t0
    meta = info.metadata()
    print(f"image good: recorded cold build {meta['build_seconds']} s (base tree {meta['base_build_seconds']} s); "
          f"cached {cached * 1000:.1f} ms", flush=True)

    root = Path(tempfile.mkdtemp(prefix="nixgold-bench-"))
    bed = Testbed(root=root, netns=f"ngbench-{os.getpid()}", log_fn=lambda msg: None)
    t0 = time.monotonic()
    bed.up()
    print(f"test bed up (namespace, bridge, DHCP, simulator, template 9004) in {time.monotonic() - t0:.1f} s",
          flush=True)
    agent, ssh = [], []
    try:
        from nixgold.verify import keys as sshkeys

        key = sshkeys.generate("benchmark")
        try:
            with bed.enter():
                for i in range(args.clones):
                    vmid = 9500 + i
                    guest = bed.boot_clone(vmid, name=f"bench-{i + 1}", user="nixgold", ssh_pubkey=key.public_key,
                                           timeout=900)
                    agent.append(guest.seconds_to_agent)
                    ssh.append(guest.seconds_to_ssh or 0.0)
                    print(f"  clone {vmid}: agent address after {guest.seconds_to_agent:.1f} s, "
                          f"SSH ready after {guest.seconds_to_ssh:.1f} s", flush=True)
                    bed.destroy_vm(vmid)
        finally:
            key.remove()
        print(f"clone -> SSH ready: median {statistics.median(ssh):.1f} s, max {max(ssh):.1f} s "
              f"(agent: median {statistics.median(agent):.1f} s); load average {os.getloadavg()[0]:.2f}")
    finally:
        bed.down()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
