"""HCL text from Python data.

String literals escaped in one place, python-hcl2 emission, and ``packer fmt`` layout in pure
Python.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from nixgold.errors import RenderError

_IS_BLOCK = "__is_block__"

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

_HCL_KEYWORDS = frozenset({"for", "in", "if", "true", "false", "null"})

# --- HCL string literals -----------------------------------------------------------------
def hcl_string(value: str) -> str:
    """``value`` as one complete, quoted HCL string literal (the only place data is escaped).

    Escapes ``\\``, ``"``, newline, CR, tab (and other control characters as ``\\uXXXX``);
    ``${`` becomes ``$${`` and ``%{`` becomes ``%%{`` so HCL takes them literally. Two
    spellings work around python-hcl2 (the value in HCL is the same): ``\\u0024{`` /
    ``\\u0025{`` when no ``}`` follows (its lexer needs one after ``$${``), and ``\\u0022``
    for a ``"`` right before ``$${`` (its ``dumps`` would drop the quote).
    """
    if not isinstance(value, str):
        raise TypeError(f"hcl_string takes a str, got {type(value).__name__}")
    out = ['"']
    n = len(value)
    i = 0
    while i < n:
        c = value[i]
        if c in "$%" and i + 1 < n and value[i + 1] == "{":
            if "}" in value[i + 2:]:
                if c == "$" and out[-1] == '\\"':
                    # python-hcl2's dumps drops the quote of a \" right before $${ (it strips
                    # '"' from the end of every literal piece); \u0022 is the same character
                    out[-1] = "\\u0022"
                out.append(c + c + "{")
            else:
                out.append(f"\\u{ord(c):04x}{{")
            i += 2
            continue
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError(f"lone surrogate U+{ord(c):04X} at index {i} cannot be written as UTF-8")
        elif unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
        i += 1
    out.append('"')
    return "".join(out)

_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

def hcl_unquote(literal: str) -> str:
    """The value of a quoted HCL string literal without interpolations (inverse of :func:`hcl_string`).

    Accepts every literal HCL itself accepts: ``\\n \\r \\t \\" \\\\ \\uXXXX \\UXXXXXXXX``,
    ``$${`` and ``%%{``. A ``${`` / ``%{`` template sequence raises ValueError: it is an
    expression, not a value.
    """
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError(f"not a quoted HCL string: {literal[:40]!r}")
    body = literal[1:-1]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("dangling backslash at the end of the string")
            e = body[i + 1]
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
                i += 2
                continue
            width = {"u": 4, "U": 8}.get(e)
            digits = body[i + 2:i + 2 + width] if width else ""
            if not width or len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"invalid escape sequence {body[i:i + 2 + (width or 0)]!r} at index {i}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
            continue
        if c in "$%":
            if body.startswith(c + c + "{", i):
                out.append(c + "{")
                i += 3
                continue
            if body.startswith(c + "{", i):
                raise ValueError(f"template sequence {c}{{ at index {i}: an expression, not a literal")
        if c == '"' or c == "\n":
            raise ValueError(f"unescaped {c!r} at index {i}")
        out.append(c)
        i += 1
    return "".join(out)

# --- building blocks for python-hcl2 data ------------------------------------------------------
def expr(code: str) -> str:
    """An HCL expression we write ourselves (a reference or function call)."""
    return "${" + code + "}"

def block(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, _IS_BLOCK: True}

def object_key(key: str) -> str:
    if _IDENT_RE.match(key) and key not in _HCL_KEYWORDS:
        return key
    return hcl_string(key)

def hcl_value(value: Any) -> Any:
    """Plain JSON-like data as python-hcl2 data: every string escaped with :func:`hcl_string`."""
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"cannot write the non-finite number {value!r} in HCL")
        return value
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, (list, tuple)):
        return [hcl_value(v) for v in value]
    if isinstance(value, dict):
        return {object_key(str(k)): hcl_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    raise RenderError(f"cannot write {type(value).__name__} value {value!r} in HCL")

# --- formatting: what `packer fmt` (hclwrite) would do to python-hcl2's output ------------------
def format_hcl(text: str, *, header: list[str] | tuple[str, ...] = (),
               comments: dict[str, list[str]] | None = None) -> str:
    """Normalize python-hcl2 output to ``packer fmt`` (hclwrite) style, in pure Python.

    * trailing whitespace goes, blank lines collapse to one (none after ``{``, before ``}``
      or at the ends);
    * ``=`` of consecutive one-line attributes line up one column after the longest name,
      as hclwrite does: a blank line, a comment, or a line that opens a multi-line value
      (``x = [``) ends the run, and such an opening line keeps a single space;
    * ``# comment`` lines go at the top (``header``) and before top-level lines starting
      with a key of ``comments``.
    """
    lines: list[str] = [f"# {h}".rstrip() for h in header]
    if header:
        lines.append("")
    for raw in text.split("\n"):
        line = raw.rstrip()
        for prefix, block_comments in (comments or {}).items():
            if line.startswith(prefix):
                if lines and lines[-1]:
                    lines.append("")
                lines.extend(f"# {c}".rstrip() for c in block_comments)
        if not line:
            if not lines or not lines[-1] or lines[-1].endswith(("{", "[", "(")):
                continue
        elif line.strip() in ("}", "},", "]", "],", ")") and lines and not lines[-1]:
            lines.pop()
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(_align(lines)) + "\n"

def _align(lines: list[str]) -> list[str]:
    out: list[str] = []
    run: list[tuple[str, str]] = []

    def flush() -> None:
        if run:
            width = max(len(lead) for lead, _ in run)
            out.extend(f"{lead}{' ' * (width - len(lead))} = {rest}" for lead, rest in run)
            run.clear()

    for line in lines:
        split = _split_assignment(line)
        if split is None:
            flush()
            out.append(line)
            continue
        lead, rest, balanced = split
        if balanced:
            run.append((lead, rest))
        else:
            flush()
            out.append(f"{lead} = {rest}")
    flush()
    return out

def _split_assignment(line: str) -> tuple[str, str, bool] | None:
    """(name part, value part, value closes on this line) for ``name = value`` lines, else None.

    Scans HCL tokens just enough to skip ``=`` and brackets inside quoted strings (with
    their escapes and ``${ }`` interpolations). Strings never span lines in our output.
    """
    stripped = line.lstrip()
    if not stripped or stripped.startswith(("#", "//")):
        return None
    stack: list[str] = ["code"]  # "code" | "string" | "interp" (${ }) | "brace" ({ inside ${ })
    depth = 0  # bracket balance after the '=' (top-level code only)
    eq = -1
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        mode = stack[-1]
        if mode == "string":
            if c == "\\":
                i += 2
                continue
            if c == '"':
                stack.pop()
            elif c in "$%" and line.startswith(c + c + "{", i):
                i += 3
                continue
            elif c in "$%" and line.startswith(c + "{", i):
                stack.append("interp")
                i += 2
                continue
            i += 1
            continue
        top = len(stack) == 1
        if c == '"':
            stack.append("string")
        elif c == "#" and top:
            break  # a trailing comment
        elif c == "{" and not top:
            stack.append("brace")
        elif c == "}" and not top:
            stack.pop()  # closes a brace, or the ${ } interpolation itself
        elif c in "{[(" and top and eq >= 0:
            depth += 1
        elif c in "}])" and top and eq >= 0:
            depth -= 1
        elif c == "=" and top and eq < 0:
            prev = line[i - 1] if i else ""
            nxt = line[i + 1] if i + 1 < n else ""
            if prev not in ("=", "!", "<", ">") and nxt not in ("=", ">") and line[:i].strip():
                eq = i
        i += 1
    if eq < 0:
        return None
    return line[:eq].rstrip(), line[eq + 1:].lstrip(), depth == 0
