"""``python -m tests.testbed.pvesim --config pvesim.json``: run the simulator.

Run it inside the test bed's network namespace (``ip netns exec``): guests'
TAPs go onto the bridges there.  SIGTERM/SIGINT stop every guest and exit;
nothing may outlive the process (QEMU runs with PDEATHSIG as a last resort).
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path

from .config import SimConfig
from .node import Node
from .router import load_handlers
from .schema import load_schema
from .server import ApiServer
from .tls import generate

log = logging.getLogger("pvesim")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pvesim", description="Proxmox VE API simulator with real QEMU guests")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    cfg = SimConfig.load(args.config)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    handlers_ = [logging.StreamHandler(sys.stderr), logging.FileHandler(cfg.state_dir / "pvesim.log")]
    logging.basicConfig(level=args.log_level.upper(), handlers=handlers_,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    schema = load_schema()
    tls = generate(cfg.state_dir / "tls", [cfg.listen, *cfg.hostnames])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    node = Node(cfg, schema)
    stopping = threading.Event()
    server: ApiServer | None = None

    def stop(*_: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("shutting down: stopping guests")
        node.shutdown()
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()

    server = ApiServer(node, schema, load_handlers(), ctx, on_shutdown_request=stop)
    atexit.register(node.runtime.kill_all)
    signal.signal(signal.SIGTERM, lambda *a: stop())
    signal.signal(signal.SIGINT, lambda *a: stop())
    (cfg.state_dir / "ca.pem").write_bytes(tls.ca_cert.read_bytes())
    (cfg.state_dir / "pvesim.pid").write_text(f"{os.getpid()}\n")
    log.info("listening on %s (node %s, state %s)", cfg.url, cfg.node, cfg.state_dir)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop()
        server.server_close()
        (cfg.state_dir / "pvesim.pid").unlink(missing_ok=True)
        log.info("simulator stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
