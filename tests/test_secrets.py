"""nixgold.secrets: the one redactor (every spelling of a secret becomes ***; too short is refused)."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from nixgold.secrets import MIN_SECRET_LENGTH, Redactor, SecretTooShort

TOKEN = "5b1d0c6e-7f3a-4c2b-9e8d-1a2b3c4d5e6f"


def test_every_secret_longest_first() -> None:
    r = Redactor(["abcdefgh", "abcdefgh-ijkl"])
    assert r("token abcdefgh-ijkl and abcdefgh") == "token *** and ***"
    assert Redactor()("nothing here") == "nothing here"


def test_json_and_url_spellings_are_covered() -> None:
    secret = 'pa"ss wo\\rd/+x'
    r = Redactor([secret])
    assert r(json.dumps({"password": secret})) == '{"password": "***"}'
    assert r(f"?password={urllib.parse.quote(secret, safe='')}") == "?password=***"


def test_more_spellings_and_secrets_can_be_added() -> None:
    r = Redactor([TOKEN])
    r.add_spelling(lambda s: [s.upper()])
    r.add("-----private-key-line-----")
    assert r(f"{TOKEN.upper()} -----private-key-line-----") == "*** ***"
    assert TOKEN in r.secrets and TOKEN.upper() in r.secrets


@pytest.mark.parametrize("short", ["Q", "Qz9", "Qz9!x-7"[: MIN_SECRET_LENGTH - 1]])
def test_a_secret_too_short_to_mask_is_refused(short: str) -> None:
    with pytest.raises(SecretTooShort, match=f"at least {MIN_SECRET_LENGTH}"):
        Redactor([short])
    with pytest.raises(SecretTooShort):
        Redactor().add(short)
    assert short not in str(pytest.raises(SecretTooShort, Redactor, [short]).value)  # never echoed
