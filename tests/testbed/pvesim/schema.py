"""Request validation against the PVE API schema fixture.

A port of the parts of pve-common ``PVE::JSONSchema`` (``validate``,
``check_object``, ``check_prop``, ``check_type``) that API parameters go
through, so rejections carry PVE's exact messages, e.g.::

    400 Parameter verification failed.
    {"data": null, "errors": {"full": "type check ('boolean') failed - got 'True'"}}

The fixture is ``tests/fixtures/pve-api-schema.json`` (written by
``tests/fixtures/extract_pve_schema.py`` from the PVE 9.1 ``apidata.js``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import param_error
from .formats import FormatError, FormatRegistry

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "pve-api-schema.json"
INDEXED_KEY = re.compile(r"^([a-z]+)(\d+)$")


def is_integer(value: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", value) is not None


def is_number(value: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?", value) is not None


def _perl_regex(pattern: str) -> re.Pattern[str]:
    # Perl ``(?^:...)`` groups carry no flags: same as a plain non-capturing group.
    return re.compile(r"^(?:" + pattern.replace("(?^:", "(?:") + r")$", re.S)


_pattern_cache: dict[str, re.Pattern[str]] = {}


def _fmt_num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Validator:
    """check_prop / check_object with PVE's error texts."""

    def __init__(self, formats: FormatRegistry) -> None:
        self.formats = formats

    # pve-common add_error
    @staticmethod
    def add_error(errors: dict[str, str], path: str, msg: str) -> None:
        path = path or "_root"
        errors[path] = errors[path] + "\\n" + msg if path in errors else msg

    @staticmethod
    def lookup(props: dict[str, Any], key: str) -> dict[str, Any] | None:
        """Property schema for ``key``; ``net3`` resolves through ``net[n]``."""
        schema = props.get(key)
        if schema is not None:
            return schema
        m = INDEXED_KEY.match(key)
        if m:
            indexed = props.get(f"{m.group(1)}[n]")
            if indexed is not None and int(m.group(2)) <= int(indexed.get("index_max", 31)):
                if m.group(2) == str(int(m.group(2))):  # no leading zeros
                    return indexed
        return None

    def check_type(self, path: str, typ: Any, value: Any, errors: dict[str, str]) -> bool:
        if typ is None:
            return True
        if isinstance(typ, list):
            return any(self.check_type(path, t, value, {}) for t in typ) or self._fail(
                errors, path, f"type check ('{'|'.join(map(str, typ))}') failed"
            )
        if typ == "any":
            return True
        if typ == "null":
            return value is None or self._fail(errors, path, "type check ('null') failed")
        if isinstance(value, bool):  # a JSON body true/false
            if typ == "boolean":
                return True
            return self._fail(errors, path, f"type check ('{typ}') failed - got JSON::PP::Boolean")
        if isinstance(value, (dict, list)):
            vt = "HASH" if isinstance(value, dict) else "ARRAY"
            if (typ == "object" and vt == "HASH") or (typ == "array" and vt == "ARRAY"):
                return True
            return self._fail(errors, path, f"type check ('{typ}') failed - got {vt}")
        text = value if isinstance(value, str) else json.dumps(value)
        if typ == "string":
            return True
        if typ == "boolean":
            if text in ("1", "0"):
                return True
            return self._fail(errors, path, f"type check ('boolean') failed - got '{text}'")
        if typ == "integer":
            if is_integer(text):
                return True
            return self._fail(errors, path, f"type check ('integer') failed - got '{text}'")
        if typ == "number":
            if is_number(text):
                return True
            return self._fail(errors, path, f"type check ('number') failed - got '{text}'")
        if typ in ("object", "array"):
            return self._fail(errors, path, f"type check ('{typ}') failed - got '{text}'")
        return self._fail(errors, path, f"type check ('{typ}') failed")

    def _fail(self, errors: dict[str, str], path: str, msg: str) -> bool:
        self.add_error(errors, path, msg)
        return False

    def check_prop(self, value: Any, schema: dict[str, Any], path: str, errors: dict[str, str]) -> None:
        if not isinstance(schema, dict):
            self.add_error(errors, path, "Invalid schema definition.")
            return
        if value is None:
            if schema.get("type") == "null":
                return
            if not schema.get("optional") and not schema.get("alias") and not schema.get("group"):
                self.add_error(errors, path, "property is missing and it is not optional")
            return
        if not self.check_type(path, schema.get("type"), value, errors):
            return
        if isinstance(value, list):
            items = schema.get("items")
            if isinstance(items, dict):
                for i, item in enumerate(value):
                    self.check_prop(item, items, f"{path}[{i}]", errors)
            return
        if isinstance(value, dict):
            if schema.get("properties") or schema.get("additionalProperties"):
                self.check_object(path, schema.get("properties") or {}, value, schema.get("additionalProperties"), errors)
            return
        text = value if isinstance(value, str) else _fmt_num(value)
        fmt = schema.get("format")
        if fmt:
            try:
                if isinstance(fmt, dict):
                    from .formats import parse_property_string

                    parse_property_string(fmt, text, path, self.check_object)
                else:
                    self.formats.check_named(fmt, text, path, self.check_object)
            except FormatError as exc:
                self.add_error(errors, path, "invalid format - " + exc.text())
                return
        pattern = schema.get("pattern")
        if pattern:
            rx = _pattern_cache.get(pattern)
            if rx is None:
                rx = _pattern_cache[pattern] = _perl_regex(pattern)
            if not rx.match(text):
                self.add_error(errors, path, "value does not match the regex pattern")
                return
        max_len = schema.get("maxLength")
        if max_len is not None and len(text) > int(max_len):
            self.add_error(errors, path, f"value may only be {max_len} characters long")
            return
        min_len = schema.get("minLength")
        if min_len is not None and len(text) < int(min_len):
            self.add_error(errors, path, f"value must be at least {min_len} characters long")
            return
        if is_number(text):
            num = float(text)
            maximum = schema.get("maximum")
            if maximum is not None and num > float(maximum):
                self.add_error(errors, path, f"value must have a maximum value of {_fmt_num(maximum)}")
                return
            minimum = schema.get("minimum")
            if minimum is not None and num < float(minimum):
                self.add_error(errors, path, f"value must have a minimum value of {_fmt_num(minimum)}")
                return
        enum = schema.get("enum")
        if enum is not None and text not in [str(e) for e in enum]:
            self.add_error(
                errors, path, f"value '{text}' does not have a value in the enumeration '{', '.join(map(str, enum))}'"
            )

    def check_object(
        self, path: str, props: dict[str, Any], value: dict[str, Any], additional: Any, errors: dict[str, str]
    ) -> None:
        for key, schema in props.items():
            if key.endswith("[n]"):
                continue  # expanded keys are all optional; checked below by name
            self.check_prop(value.get(key), schema, f"{path}.{key}" if path else key, errors)
        for key in value:
            newpath = f"{path}.{key}" if path else key
            schema = props.get(key)
            if schema is None:
                indexed = self.lookup(props, key)
                if indexed is not None:
                    self.check_prop(value[key], indexed, newpath, errors)
                    schema = indexed
            if schema is not None:
                requires = schema.get("requires")
                if isinstance(requires, str) and value.get(requires) is None:
                    self.add_error(
                        errors, f"{path}.{requires}" if path else requires, f"missing property - '{newpath}' requires this property"
                    )
                continue
            if additional is not None and not additional:
                self.add_error(errors, newpath, "property is not defined in schema and the schema does not allow additional properties")
                continue
            if isinstance(additional, dict):
                self.check_prop(value[key], additional, newpath, errors)


@dataclass
class Endpoint:
    method: str
    path: str
    name: str | None
    allowtoken: bool
    protected: bool
    permissions: dict[str, Any] | None
    parameters: dict[str, Any]
    returns: dict[str, Any] | None
    regex: re.Pattern[str] = field(repr=False, default=None)  # type: ignore[assignment]
    uri_params: tuple[str, ...] = ()

    @property
    def props(self) -> dict[str, Any]:
        return self.parameters.get("properties") or {}

    def prop(self, key: str) -> dict[str, Any] | None:
        return Validator.lookup(self.props, key)


class Schema:
    """The fixture: endpoints by (method, path template), validation, coercion."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.source = data.get("_source", {})
        self.formats = FormatRegistry(data.get("named_formats"))
        self.validator = Validator(self.formats)
        self.all_endpoints: set[str] = set(data.get("all_endpoints", []))
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        for entry in data["endpoints"].values():
            names = tuple(re.findall(r"\{(\w+)\}", entry["path"]))
            rx = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(entry["path"])) + "$")
            ep = Endpoint(
                method=entry["method"],
                path=entry["path"],
                name=entry.get("name"),
                allowtoken=bool(entry.get("allowtoken")),
                protected=bool(entry.get("protected")),
                permissions=entry.get("permissions"),
                parameters=entry.get("parameters") or {"properties": {}},
                returns=entry.get("returns"),
                regex=rx,
                uri_params=names,
            )
            self.endpoints[(ep.method, ep.path)] = ep

    def endpoint(self, method: str, template: str) -> Endpoint:
        return self.endpoints[(method, template)]

    def in_pve(self, method: str, rel_path: str) -> bool:
        """Whether PVE 9.1 has this method/path at all (for 501 logging)."""
        for entry in self.all_endpoints:
            m, tmpl = entry.split(" ", 1)
            if m != method:
                continue
            rx = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(tmpl)) + "$"
            if re.match(rx, rel_path):
                return True
        return False

    def validate(self, ep: Endpoint, params: dict[str, Any]) -> None:
        """PVE::JSONSchema::validate(\\%param, $schema) -> 400 on any error."""
        errors: dict[str, str] = {}
        schema = ep.parameters
        self.validator.check_object("", schema.get("properties") or {}, params, schema.get("additionalProperties"), errors)
        if errors:
            raise param_error(errors)

    def coerce(self, ep: Endpoint, params: dict[str, Any]) -> dict[str, Any]:
        """Validated strings -> Python values (int / float / bool) for handlers."""
        out: dict[str, Any] = {}
        for key, value in params.items():
            schema = ep.prop(key) or {}
            typ = schema.get("type")
            if isinstance(value, str):
                if typ == "integer":
                    value = int(value)
                elif typ == "number":
                    value = float(value)
                elif typ == "boolean":
                    value = value == "1"
            out[key] = value
        return out

    def parse_format(self, fmt: Any, value: str, path: str = "") -> dict[str, Any]:
        """Parse a property string with a hash format (or the name of one)."""
        from .formats import parse_property_string

        if isinstance(fmt, str):
            fmt = self.formats.hash_formats[fmt]
        return parse_property_string(fmt, value, path, self.validator.check_object)


@lru_cache(maxsize=None)
def load_schema(path: str = str(FIXTURE)) -> Schema:
    return Schema(json.loads(Path(path).read_text(encoding="utf-8")))
