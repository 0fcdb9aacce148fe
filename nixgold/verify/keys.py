"""Ephemeral SSH key pairs for `invoke verify` (generated with ``cryptography``, no ssh-keygen).

The private key lives in a fresh ``0700`` directory as a ``0600`` OpenSSH file and is deleted at
the end of the run (kept only with ``--keep``, so the printed ``ssh -i`` command works).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


@dataclass
class EphemeralKey:
    private_key_file: Path
    public_key: str  # one OpenSSH line: "ssh-ed25519 AAAA... comment"
    secret_lines: tuple[str, ...]  # the private key's base64 lines, for redaction

    @property
    def directory(self) -> Path:
        return self.private_key_file.parent

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def generate(comment: str, parent: str | os.PathLike[str] | None = None) -> EphemeralKey:
    """A new ed25519 key pair; the private half in ``<tmp>/nixgold-verify-XXXX/id_ed25519`` (0600)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    directory = Path(tempfile.mkdtemp(prefix="nixgold-verify-", dir=parent))
    directory.chmod(0o700)
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    (directory / "id_ed25519.pub").write_text(f"{public} {comment}\n")
    lines = tuple(line for line in private.decode().splitlines() if line and not line.startswith("-----"))
    return EphemeralKey(private_key_file=path, public_key=f"{public} {comment}", secret_lines=lines)
