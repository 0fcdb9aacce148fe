"""The one redactor: every secret, in every spelling it may be printed in, becomes ``***``.

    redactor = Redactor(creds.secrets)          # API token secret, password
    redactor.add(*key.secret_lines)             # a private key's base64 lines
    redactor.add_spelling(machine_readable)     # Packer's -machine-readable escaping
    print(redactor(text))

Every place that shows or writes text (progress lines, Packer's log and output, reports, error
messages, the CLI's error path) goes through the same instance. Each secret is also matched as
the JSON string escape and the percent-encoding of itself (how it looks inside a JSON report or
an URL), plus any spelling a caller registers. Secrets shorter than :data:`MIN_SECRET_LENGTH`
cannot be masked without masking ordinary text: :mod:`nixgold.config.credentials` refuses them
when they are loaded, and :meth:`Redactor.add` refuses them too.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from typing import Callable, Iterable

REDACTED = "***"
#: Shorter secrets would turn ordinary words of every log line into ``***`` (or stay visible).
MIN_SECRET_LENGTH = 8

Spelling = Callable[[str], Iterable[str]]


def _standard_spellings(secret: str) -> Iterable[str]:
    yield secret
    yield json.dumps(secret)[1:-1]  # inside a JSON string
    yield urllib.parse.quote(secret, safe="")  # in a URL or a form body


class SecretTooShort(ValueError):
    """A secret so short that masking it would mask ordinary text."""


class Redactor:
    """Replaces every registered secret, in every registered spelling, with ``***`` (thread-safe)."""

    def __init__(self, secrets: Iterable[str | None] = (), spellings: Iterable[Spelling] = ()):
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        self._raw: list[str] = []
        self._spellings: list[Spelling] = [_standard_spellings, *spellings]
        self.add(*(s for s in secrets if s))

    def add(self, *secrets: str) -> None:
        """Register secrets; SecretTooShort for one that cannot be masked safely."""
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH:
                raise SecretTooShort(f"a secret of {len(secret)} characters cannot be hidden in logs safely "
                                     f"(at least {MIN_SECRET_LENGTH} needed)")
        with self._lock:
            self._raw.extend(s for s in secrets if s not in self._raw)
            self._rebuild()

    def add_spelling(self, spelling: Spelling) -> None:
        """Another way text may spell a secret (e.g. Packer's machine-readable escaping)."""
        with self._lock:
            self._spellings.append(spelling)
            self._rebuild()

    def _rebuild(self) -> None:
        forms = {form for raw in self._raw for spell in self._spellings for form in spell(raw) if form}
        self._secrets = sorted(forms, key=len, reverse=True)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every form that is masked, longest first."""
        with self._lock:
            return tuple(self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text
