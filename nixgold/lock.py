"""The ISO lock: pin a NixOS channel's moving `latest-…` minimal ISO to a URL + sha256.

`invoke lock` resolves ``https://channels.nixos.org/<channel>/latest-nixos-minimal-<arch>.iso``
(an HTTP redirect to the concrete release file on releases.nixos.org) and reads the release's
``.sha256`` file next to it, then writes ``nixgold.lock``. Builds read the lock, never the
network, so two builds from the same lock boot the same ISO.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nixgold.config.model import Config
from nixgold.config.validate import SHA256_RE, is_floating_iso_url
from nixgold.errors import ConfigError, ConfigIssue, LockError

LOCK_NAME = "nixgold.lock"
LOCK_VERSION = 1
CHANNELS_BASE_URL = "https://channels.nixos.org"
ARCH = "x86_64-linux"


@dataclass(frozen=True)
class IsoLock:
    channel: str
    source_url: str  # the floating latest-* URL that was resolved
    url: str  # the concrete release URL it pointed to
    sha256: str
    file_name: str
    resolved_at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class IsoSource:
    """Where the build's installer ISO comes from, resolved and pinned."""

    volume: str | None  # local:iso/<file>.iso already on PVE storage
    url: str | None  # pinned https URL
    sha256: str | None
    storage: str  # PVE storage for downloaded ISOs
    download_on_pve: bool
    origin: str  # "iso.volume" | "iso.url" | "nixgold.lock"
    channel: str | None = None

    def describe(self) -> str:
        if self.volume:
            return f"{self.volume} (already on PVE storage)"
        how = f"downloaded by PVE into {self.storage}" if self.download_on_pve else f"uploaded to {self.storage}"
        return f"{self.url} (sha256 {self.sha256[:12]}…, {how}; from {self.origin})"


def channel_latest_url(channel: str, base_url: str = CHANNELS_BASE_URL, arch: str = ARCH) -> str:
    return f"{base_url.rstrip('/')}/{channel}/latest-nixos-minimal-{arch}.iso"


# --- reading and writing ---------------------------------------------------------------
def read_lock(path: Path) -> IsoLock | None:
    """The lock in ``path``, None if the file does not exist; LockError if it is broken."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LockError(f"{path}: not a readable JSON lock file ({exc}); delete it and run `invoke lock`") from exc
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("iso"), dict):
        raise LockError(f"{path}: expected {{\"version\": {LOCK_VERSION}, \"iso\": {{...}}}}; run `invoke lock` again")
    iso = data["iso"]
    problems = []
    for key in ("channel", "source_url", "url", "sha256", "file_name", "resolved_at"):
        if not isinstance(iso.get(key), str) or not iso.get(key):
            problems.append(f"iso.{key} missing")
    if not problems:
        if not SHA256_RE.match(iso["sha256"]):
            problems.append(f"iso.sha256 = {iso['sha256']!r} is not 64 lowercase hex digits")
        if not iso["url"].startswith("https://") or is_floating_iso_url(iso["url"]):
            problems.append(f"iso.url = {iso['url']!r} is not a pinned https URL")
    if problems:
        raise LockError(f"{path}: " + "; ".join(problems) + "; run `invoke lock` again")
    return IsoLock(**{k: iso[k] for k in IsoLock.__dataclass_fields__})


def write_lock(path: Path, lock: IsoLock) -> None:
    text = json.dumps({"version": LOCK_VERSION, "iso": asdict(lock)}, indent=2, sort_keys=True) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --- resolving (network) -----------------------------------------------------------------
def resolve_channel(channel: str, *, base_url: str = CHANNELS_BASE_URL, timeout: float = 30.0,
                    session: Any = None, verify: bool | str = True) -> IsoLock:
    """Follow the channel's latest-* redirect and read the release's sha256 file.

    ``verify`` is passed per request (a CA bundle path or True): requests lets
    ``$REQUESTS_CA_BUNDLE`` override a session-level setting, not a per-request one.
    """
    import requests

    http = session or requests.Session()
    source_url = channel_latest_url(channel, base_url)
    try:
        head = http.head(source_url, allow_redirects=False, timeout=timeout, verify=verify)
    except requests.RequestException as exc:
        raise LockError(
            f"cannot resolve {channel}: {source_url} is unreachable ({_reason(exc)}). "
            "`invoke lock` needs network access to channels.nixos.org; builds use the existing nixgold.lock"
        ) from exc
    location = head.headers.get("Location")
    if head.status_code not in (301, 302, 303, 307, 308) or not location:
        raise LockError(f"cannot resolve {channel}: {source_url} answered HTTP {head.status_code} without a "
                        "redirect to a release ISO (is the channel name right? e.g. nixos-26.05)")
    if location.startswith("/"):
        location = re.sub(r"^(https://[^/]+).*$", r"\1", source_url) + location
    if not location.startswith("https://") or not location.endswith(".iso") or is_floating_iso_url(location):
        raise LockError(f"cannot resolve {channel}: redirect target {location!r} is not a pinned https .iso URL")
    sha_url = location + ".sha256"
    try:
        sha_resp = http.get(sha_url, timeout=timeout, verify=verify)
    except requests.RequestException as exc:
        raise LockError(f"cannot fetch {sha_url} ({_reason(exc)})") from exc
    if sha_resp.status_code != 200:
        raise LockError(f"cannot fetch {sha_url}: HTTP {sha_resp.status_code}")
    file_name = location.rsplit("/", 1)[-1]
    sha256 = parse_sha256_file(sha_resp.text, file_name, sha_url)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return IsoLock(channel=channel, source_url=source_url, url=location, sha256=sha256,
                   file_name=file_name, resolved_at=now)


def parse_sha256_file(text: str, file_name: str, where: str) -> str:
    """Parse ``<64 hex>  <file>`` (sha256sum format) and check it names ``file_name``."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 1 and SHA256_RE.match(parts[0].lower()):
            named = parts[1].lstrip("*") if len(parts) > 1 else file_name
            if named != file_name:
                raise LockError(f"{where} lists {named!r}, expected {file_name!r}")
            return parts[0].lower()
    raise LockError(f"{where} holds no sha256 line ('<64 hex digits>  {file_name}')")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"


# --- choosing the build's ISO --------------------------------------------------------------
def iso_source(config: Config, lock: IsoLock | None) -> IsoSource:
    """Pick the ISO for a build: iso.volume, a pinned iso.url, or the lock file.

    A floating latest-* URL (configured, or implied by the channel) is only usable once
    `invoke lock` has pinned it.
    """
    iso = config.iso
    if iso.volume:
        return IsoSource(volume=iso.volume, url=None, sha256=None, storage=iso.storage,
                         download_on_pve=False, origin="iso.volume")
    if iso.url and not is_floating_iso_url(iso.url):
        return IsoSource(volume=None, url=iso.url, sha256=iso.sha256, storage=iso.storage,
                         download_on_pve=iso.download_on_pve, origin="iso.url")
    wanted = iso.url or channel_latest_url(config.channel)
    if lock is None:
        raise LockError(
            f"no pinned ISO: {wanted} moves over time, so nixgold needs {LOCK_NAME}. "
            "Run `invoke lock` (needs network), or set iso.volume / iso.url + iso.sha256")
    if iso.url:
        if lock.source_url != iso.url:
            raise ConfigError(ConfigIssue("iso.url", iso.url,
                                          f"the URL pinned in {LOCK_NAME} ({lock.source_url}); run `invoke lock`"))
    elif lock.channel != config.channel:
        raise LockError(f"{LOCK_NAME} pins channel {lock.channel} but the config asks for {config.channel} "
                        "(nixos.release / iso.channel); run `invoke lock`")
    return IsoSource(volume=None, url=lock.url, sha256=lock.sha256, storage=iso.storage,
                     download_on_pve=iso.download_on_pve, origin=LOCK_NAME, channel=lock.channel)


def lock_path(config: Config) -> Path:
    """nixgold.lock lives next to the config file (the working directory without one)."""
    return (Path(config.source).resolve().parent if config.source else Path.cwd()) / LOCK_NAME
