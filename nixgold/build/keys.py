"""The per-build SSH key pair: Packer logs into the installed system with it, cleanup.sh removes it.

``build/<id>/build_key`` (OpenSSH ed25519 private key, mode 0600, created with O_EXCL) and
``build/<id>/build_key.pub``. ``build/`` is gitignored and so is ``*_key``. The private key
reaches Packer only as a file path (``PKR_VAR_build_private_key_file``); its base64 lines are
added to the redactor so they can never be printed or logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

PRIVATE_NAME = "build_key"
PUBLIC_NAME = "build_key.pub"


@dataclass(frozen=True)
class BuildKey:
    private_key_file: Path
    public_key_file: Path
    public_key: str  # "ssh-ed25519 AAAA... nixgold-build-<id>"
    secret_lines: tuple[str, ...]  # the private key's base64 lines, for redaction


def generate(directory: Path, build_id: str) -> BuildKey:
    """Write a fresh ed25519 pair into ``directory`` (which must not hold one yet)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()  # Packer gets the path; its working directory is elsewhere
    path = directory / PRIVATE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.chmod(path, 0o600)  # whatever the umask said
    line = f"{public} nixgold-build-{build_id}"
    pub = directory / PUBLIC_NAME
    pub.write_text(line + "\n")
    lines = tuple(x for x in private.decode().splitlines() if x and not x.startswith("-----"))
    return BuildKey(private_key_file=path, public_key_file=pub, public_key=line, secret_lines=lines)
