"""Packer's boot_command grammar in Python.

Go-template rendering, the pigeon parser, the proxmox driver's key replay, and a linter (tooling and
tests).
"""

from __future__ import annotations

import difflib
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

from nixgold.bootcmd.steps import (
    GO_UNITS,
    HTTPIP_ACTION,
    HTTPPORT_ACTION,
    INT64_MAX,
    PROXMOX_SPECIAL_MAP,
    SPECIAL_BY_LOWER,
    SPECIAL_KEYS,
    TEXT_BY_QCODE,
    TIME_UNITS,
    char_qcode,
)
from nixgold.errors import BootCommandError

_PRESS, _ON, _OFF = "Press", "On", "Off"


_MAX_RENDER_PASSES = 32

@dataclass(frozen=True)
class KeyEvent:
    """One ``sendkey`` API call; ``key`` is the QEMU qcode combo, e.g. ``"shift-a"``."""

    key: str

@dataclass(frozen=True)
class WaitEvent:
    """A ``<wait...>``: the driver sleeps (no API call)."""

    nanoseconds: int

    @property
    def seconds(self) -> float:
        return self.nanoseconds / 1e9

@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # "error": Packer fails or PVE rejects a key; "warning": probably not intended
    summary: str

RULES: dict[str, Rule] = {
    r.id: r
    for r in [
        Rule("wait-not-positive", "error", "<wait0s>, <wait-1s>, <wait1ns-1ns>...: Packer rejects non-positive waits"),
        Rule("wait-invalid", "error", "a wait number Go rejects (out of range, sign inside a duration)"),
        Rule("wait-quirk", "warning", "<wait0> (waits 1 s) or a wait that overflows time.Duration and wraps"),
        Rule("unknown-tag", "warning", "looks like a tag but is not one, so it is typed literally"),
        Rule("non-printable", "error", "a character outside printable ASCII; QEMU rejects it"),
        Rule("unsupported-key", "error", "a special key the proxmox driver sends as an invalid qcode"),
        Rule("template-unsupported", "error", "a template action other than {{ .HTTPIP }} / {{ .HTTPPort }}"),
        Rule("template-syntax", "error", "malformed Go template ({{ without }}, bad string, ...)"),
        Rule("toggle-unbalanced", "warning", "a key left held at the end, or released without being held"),
        Rule("toggle-alone", "warning", "a key held and released with nothing typed in between sends nothing"),
    ]
}  # fmt: skip

@dataclass(frozen=True)
class Finding:
    """One lint result; ``element``/``offset`` index the raw ``boot_command`` list and string."""

    rule: str
    severity: str
    element: int
    offset: int
    message: str

    def __str__(self) -> str:
        return f"boot_command[{self.element}] offset {self.offset}: {self.severity} [{self.rule}] {self.message}"

class _Problem(Exception):
    def __init__(self, rule: str, pos: int, message: str):
        super().__init__(message)
        self.rule, self.pos, self.message = rule, pos, message

_GO_SPACE = " \t\r\n"

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}

def _go_unquote(literal: str, pos: int) -> str:
    """strconv.Unquote for a double-quoted Go string literal."""
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
            continue
        width, base = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}.get(esc, (3, 8) if esc in "01234567" else (0, 0))
        digits = body[i + 2 : i + 2 + width] if esc in "xuU" else body[i + 1 : i + 1 + width]
        valid = "0123456789abcdefABCDEF"[:base] if base == 16 else "01234567"
        if not width or len(digits) != width or any(d not in valid for d in digits):
            raise _Problem("template-syntax", pos, f"invalid escape in Go string literal {literal}")
        value = int(digits, base)
        if esc in "uU":
            if value > 0x10FFFF or 0xD800 <= value < 0xE000:
                raise _Problem("template-syntax", pos, f"invalid escape in Go string literal {literal}")
            out += chr(value).encode("utf-8")
        elif value > 255:
            raise _Problem("template-syntax", pos, f"octal escape out of range in {literal}")
        else:
            out.append(value)
        i += (2 if esc in "xuU" else 1) + width
    return out.decode("utf-8", "replace")

_FIELD_RE = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*")

_DQ_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"')

_RAW_STRING_RE = re.compile(r"`[^`]*`")

def _eval_action(content: str, pos: int, http_ip: str, http_port: int) -> str:
    expr = content.strip(_GO_SPACE)
    if expr == ".HTTPIP":
        return http_ip
    if expr == ".HTTPPort":
        return str(http_port)
    if _DQ_STRING_RE.fullmatch(expr):
        return _go_unquote(expr, pos)
    if _RAW_STRING_RE.fullmatch(expr):
        return expr[1:-1].replace("\r", "")
    if not expr:
        raise _Problem("template-syntax", pos, "empty template action '{{}}' (Go: missing value for command)")
    if _FIELD_RE.fullmatch(expr):
        raise _Problem(
            "template-unsupported",
            pos,
            f"{{{{ {expr} }}}} is not provided by the proxmox builder: its template data has only "
            f".HTTPIP and .HTTPPort (Packer fails with 'Error preparing boot command: ... can't evaluate "
            f"field {expr[1:]}')",
        )
    raise _Problem(
        "template-unsupported",
        pos,
        f"template action {{{{{content}}}}} is not supported: only {HTTPIP_ACTION}, {HTTPPORT_ACTION}, "
        "string literals and comments are",
    )

def _render_once(text: str, pos: list[int], http_ip: str, http_port: int) -> tuple[str, list[int]]:
    out: list[str] = []
    out_pos: list[int] = []
    i, n = 0, len(text)
    while True:
        j = text.find("{{", i)
        if j < 0:
            out.append(text[i:])
            out_pos += pos[i:]
            break
        left_trim = text.startswith("-", j + 2) and j + 3 < n and text[j + 3] in _GO_SPACE
        seg_end = j
        if left_trim:
            while seg_end > i and text[seg_end - 1] in _GO_SPACE:
                seg_end -= 1
        out.append(text[i:seg_end])
        out_pos += pos[i:seg_end]
        k = j + (4 if left_trim else 2)
        right_trim = False
        if text.startswith("/*", k):
            end = text.find("*/", k + 2)
            if end < 0:
                raise _Problem("template-syntax", pos[j], "unclosed template comment '{{/*'")
            m = end + 2
            if m + 1 < n and text[m] in _GO_SPACE and text.startswith("-}}", m + 1):
                m, right_trim = m + 4, True
            elif text.startswith("}}", m):
                m += 2
            else:
                raise _Problem("template-syntax", pos[j], "template comment ends before closing delimiter '}}'")
        else:
            m = k
            while True:
                if m >= n:
                    raise _Problem(
                        "template-syntax",
                        pos[j],
                        "unclosed template action: '{{' without '}}' (Packer: 'Error preparing boot command')",
                    )
                if text[m] in _GO_SPACE and text.startswith("-}}", m + 1):
                    content, m, right_trim = text[k:m], m + 4, True
                    break
                if text.startswith("}}", m):
                    content, m = text[k:m], m + 2
                    break
                quote = text[m]
                if quote in "\"'`":
                    m += 1
                    while m < n and text[m] != quote:
                        if quote != "`" and text[m] == "\n":
                            break
                        m += 2 if quote != "`" and text[m] == "\\" else 1
                    if m >= n or text[m] != quote:
                        message = f"unterminated {quote}-quoted string in template action"
                        raise _Problem("template-syntax", pos[j], message)
                m += 1
            value = _eval_action(content, pos[j], http_ip, http_port)
            out.append(value)
            out_pos += [pos[j]] * len(value)
        i = m
        if right_trim:
            while i < n and text[i] in _GO_SPACE:
                i += 1
    return "".join(out), out_pos

def _render(text: str, pos: list[int], http_ip: str, http_port: int) -> tuple[str, list[int]]:
    """interpolate.Render: render again and again until the output equals the input."""
    for passes in range(_MAX_RENDER_PASSES):
        try:
            rendered, rendered_pos = _render_once(text, pos, http_ip, http_port)
        except _Problem as problem:
            if passes:
                problem.message += (
                    f" (in the output of render pass {passes}: Packer's interpolate.Render renders again until "
                    "the text stops changing, so template escapes like {{\"{{\"}} do not survive)"
                )
            raise
        if rendered == text:
            return rendered, rendered_pos
        text, pos = rendered, rendered_pos
    raise _Problem("template-syntax", pos[0] if pos else 0, "template output never stops changing")

@dataclass(frozen=True)
class _WaitExpr:
    ns: int | None  # None: Go rejected the number (already reported as wait-invalid)
    pos: int
    end: int
    quirk: str | None = None  # accepted by Packer, but not what it looks like

@dataclass(frozen=True)
class _SpecialExpr:
    name: str  # lowercased, as the parser hands it to the driver
    action: str
    pos: int
    end: int

@dataclass(frozen=True)
class _LiteralExpr:
    char: str
    action: str
    pos: int

_Expr = Union[_WaitExpr, _SpecialExpr, _LiteralExpr]

def _go_lower(ch: str) -> str:
    return "i" if ch == "\u0130" else ch.lower()

def _ci_match(text: str, k: int, word: str) -> bool:
    """pigeon "word"i: compare unicode.ToLower(rune) with the lowercase literal."""
    return len(text) - k >= len(word) and all(_go_lower(text[k + x]) == c for x, c in enumerate(word))

def _go_parse_duration(s: str) -> int:
    """time.ParseDuration (Go 1.2x), nanoseconds; ValueError on what Go rejects."""
    orig, d, neg = s, 0, False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {orig!r}")
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise ValueError(f"time: invalid duration {orig!r}")
        i, v = 0, 0
        while i < len(s) and "0" <= s[i] <= "9":
            if v > (1 << 63) // 10:
                raise ValueError(f"time: invalid duration {orig!r}")
            v = v * 10 + int(s[i])
            if v > 1 << 63:
                raise ValueError(f"time: invalid duration {orig!r}")
            i += 1
        pre, s = i > 0, s[i:]
        post, f, scale = False, 0, 1.0
        if s[:1] == ".":
            s, i, overflow = s[1:], 0, False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    y = f * 10 + int(s[i])
                    if f > INT64_MAX // 10 or y > 1 << 63:
                        overflow = True
                    else:
                        f, scale = y, scale * 10
                i += 1
            post, s = i > 0, s[i:]
        if not pre and not post:
            raise ValueError(f"time: invalid duration {orig!r}")
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {orig!r}")
        unit = GO_UNITS.get(s[:i])
        if unit is None:
            raise ValueError(f"time: unknown unit {s[:i]!r} in duration {orig!r}")
        s = s[i:]
        if v > (1 << 63) // unit:
            raise ValueError(f"time: invalid duration {orig!r}")
        v *= unit
        if f > 0:
            v += int(float(f) * (float(unit) / scale))
            if v > 1 << 63:
                raise ValueError(f"time: invalid duration {orig!r}")
        d += v
        if d > 1 << 63:
            raise ValueError(f"time: invalid duration {orig!r}")
    if neg:
        return -d
    if d > INT64_MAX:
        raise ValueError(f"time: invalid duration {orig!r}")
    return d

_ZERO = -1  # the '0' alternative of Integer has no action: its value is []byte, not int64

def _match_integer(text: str, k: int, start: int, errors: list[_Problem]) -> tuple[int, int | None] | None:
    """Integer = '0' / NonZeroDigit Digit* { ParseInt }: the action belongs to the second
    alternative only (generated code: onInteger3); it may record an error."""
    if text[k : k + 1] == "0":
        return k + 1, _ZERO
    if not ("1" <= text[k : k + 1] <= "9"):
        return None
    end = k + 1
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    value = int(text[k:end])
    if value > INT64_MAX:
        errors.append(_Problem("wait-invalid", start, f"wait number {text[k:end]} is out of range for int64"))
        return end, None
    return end, value

def _match_duration(text: str, k: int, start: int, errors: list[_Problem]) -> tuple[int, int | None] | None:
    """Duration = ( Number TimeUnit )+, Number = '-'? Integer ( '.' Digit+ )?"""
    end = k
    while True:
        m = end + (text[end : end + 1] == "-")
        integer = _match_integer(text, m, start, errors)
        if integer is None:
            break
        m = integer[0]
        if text[m : m + 1] == "." and "0" <= text[m + 1 : m + 2] <= "9":
            m += 2
            while m < len(text) and "0" <= text[m] <= "9":
                m += 1
        unit = next((u for u in TIME_UNITS if text.startswith(u, m)), None)
        if unit is None:
            break
        end = m + len(unit)
    if end == k:
        return None
    try:
        return end, _go_parse_duration(text[k:end])
    except ValueError as exc:
        errors.append(_Problem("wait-invalid", start, f"wait duration {text[k:end]!r} is rejected by Go: {exc}"))
        return end, None

def _match_wait(text: str, i: int, errors: list[_Problem]) -> tuple[_WaitExpr, int] | None:
    """Wait = "<" "wait" ( Duration / Integer )? ">"   (``wait`` is case-sensitive)."""
    if not text.startswith("wait", i + 1):
        return None
    k = i + 5
    ns: int | None = 10**9  # no number: the action's default case, one second
    quirk = None
    duration = _match_duration(text, k, i, errors)
    if duration is not None:
        k, ns = duration
    else:
        integer = _match_integer(text, k, i, errors)
        if integer is not None:
            k, seconds = integer
            if seconds == _ZERO:
                quirk = "<wait0> waits 1 s, not 0: the grammar's Integer rule gives '0' no value (default applies)"
            elif seconds is None:
                ns = None
            else:
                # time.Duration(t) * time.Second: int64 arithmetic, wraps silently on overflow
                ns = ((seconds * 10**9 + 2**63) % 2**64) - 2**63
                if seconds * 10**9 > INT64_MAX:
                    quirk = f"<wait{seconds}> overflows Go's time.Duration: Packer waits {ns / 1e9:g} s"
    if text[k : k + 1] != ">":
        return None
    return _WaitExpr(ns, i, k + 1, quirk), k + 1

def _match_on_off(text: str, k: int) -> tuple[str, int] | None:
    if _ci_match(text, k, "on"):
        return _ON, k + 2
    if _ci_match(text, k, "off"):
        return _OFF, k + 3
    return None

def _parse(text: str) -> tuple[list[_Expr], list[_Problem]]:
    """Expr <- ( Wait / CharToggle / Special / Literal )+ over ``text`` (positions = indices)."""
    exprs: list[_Expr] = []
    errors: list[_Problem] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "<":
            wait = _match_wait(text, i, errors)
            if wait is not None:
                exprs.append(wait[0])
                i = wait[1]
                continue
            if i + 1 < n:  # CharToggle = "<" . ( On / Off ) ">"
                toggle = _match_on_off(text, i + 2)
                if toggle is not None and text[toggle[1] : toggle[1] + 1] == ">":
                    exprs.append(_LiteralExpr(text[i + 1], toggle[0], i))
                    i = toggle[1] + 1
                    continue
            key = next((k for k in SPECIAL_KEYS if _ci_match(text, i + 1, k.name.lower())), None)
            if key is not None:  # Special = "<" SpecialKey ( On / Off )? ">"
                k = i + 1 + len(key.name)
                action, k = _match_on_off(text, k) or (_PRESS, k)
                if text[k : k + 1] == ">":
                    exprs.append(_SpecialExpr(key.name.lower(), action, i, k + 1))
                    i = k + 1
                    continue
        exprs.append(_LiteralExpr(text[i], _PRESS, i))
        i += 1
    return exprs, errors

@dataclass
class _Driver:
    """proxmoxDriver: special and normal key buffers prefixed to every key sent."""

    events: list[KeyEvent | WaitEvent]
    special: list[str]
    normal: list[str]
    sent: int = 0

    @staticmethod
    def add(buffer: list[str], key: str) -> bool:
        if key in buffer:
            return False
        buffer.append(key)
        return True

    @staticmethod
    def remove(buffer: list[str], key: str) -> bool:
        if key not in buffer:
            return False
        index = buffer.index(key)
        buffer[index] = buffer[-1]  # Go: swap with last, then truncate
        buffer.pop()
        return True

    def send(self, key: str) -> None:
        self.events.append(KeyEvent("-".join([*self.special, *self.normal, key])))
        self.sent += 1

def _replay(exprs: Sequence[_Expr], on_toggle=None) -> list[KeyEvent | WaitEvent]:
    driver = _Driver([], [], [])
    for expr in exprs:
        if isinstance(expr, _WaitExpr):
            driver.events.append(WaitEvent(expr.ns or 0))
            continue
        if isinstance(expr, _SpecialExpr):
            key, buffer = PROXMOX_SPECIAL_MAP.get(expr.name, expr.name), driver.special
        else:
            key, buffer = expr.char, driver.normal
        if expr.action == _PRESS:
            driver.send(key if isinstance(expr, _SpecialExpr) else char_qcode(key))
        else:
            changed = (driver.add if expr.action == _ON else driver.remove)(buffer, key)
            if on_toggle is not None:
                on_toggle(expr, key, changed, driver.sent)
    return driver.events

class _Source:
    """Maps offsets of the joined string back to (element, offset)."""

    def __init__(self, boot_command: Sequence[str]):
        if isinstance(boot_command, (str, bytes)) or not isinstance(boot_command, Sequence):
            raise BootCommandError(f"boot_command must be a list of strings, got {type(boot_command).__name__}")
        self.starts: list[int] = []
        total = 0
        for index, element in enumerate(boot_command):
            if not isinstance(element, str):
                raise BootCommandError(f"boot_command[{index}] = {element!r}: expected a string")
            self.starts.append(total)
            total += len(element)
        self.joined = "".join(boot_command)

    def locate(self, offset: int) -> tuple[int, int]:
        if not self.starts:
            return 0, 0
        index = bisect_right(self.starts, offset) - 1
        return index, offset - self.starts[index]

def _prepare(source: _Source, http_ip: str, http_port: int) -> tuple[str, list[int], list[_Expr], list[_Problem]]:
    """What Packer does before typing: Prepare-time parse of the raw text, render, parse again."""
    raw_exprs, problems = _parse(source.joined)
    problems += _invalid_waits(source.joined, raw_exprs, list(range(len(source.joined))))
    rendered, pos = _render(source.joined, list(range(len(source.joined))), http_ip, http_port)
    exprs, errors = _parse(rendered)
    problems += [_Problem(e.rule, pos[e.pos], e.message) for e in errors]
    problems += _invalid_waits(rendered, exprs, pos)
    return rendered, pos, exprs, problems

def _invalid_waits(text: str, exprs: Sequence[_Expr], pos: list[int]) -> list[_Problem]:
    return [
        _Problem("wait-not-positive", pos[e.pos], f"{text[e.pos:e.end]} waits {e.ns / 1e9:g} s: Packer fails with "
                 "'Expecting a positive wait value'")
        for e in exprs
        if isinstance(e, _WaitExpr) and e.ns is not None and e.ns <= 0
    ]

def _raise(source: _Source, problem: _Problem) -> BootCommandError:
    element, offset = source.locate(problem.pos)
    return BootCommandError(f"boot_command[{element}] offset {offset}: {problem.message}")

def parse_to_qemu_keys(boot_command: Sequence[str], http_ip: str, http_port: int) -> list[KeyEvent | WaitEvent]:
    """The ``sendkey`` calls (and sleeps) the proxmox plugin makes for ``boot_command``.

    Raises :class:`BootCommandError` where Packer fails before typing (template errors, invalid
    waits). Keys PVE would reject (``pageup``, raw non-ASCII) are returned as sent; see :func:`lint`.
    """
    source = _Source(boot_command)
    try:
        _, _, exprs, problems = _prepare(source, http_ip, http_port)
    except _Problem as problem:
        raise _raise(source, problem) from None
    if problems:
        raise _raise(source, min(problems, key=lambda p: p.pos))
    return _replay(exprs)

_TAGLIKE_RE = re.compile(r"[ \t]*[A-Za-z][A-Za-z0-9_.µ \t-]*")

def _tag_hint(content: str) -> str:
    compact = re.sub(r"\s+", "", content)
    for candidate in (compact, compact.lower(), re.sub(r"^wait0+(?=\d)", "wait", compact.lower())):
        tag = f"<{candidate}>"
        exprs, errors = _parse(tag)
        if len(exprs) == 1 and not errors and not isinstance(exprs[0], _LiteralExpr):
            if not isinstance(exprs[0], _WaitExpr) or exprs[0].ns > 0:
                return f"; did you mean {tag}?"
    names = {k.name.lower(): k.name for k in SPECIAL_KEYS if k.proxmox_supported}
    close = difflib.get_close_matches(compact.lower(), list(names), n=1, cutoff=0.7)
    return f"; did you mean <{names[close[0]]}>?" if close else ""

def lint(
    boot_command: Sequence[str],
    *,
    assumed_http_ip: str = "255.255.255.255",
    assumed_http_port: int = 65535,
) -> list[Finding]:
    """Check a raw ``boot_command`` list; findings are sorted by position (see :data:`RULES`)."""
    source = _Source(boot_command)
    problems: list[_Problem] = []
    try:
        rendered, pos, exprs, problems = _prepare(source, assumed_http_ip, assumed_http_port)
    except _Problem as problem:
        problems.append(problem)  # Packer stops here; lint the raw text for everything else
        rendered, pos = source.joined, list(range(len(source.joined)))
        exprs, errors = _parse(rendered)
        problems += errors + _invalid_waits(rendered, exprs, pos)

    for expr in exprs:
        if isinstance(expr, _LiteralExpr):
            if not " " <= expr.char <= "~":
                hint = {"\n": "; use <enter>", "\r": "; use <enter>", "\t": "; use <tab>"}.get(expr.char, "")
                problems.append(_Problem("non-printable", pos[expr.pos], f"character {expr.char!r} "
                                         f"(U+{ord(expr.char):04X}) is sent raw and QEMU rejects it{hint}"))
            elif expr.char == "<" and expr.action == _PRESS:
                close = rendered.find(">", expr.pos + 1, expr.pos + 42)
                content = rendered[expr.pos + 1 : close]
                if close > 0 and "<" not in content and _TAGLIKE_RE.fullmatch(content):
                    problems.append(_Problem(
                        "unknown-tag", pos[expr.pos],
                        f"<{content}> is not a Packer tag and is typed literally ({len(content) + 2} characters)"
                        f"{_tag_hint(content)}; type a literal '<' as <leftShiftOn>,<leftShiftOff>"))
        elif isinstance(expr, _WaitExpr):
            if expr.quirk and expr.ns is not None and expr.ns > 0:
                problems.append(_Problem("wait-quirk", pos[expr.pos], expr.quirk))
        elif isinstance(expr, _SpecialExpr):
            key = SPECIAL_BY_LOWER[expr.name]
            if not key.proxmox_supported:
                problems.append(_Problem(
                    "unsupported-key", pos[expr.pos],
                    f"{rendered[expr.pos:expr.end]} is sent as {key.qemu_key!r}, which is not a QEMU key code: "
                    "PVE answers 'invalid parameter' and the build stops"))

    held: dict[str, tuple[_Expr, int]] = {}

    def label(expr: _Expr) -> str:
        return rendered[expr.pos : rendered.index(">", expr.pos + 2) + 1]

    def on_toggle(expr: _Expr, key: str, changed: bool, sent: int) -> None:
        if expr.action == _ON:
            held.setdefault(key, (expr, sent))
        elif not changed:
            problems.append(_Problem("toggle-unbalanced", pos[expr.pos], f"{label(expr)} releases {key!r}, "
                                     "which is not held"))
        else:
            on_expr, sent_before = held.pop(key, (expr, sent))
            if sent == sent_before:
                problems.append(_Problem(
                    "toggle-alone", pos[on_expr.pos],
                    f"{label(on_expr)} ... {label(expr)} holds {key!r} while nothing is typed: a toggle alone sends "
                    f"nothing (to press the key itself, use it without On/Off)"))

    _replay(exprs, on_toggle)
    for on_expr, _ in held.values():
        problems.append(_Problem("toggle-unbalanced", pos[on_expr.pos], f"{label(on_expr)} is never released: "
                                 "the key is prefixed to every later key"))

    findings: dict[tuple[str, int, str], Finding] = {}
    for problem in problems:
        element, offset = source.locate(problem.pos)
        finding = Finding(problem.rule, RULES[problem.rule].severity, element, offset, problem.message)
        findings.setdefault((problem.rule, problem.pos, problem.message), finding)
    return sorted(findings.values(), key=lambda f: (f.element, f.offset, f.rule))

def decode_qemu_keys(keys: Iterable[KeyEvent | WaitEvent | str]) -> str:
    """Text typed by a key sequence: printable ASCII, ``ret`` -> ``\\n``, ``tab`` -> ``\\t``; waits
    are skipped. Raises :class:`BootCommandError` for a key that does not type text (``ctrl-c``)."""
    out = []
    for index, event in enumerate(keys):
        if isinstance(event, WaitEvent):
            continue
        key = event.key if isinstance(event, KeyEvent) else event
        if key not in TEXT_BY_QCODE:
            raise BootCommandError(f"key event {index} = {key!r}: expected a key that types text")
        out.append(TEXT_BY_QCODE[key])
    return "".join(out)
