"""Packer's environment: only what it needs - never a secret it does not use, never our own variables.

* :func:`tool_environment` for ``packer version``, ``plugins installed``, ``init``: no secrets at all;
* :func:`packer_environment` for ``validate`` and ``build``: that plus exactly the ``PKR_VAR_*`` the
  rendered template declares (the API secret among them: the only way a secret reaches Packer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from nixgold.config.credentials import Credentials
from nixgold.render.inputs import (
    VAR_BUILD_ID,
    VAR_BUILD_PRIVATE_KEY_FILE,
    VAR_BUILD_PUBLIC_KEY,
    VAR_BUILD_VM_NAME,
    VAR_GIT_COMMIT,
    VAR_ISO_SHA256,
    VAR_ISO_URL,
    VAR_PROXMOX_PASSWORD,
    VAR_PROXMOX_TOKEN,
    VAR_PROXMOX_URL,
    VAR_PROXMOX_USERNAME,
)

#: What Packer itself reads from the environment besides PKR_VAR_*: where it lives and finds plugins,
#: locale, temp dirs, proxies for `packer init`, and the CA bundle.
_KEEP_EXACT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TMPDIR", "TZ", "SSL_CERT_FILE",
                         "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                         "no_proxy"})
_KEEP_PREFIXES = ("LC_", "XDG_", "PACKER_PLUGIN_PATH", "PACKER_CONFIG", "PACKER_CACHE_DIR", "PACKER_TMP_DIR")


def tool_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment cut to what Packer needs to run at all; no secrets."""
    env = {k: v for k, v in base.items() if k in _KEEP_EXACT or k.startswith(_KEEP_PREFIXES)}
    env["CHECKPOINT_DISABLE"] = "1"  # no phoning home
    return env


def packer_environment(base: Mapping[str, str], *, dialect: str, creds: Credentials, private_key_file: Path,
                       public_key: str, build_id: str, build_vm_name: str, commit: str, iso_url: str | None,
                       iso_sha256: str | None) -> dict[str, str]:
    """:func:`tool_environment` plus the PKR_VAR_* the rendered template declares for ``dialect``."""
    env = tool_environment(base)
    env[f"PKR_VAR_{VAR_PROXMOX_URL}"] = str(creds.url)
    env[f"PKR_VAR_{VAR_BUILD_PRIVATE_KEY_FILE}"] = str(private_key_file)
    env[f"PKR_VAR_{VAR_BUILD_ID}"] = build_id
    env[f"PKR_VAR_{VAR_BUILD_VM_NAME}"] = build_vm_name
    env[f"PKR_VAR_{VAR_GIT_COMMIT}"] = commit
    if dialect == "plugin":
        env[f"PKR_VAR_{VAR_PROXMOX_USERNAME}"] = str(creds.token_id)
        env[f"PKR_VAR_{VAR_PROXMOX_TOKEN}"] = str(creds.token_secret)
        env[f"PKR_VAR_{VAR_BUILD_PUBLIC_KEY}"] = public_key
    else:
        env[f"PKR_VAR_{VAR_PROXMOX_USERNAME}"] = str(creds.username)
        env[f"PKR_VAR_{VAR_PROXMOX_PASSWORD}"] = str(creds.password)
    if iso_url is not None:
        env[f"PKR_VAR_{VAR_ISO_URL}"] = iso_url
        env[f"PKR_VAR_{VAR_ISO_SHA256}"] = str(iso_sha256)
    if creds.ca_bundle:
        env["SSL_CERT_FILE"] = str(Path(creds.ca_bundle).resolve())  # Go's crypto/x509 reads it
    return env
