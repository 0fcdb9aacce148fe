"""The typed nixgold configuration: TOML file < environment < command-line flags.

Where the file comes from (first match wins): ``--config PATH``, ``$NIXGOLD_CONFIG``,
``./nixgold.toml``. Secrets never live in the file: they come from the environment
(see :class:`Credentials`). Every value is validated before anything is written or
contacted; :class:`~nixgold.errors.ConfigError` lists every bad key at once, each with
the key path, the value, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from nixgold.config.credentials import Credentials
from nixgold.config.model import (
    BuildSettings,
    Config,
    IsoSettings,
    NixosSettings,
    ProxmoxSettings,
    RefreshSettings,
    TemplateSettings,
    UserSettings,
    VerifySettings,
    VmSettings,
)
from nixgold.config.validate import Issues, validate
from nixgold.errors import ConfigError, ConfigIssue, Hidden

DEFAULT_CONFIG_NAME = "nixgold.toml"

CONFIG_ENV = "NIXGOLD_CONFIG"

# --- loading ----------------------------------------------------------------------------
def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None,
                     cwd: Path | None = None) -> Path | None:
    """``--config`` > ``$NIXGOLD_CONFIG`` > ``./nixgold.toml`` (None when none exists)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.exists() else None

def load_config(path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None, require_file: bool = True) -> Config:
    """Find, read, merge and validate the configuration.

    ``overrides`` maps dotted key paths (``"template.vmid"``) to values from command-line
    flags; they win over the file.
    """
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    source = None
    if file is None:
        if require_file:
            raise ConfigError(
                ConfigIssue("config file", str(Path.cwd() / DEFAULT_CONFIG_NAME),
                            f"an existing file: copy nixgold.example.toml to {DEFAULT_CONFIG_NAME}, "
                            f"or pass --config PATH / set {CONFIG_ENV}"))
    else:
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(ConfigIssue("config file", str(file), f"a readable file ({exc.strerror})")) from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(ConfigIssue("config file", str(file), f"valid TOML ({exc})")) from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
        origins[dotted] = "flag"
    return parse_config(raw, source=source, origins=origins)

def parse_override(assignment: str) -> tuple[str, Any]:
    """Parse ``--set key.path=value``; the value is read as TOML, else taken as a string."""
    if "=" not in assignment:
        raise ConfigError(ConfigIssue("--set", assignment, "KEY=VALUE, e.g. vm.cores=4"))
    key, _, text = assignment.partition("=")
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value

def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(ConfigIssue(dotted, value, f"'{part}' to be a table"))
    node[parts[-1]] = value

# --- validation ---------------------------------------------------------------------------
_SECTIONS: dict[str, type] = {
    "proxmox": ProxmoxSettings,
    "template": TemplateSettings,
    "vm": VmSettings,
    "nixos": NixosSettings,
    "iso": IsoSettings,
    "build": BuildSettings,
    "verify": VerifySettings,
    "refresh": RefreshSettings,
}

def parse_config(raw: Mapping[str, Any], *, source: str | None = None,
                 origins: Mapping[str, str] | None = None) -> Config:
    """Validate raw TOML data into a :class:`Config` or raise one ConfigError listing all issues."""
    issues = Issues(origins or {})
    sections: dict[str, Any] = {}
    known = set(_SECTIONS) | {"users"}
    for key in raw:
        if key not in known:
            issues.add(key, shown_value(key, raw[key]), f"one of the sections {sorted(known)}{_did_you_mean(key, known)}"
                       + secret_hint(key))
    for name, cls in _SECTIONS.items():
        sections[name] = _build_section(name, cls, raw.get(name, {}), issues)
    users = _build_users(raw.get("users", []), issues)
    # Values that failed their type check were reported and replaced by defaults, so the
    # value checks below still run and every problem is reported in one go.
    config = Config(users=users, source=source, **sections)
    validate(config, issues)
    if issues.items:
        raise ConfigError(issues.items, source=source)
    return config

#: Words in an unknown key's name that say its value may be a secret: never echo such a value.
SECRET_WORDS = ("token", "secret", "password", "passwd", "key", "credential")


def looks_secret(key: str) -> bool:
    name = key.lower()
    return any(word in name for word in SECRET_WORDS)


def shown_value(key: str, value: Any) -> Any:
    return Hidden("the key's name says it may be a secret") if looks_secret(key) else value


def secret_hint(key: str) -> str:
    if not looks_secret(key):
        return ""
    return ("; secrets never go in the config file: export PROXMOX_TOKEN_SECRET (or PROXMOX_PASSWORD) "
            "in the environment or a 0600 env file")


def _did_you_mean(key: str, options: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""

def _build_section(name: str, cls: type, data: Any, issues: Issues) -> Any:
    if not isinstance(data, dict):
        issues.add(name, data, "a table ([" + name + "])")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{name}.{key}"
        if key not in fields:
            issues.add(path, shown_value(key, value),
                       f"a known key of [{name}]: {sorted(fields)}{_did_you_mean(key, fields)}{secret_hint(key)}")
            continue
        coerced = _coerce(path, value, fields[key].type, issues)
        if coerced is not _INVALID:
            kwargs[key] = coerced
    return cls(**kwargs)

_INVALID = object()

def _coerce(path: str, value: Any, annotation: Any, issues: Issues) -> Any:
    """Check the TOML value's type against the dataclass annotation (a string here)."""
    ann = str(annotation)
    optional = "None" in ann
    base = ann.replace(" | None", "")
    if value is None and optional:
        return None
    if base == "bool":
        if isinstance(value, bool):
            return value
        issues.add(path, value, "true or false")
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        issues.add(path, value, "an integer")
    elif base == "str":
        if isinstance(value, str):
            return value
        issues.add(path, value, "a string")
    elif base.startswith("tuple[str"):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        issues.add(path, value, "a list of strings")
    else:  # pragma: no cover - a field type the loader does not know
        raise TypeError(f"unsupported config field type {ann} for {path}")
    return _INVALID

def _build_users(data: Any, issues: Issues) -> tuple[UserSettings, ...]:
    if not isinstance(data, list):
        issues.add("users", data, "an array of tables ([[users]])")
        return ()
    users = []
    for index, item in enumerate(data):
        path = f"users[{index}]"
        if not isinstance(item, dict):
            issues.add(path, item, "a table with name and ssh_keys")
            continue
        fields = {f.name: f for f in dataclasses.fields(UserSettings)}
        kwargs: dict[str, Any] = {}
        for key, value in item.items():
            if key not in fields:
                issues.add(f"{path}.{key}", shown_value(key, value),
                           f"a known user key: {sorted(fields)}{_did_you_mean(key, fields)}{secret_hint(key)}")
                continue
            coerced = _coerce(f"{path}.{key}", value, fields[key].type, issues)
            if coerced is not _INVALID:
                kwargs[key] = coerced
        if "name" not in kwargs:
            if not any(i.key.startswith(f"{path}.name") for i in issues.items):
                issues.add(f"{path}.name", None, "a user name (required)")
            continue
        users.append(UserSettings(**kwargs))
    return tuple(users)

def describe_config(config: Config, creds: Credentials) -> dict[str, Any]:
    """The effective configuration as printed by `invoke config` (secrets redacted)."""
    return {"source": config.source, "credentials": creds.describe(), **config.to_dict()}
