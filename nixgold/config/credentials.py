"""Connection settings and secrets, from the environment only (never from the config file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from nixgold.config.model import Config
from nixgold.config.validate import TOKEN_ID_RE, USERID_RE, api_url_problem, url_value
from nixgold.errors import ConfigError, ConfigIssue
from nixgold.secrets import MIN_SECRET_LENGTH, REDACTED

#: The environment variables that hold secrets, and where each goes.
SECRET_VARIABLES = ("PROXMOX_TOKEN_SECRET", "PROXMOX_PASSWORD")


@dataclass(frozen=True)
class Credentials:
    """Connection settings and secrets, from the environment only.

    ``PROXMOX_URL``, ``PROXMOX_TOKEN_ID`` (user@realm!tokenid), ``PROXMOX_TOKEN_SECRET``,
    and for password login (Packer's bundled builder): ``PROXMOX_USERNAME``,
    ``PROXMOX_PASSWORD``. ``PROXMOX_CA_BUNDLE`` names a PEM file to trust.
    """

    url: str | None = None
    token_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token_secret, self.password) if s)

    def describe(self) -> dict[str, str | None]:
        return {
            "url": self.url,
            "token_id": self.token_id,
            "token_secret": REDACTED if self.token_secret else None,
            "username": self.username,
            "password": REDACTED if self.password else None,
            "ca_bundle": self.ca_bundle,
        }

def load_credentials(config: Config, env: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if env is None else env
    creds = Credentials(
        url=env.get("PROXMOX_URL") or config.proxmox.url,
        token_id=env.get("PROXMOX_TOKEN_ID") or config.proxmox.token_id,
        token_secret=env.get("PROXMOX_TOKEN_SECRET") or None,
        username=env.get("PROXMOX_USERNAME") or config.proxmox.username,
        password=env.get("PROXMOX_PASSWORD") or None,
        ca_bundle=env.get("PROXMOX_CA_BUNDLE") or config.proxmox.ca_bundle,
    )
    issues: list[ConfigIssue] = []
    if creds.url is not None and (problem := api_url_problem(creds.url)):
        issues.append(ConfigIssue("PROXMOX_URL", url_value(creds.url), problem))
    for name in SECRET_VARIABLES:
        value = env.get(name) or ""
        if 0 < len(value) < MIN_SECRET_LENGTH:
            # The value is never shown: ConfigIssue prints it, so a placeholder stands in.
            issues.append(ConfigIssue(name, f"<{len(value)} characters>",
                                      f"a secret of at least {MIN_SECRET_LENGTH} characters: a shorter one cannot be "
                                      f"hidden in logs safely (every occurrence of it in ordinary text would be masked, "
                                      f"or it would leak); use an API token (PROXMOX_TOKEN_ID/PROXMOX_TOKEN_SECRET)"))
    if creds.token_id is not None and not TOKEN_ID_RE.fullmatch(creds.token_id):
        issues.append(ConfigIssue("PROXMOX_TOKEN_ID", creds.token_id, "user@realm!tokenid, e.g. nixgold@pve!build"))
    if creds.username is not None and not USERID_RE.fullmatch(creds.username):
        issues.append(ConfigIssue("PROXMOX_USERNAME", creds.username, "user@realm, e.g. root@pam"))
    if creds.ca_bundle is not None and not Path(creds.ca_bundle).is_file():
        issues.append(ConfigIssue("PROXMOX_CA_BUNDLE", creds.ca_bundle, "an existing PEM file"))
    if issues:
        raise ConfigError(issues, source="environment")
    return creds
