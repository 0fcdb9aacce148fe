"""ISO lock: resolving a channel, reading/writing nixgold.lock, choosing the build's ISO.

channels.nixos.org cannot be reached from here, so a local HTTPS server plays it, with the
behaviour documented for it: the channel's latest-* ISO URL answers with a redirect to the
concrete release file on releases.nixos.org, next to which a sha256sum-format file lives.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest
from nixgold.config.load import parse_config
from nixgold.errors import ConfigError, LockError
from nixgold.lock import IsoLock, channel_latest_url, iso_source, read_lock, resolve_channel, write_lock
from tests.helpers.tls import make_ca

SHA = "3" * 64
RELEASE_FILE = "nixos-minimal-26.05.1234.abcdef0-x86_64-linux.iso"


class ChannelServer(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], str]] = {}

    def _answer(self, body: bool) -> None:
        status, headers, text = self.routes.get(self.path, (404, {}, "not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        data = text.encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def channels(tmp_path: Path) -> Iterator[tuple[str, str]]:
    ca = make_ca(tmp_path / "tls")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChannelServer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.cert_pem, ca.key_pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    base = f"https://127.0.0.1:{server.server_address[1]}"
    release = f"{base}/releases/nixos/26.05/nixos-26.05.1234.abcdef0/{RELEASE_FILE}"
    ChannelServer.routes = {
        "/nixos-26.05/latest-nixos-minimal-x86_64-linux.iso": (302, {"Location": release}, ""),
        f"/releases/nixos/26.05/nixos-26.05.1234.abcdef0/{RELEASE_FILE}.sha256": (200, {}, f"{SHA}  {RELEASE_FILE}\n"),
        "/nixos-99.05/latest-nixos-minimal-x86_64-linux.iso": (404, {}, "no such channel"),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, str(ca.ca_pem)
    server.shutdown()
    server.server_close()


def test_resolve_channel_follows_redirect_and_reads_sha256(channels: tuple[str, str]) -> None:
    base, ca = channels
    lock = resolve_channel("nixos-26.05", base_url=base, verify=ca)
    assert lock.url.endswith(RELEASE_FILE) and "latest-" not in lock.url
    assert lock.sha256 == SHA and lock.file_name == RELEASE_FILE
    assert lock.source_url == channel_latest_url("nixos-26.05", base)


def test_unknown_channel_is_a_clear_error(channels: tuple[str, str]) -> None:
    base, ca = channels
    with pytest.raises(LockError, match="HTTP 404.*channel name"):
        resolve_channel("nixos-99.05", base_url=base, verify=ca)


def test_offline_is_a_clear_error() -> None:
    with pytest.raises(LockError, match="unreachable.*network access"):
        resolve_channel("nixos-26.05", base_url="https://127.0.0.1:9", timeout=2)


def test_sha256_file_for_another_file_is_refused(channels: tuple[str, str]) -> None:
    base, ca = channels
    key = next(k for k in ChannelServer.routes if k.endswith(".sha256"))
    ChannelServer.routes[key] = (200, {}, f"{SHA}  other.iso\n")
    with pytest.raises(LockError, match="lists 'other.iso'"):
        resolve_channel("nixos-26.05", base_url=base, verify=ca)


def _lock(**changes: str) -> IsoLock:
    data = dict(channel="nixos-26.05", source_url=channel_latest_url("nixos-26.05"),
                url=f"https://releases.nixos.org/nixos/26.05/x/{RELEASE_FILE}", sha256=SHA,
                file_name=RELEASE_FILE, resolved_at="2026-11-22T00:00:00+00:00")
    data.update(changes)
    return IsoLock(**data)


def test_lock_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nixgold.lock"
    assert read_lock(path) is None
    write_lock(path, _lock())
    assert read_lock(path) == _lock()


@pytest.mark.parametrize(("content", "fragment"), [
    ("not json", "not a readable JSON"),
    (json.dumps({"version": 7, "iso": {}}), "run `invoke lock` again"),
    (json.dumps({"version": 1, "iso": {"channel": "nixos-26.05"}}), "iso.url missing"),
    (json.dumps({"version": 1, "iso": {**_lock().__dict__, "sha256": "abc"}}), "iso.sha256"),
    (json.dumps({"version": 1, "iso": {**_lock().__dict__, "url": _lock().source_url}}), "not a pinned"),
])
def test_broken_lock_files_are_named(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "nixgold.lock"
    path.write_text(content)
    with pytest.raises(LockError) as info:
        read_lock(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_iso_source_prefers_volume_then_pinned_url_then_lock() -> None:
    volume = iso_source(parse_config({"iso": {"volume": "local:iso/n.iso"}}), None)
    assert volume.volume == "local:iso/n.iso" and volume.url is None
    pinned = iso_source(parse_config({"iso": {"url": "https://x.org/a.iso", "sha256": SHA}}), None)
    assert pinned.url == "https://x.org/a.iso" and pinned.origin == "iso.url"
    locked = iso_source(parse_config({}), _lock())
    assert locked.url == _lock().url and locked.sha256 == SHA and locked.origin == "nixgold.lock"


def test_floating_url_without_lock_is_refused() -> None:
    latest = "https://channels.nixos.org/nixos-26.05/latest-nixos-minimal-x86_64-linux.iso"
    with pytest.raises(LockError, match="invoke lock"):
        iso_source(parse_config({"iso": {"url": latest}}), None)
    with pytest.raises(LockError, match="invoke lock"):
        iso_source(parse_config({}), None)
    assert iso_source(parse_config({"iso": {"url": latest}}), _lock(source_url=latest)).url == _lock().url


def test_lock_for_another_channel_or_url_is_refused() -> None:
    with pytest.raises(LockError, match="pins channel nixos-26.05.*nixos-24.05"):
        iso_source(parse_config({"nixos": {"release": "24.05"}}), _lock())
    other = "https://mirror.example/nixos-26.05/latest-nixos-minimal-x86_64-linux.iso"
    with pytest.raises(ConfigError, match="iso.url"):
        iso_source(parse_config({"iso": {"url": other}}), _lock())


def test_invoke_lock_pins_and_the_plan_uses_it(channels: tuple[str, str], tmp_path: Path) -> None:
    """`invoke lock` end to end: nixgold.lock lands next to the config and the dry run shows it."""
    import os
    import subprocess
    import sys

    base, ca = channels
    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    work.mkdir()
    (work / "nixgold.toml").write_text((repo / "nixgold.example.toml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXMOX_", "NIXGOLD_"))}
    env.update(NIXGOLD_CHANNELS_URL=base, NIXGOLD_CHANNELS_CA=ca)
    invoke = [sys.executable, "-m", "invoke", "-r", str(repo)]
    result = subprocess.run(invoke + ["lock"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert read_lock(work / "nixgold.lock").sha256 == SHA
    plan = subprocess.run(invoke + ["build-template", "--dry-run"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert RELEASE_FILE in plan.stdout and "NOT PINNED" not in plan.stdout
    hcl = (work / "build/dry-run/packer/nixgold.pkr.hcl").read_text()
    assert SHA in hcl and RELEASE_FILE in hcl
