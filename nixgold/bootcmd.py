"""Typed boot_command steps for the proxmox-iso builder: compile, lint, and replay as QEMU keys.

What Packer does with ``boot_command`` (packer-plugin-proxmox v1.2.4 on packer-plugin-sdk v0.6.10):

1. The list is joined with ``""`` (``BootConfig.FlatBootCommand``): no separators are added.
2. At ``packer validate``/Prepare the *raw* string is parsed with the PEG grammar
   ``bootcommand/boot_command.pigeon`` (hashicorp/packer-plugin-sdk v0.6.10); a non-positive
   wait fails with "Expecting a positive wait value" (``<wait0s>``, ``<wait-1s>``). ``<wait0>`` is
   *not* an error: the Integer action is attached to its ``NonZeroDigit Digit*`` alternative only
   (generated ``onInteger3``), so ``'0'`` falls into the Wait action's default of one second.
3. Right before typing, ``interpolate.Render`` evaluates it as a Go ``text/template`` with the data
   ``{HTTPIP string, HTTPPort int}`` only, and **re-renders the output until it stops changing**
   (``template/interpolate/i.go`` ``Render``).
4. The result is parsed again (ordered choice Wait / CharToggle / Special / Literal) and replayed by
   the proxmox driver (``builder/proxmox/common/bootcommand_driver.go``): one HTTPS
   ``PUT .../qemu/{vmid}/sendkey key=<qcode combo>`` per key, then a ``boot_key_interval`` sleep.
   Held keys (``<leftCtrlOn>``, ``<cOn>``) are prefixed to every later key, joined with ``-``
   (``ctrl-c``, ``shift-alt_r-w``); a toggle on its own sends nothing.

This module re-implements 2-4 as pure functions with its own tables (they are checked against
``tests/fixtures/packer-boot-keys.json`` by the tests):

* :func:`compile_steps` turns typed steps into the strings Packer must see. Every literal ``<`` is
  typed as ``<leftShiftOn>,<leftShiftOff>`` (the same ``shift-comma`` key) so text never parses as a
  tag. A literal ``{`` that would start ``{{`` (the next character typed is ``{`` or a template
  variable, or it is the last character) is typed as ``<leftShiftOn>[<leftShiftOff>`` (the same
  ``shift-bracket_left`` key). Go-template escapes such as ``{{"{{"}}`` do **not** work here: the
  first pass yields ``{{``, the second pass fails with "unclosed action" (step 3 above). The only
  template actions emitted are ``{{ .HTTPIP }}`` and ``{{ .HTTPPort }}``. Only printable ASCII is
  typed (QEMU qcodes are US-layout key positions; the guest keymap must be ``us``).
* :func:`parse_to_qemu_keys` is the inverse: exactly the key combos the driver would send.
  :func:`decode_qemu_keys` turns the keys of typed text back into text.
* :func:`lint` checks hand-written ``boot_command`` lists (rule ids in :data:`RULES`).
* :func:`stats` counts API calls and estimates typing time (see :data:`API_LATENCY_S`).

HCL escaping is **not** done here. The strings returned are the values Packer must see *after*
HCL parsing; the HCL emitter (``nixgold.hcl.hcl_string``) escapes every string uniformly
(``\\``, ``"``, ``${`` -> ``$${``, ``%{`` -> ``%%{``). ``{{ .HTTPIP }}`` passes through HCL2 untouched.
So an unescaped ``${``/``%{`` is not a lint concern at this level: in a hand-written ``.pkr.hcl``
it is an HCL interpolation/directive, in our pipeline it is escaped by the emitter.

Proxmox driver quirks encoded in the tables: ``<pageUp>``/``<pageDown>`` send ``pageup``/``pagedown``
(the driver map has camelCase keys but the parser lowercases names) and ``<leftCommand>``,
``<rightCommand>``, ``<leftOption>``, ``<rightOption>`` are unmapped: none is a QEMU QKeyCode, so
PVE rejects them. ``<rightShift>`` sends ``shift`` (left), not ``shift_r``.
"""

from __future__ import annotations

import difflib
import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Union

from nixgold.errors import BootCommandError

__all__ = [
    "API_LATENCY_S",
    "DEFAULT_KEY_INTERVAL_S",
    "RULES",
    "SPECIAL_KEYS",
    "Chord",
    "Finding",
    "HttpIp",
    "HttpPort",
    "KeyEvent",
    "PressKey",
    "Rule",
    "SpecialKey",
    "Stats",
    "Step",
    "TypeText",
    "Wait",
    "WaitEvent",
    "compile_steps",
    "decode_qemu_keys",
    "lint",
    "parse_to_qemu_keys",
    "stats",
]

# --------------------------------------------------------------------------------------------
# Tables (sources: boot_command.pigeon @ packer-plugin-sdk v0.6.10; bootcommand_driver.go @
# packer-plugin-proxmox v1.2.4; QKeyCode in qemu qapi/ui.json)
# --------------------------------------------------------------------------------------------

#: Seconds the proxmox plugin sleeps after each sendkey call unless ``boot_key_interval`` is set.
DEFAULT_KEY_INTERVAL_S = 0.005

#: Assumed wall time of one ``PUT .../sendkey`` round trip (HTTPS to pveproxy, proxied to
#: pvedaemon, QMP ``send-key``), on a LAN with a kept-alive connection. An assumption, not a
#: measurement: the call is synchronous, so this adds to ``boot_key_interval`` for every key.
API_LATENCY_S = 0.015

#: The proxmox driver's special-key map, verbatim (note the camelCase ``pageUp``/``pageDown`` keys,
#: which never match because the parser lowercases names).
PROXMOX_SPECIAL_MAP: dict[str, str] = {
    "spacebar": "spc",
    "bs": "backspace",
    "del": "delete",
    "return": "ret",
    "enter": "ret",
    "pageUp": "pgup",
    "pageDown": "pgdn",
    "leftshift": "shift",
    "rightshift": "shift",
    "leftalt": "alt",
    "rightalt": "alt_r",
    "leftctrl": "ctrl",
    "rightctrl": "ctrl_r",
    "leftsuper": "meta_l",
    "rightsuper": "meta_r",
}

#: The proxmox driver's rune map (US layout), verbatim. Other runes: lowercase letters and digits
#: are sent as themselves, ``unicode.IsUpper`` runes as ``shift-<lower>``, anything else raw.
PROXMOX_RUNE_MAP: dict[str, str] = {
    " ": "spc",
    ".": "dot",
    ",": "comma",
    ";": "semicolon",
    "*": "asterisk",
    "-": "minus",
    "[": "bracket_left",
    "]": "bracket_right",
    "=": "equal",
    "'": "apostrophe",
    "`": "grave_accent",
    "/": "slash",
    "\\": "backslash",
    "!": "shift-1",
    "@": "shift-2",
    "#": "shift-3",
    "$": "shift-4",
    "%": "shift-5",
    "^": "shift-6",
    "&": "shift-7",
    "(": "shift-9",
    ")": "shift-0",
    "{": "shift-bracket_left",
    "}": "shift-bracket_right",
    '"': "shift-apostrophe",
    "+": "shift-equal",
    "_": "shift-minus",
    ":": "shift-semicolon",
    "<": "shift-comma",
    ">": "shift-dot",
    "~": "shift-grave_accent",
    "?": "shift-slash",
    "|": "shift-backslash",
}

#: The QEMU ``QKeyCode`` names this module can produce or needs to recognise (a subset of the enum).
QEMU_QCODES: frozenset[str] = frozenset(
    [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [str(d) for d in range(10)]
    + [f"f{n}" for n in range(1, 13)]
    + """shift shift_r alt alt_r ctrl ctrl_r menu esc minus equal backspace tab bracket_left
    bracket_right ret semicolon apostrophe grave_accent backslash comma dot slash asterisk spc
    caps_lock num_lock scroll_lock home pgup pgdn end left up down right insert delete meta_l
    meta_r less print sysrq""".split()
)


@dataclass(frozen=True)
class SpecialKey:
    """One ``<name>`` of the grammar's SpecialKey rule and what the proxmox driver does with it."""

    name: str  # spelling in the grammar, e.g. "pageUp"; matched case-insensitively
    description: str
    modifier: bool

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    @property
    def qemu_key(self) -> str:
        """What the driver sends: the map is looked up with the lowercased name."""
        lowered = self.name.lower()
        return PROXMOX_SPECIAL_MAP.get(lowered, lowered)

    @property
    def proxmox_supported(self) -> bool:
        return self.qemu_key in QEMU_QCODES


_MODIFIER_NAMES = {
    "leftAlt", "rightAlt", "leftCtrl", "rightCtrl", "leftShift", "rightShift", "leftSuper",
    "rightSuper", "leftCommand", "rightCommand", "leftOption", "rightOption",
}  # fmt: skip

#: Special keys in the grammar's ordered-choice order (it matters: "f10" before "f1", "leftAlt"
#: before "left"; no earlier name is a prefix of a later one, so the first match is the only one).
SPECIAL_KEYS: tuple[SpecialKey, ...] = tuple(
    SpecialKey(name, description, name in _MODIFIER_NAMES)
    for name, description in [
        ("bs", "Backspace"), ("del", "Delete"), ("enter", "Enter/Return"), ("esc", "Escape"),
        ("f10", "Function key F10"), ("f11", "Function key F11"), ("f12", "Function key F12"),
        ("f1", "Function key F1"), ("f2", "Function key F2"), ("f3", "Function key F3"),
        ("f4", "Function key F4"), ("f5", "Function key F5"), ("f6", "Function key F6"),
        ("f7", "Function key F7"), ("f8", "Function key F8"), ("f9", "Function key F9"),
        ("return", "Enter/Return"), ("tab", "Tab"), ("up", "Arrow up"), ("down", "Arrow down"),
        ("spacebar", "Space"), ("insert", "Insert"), ("home", "Home"), ("end", "End"),
        ("pageUp", "Page Up"), ("pageDown", "Page Down"), ("leftAlt", "Alt"),
        ("leftCtrl", "Ctrl"), ("leftShift", "Shift"), ("rightAlt", "Alt (right)"),
        ("rightCtrl", "Ctrl (right)"), ("rightShift", "Shift (right)"),
        ("leftSuper", "Super/Windows (left)"), ("rightSuper", "Super/Windows (right)"),
        ("leftCommand", "macOS Command (left)"), ("rightCommand", "macOS Command (right)"),
        ("leftOption", "macOS Option (left)"), ("rightOption", "macOS Option (right)"),
        ("left", "Arrow left"), ("right", "Arrow right"), ("menu", "Menu key"),
    ]
)  # fmt: skip
_SPECIAL_BY_LOWER = {k.name.lower(): k for k in SPECIAL_KEYS}

#: Regular expressions equivalent to the grammar rules (documentation; the parser below is a
#: hand-written PEG because pigeon's ordered choice and action errors are not regex semantics).
SPECIAL_TAG_RE = "(?i)^<(" + "|".join(k.name for k in SPECIAL_KEYS) + ")(on|off)?>$"
CHAR_TOGGLE_RE = "(?i)^<.(on|off)>$"
WAIT_TAG_RE = r"^<wait((0|[1-9][0-9]*)|((-?(0|[1-9][0-9]*)(\.[0-9]+)?)(ns|us|µs|ms|s|m|h))+)?>$"

_TIME_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")  # pigeon TimeUnit, in choice order
_GO_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
             "m": 60 * 10**9, "h": 3600 * 10**9}  # fmt: skip
_INT64_MAX = 2**63 - 1

HTTPIP_ACTION = "{{ .HTTPIP }}"
HTTPPORT_ACTION = "{{ .HTTPPort }}"
_ESCAPED_LT = "<leftShiftOn>,<leftShiftOff>"
_ESCAPED_LBRACE = "<leftShiftOn>[<leftShiftOff>"
_MAX_RENDER_PASSES = 32


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeText:
    """Type printable ASCII text literally (``<`` and ``{{`` are escaped for you)."""

    text: str


@dataclass(frozen=True)
class PressKey:
    """Press one special key, e.g. ``"enter"``, ``"esc"``, ``"f10"`` (case-insensitive)."""

    name: str


@dataclass(frozen=True)
class Wait:
    """Pause; ``seconds`` is a positive number of seconds or a :class:`datetime.timedelta`."""

    seconds: float | timedelta


@dataclass(frozen=True)
class HttpIp:
    """Type the HTTP server address Packer chose (``{{ .HTTPIP }}``)."""


@dataclass(frozen=True)
class HttpPort:
    """Type the HTTP server port Packer chose (``{{ .HTTPPort }}``)."""


@dataclass(frozen=True)
class Chord:
    """Hold ``modifiers`` (e.g. ``("leftCtrl",)``) while pressing ``key`` (one character or a
    special key name), then release them: ``<leftCtrlOn>c<leftCtrlOff>`` sends ``ctrl-c``."""

    modifiers: tuple[str, ...]
    key: str

    def __post_init__(self) -> None:
        mods = (self.modifiers,) if isinstance(self.modifiers, str) else tuple(self.modifiers)
        object.__setattr__(self, "modifiers", mods)


Step = Union[TypeText, PressKey, Wait, HttpIp, HttpPort, Chord]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Stats:
    """Cost of typing a boot_command on proxmox: one HTTPS PUT per keystroke.

    ``typing_seconds = keystrokes * (key_interval_s + api_latency_s)``; ``{{ .HTTPIP }}`` and
    ``{{ .HTTPPort }}`` are unknown until Packer runs, so they are counted as
    ``assumed_http_ip``/``assumed_http_port`` (defaults are the longest possible values).
    """

    keystrokes: int
    wait_seconds: float
    typing_seconds: float
    total_seconds: float
    key_interval_s: float
    api_latency_s: float
    assumed_http_ip: str
    assumed_http_port: int

    def __str__(self) -> str:
        return (
            f"{self.keystrokes} keystrokes (one sendkey API call each) x "
            f"({self.key_interval_s * 1000:g} ms interval + {self.api_latency_s * 1000:g} ms assumed API latency)"
            f" = {self.typing_seconds:.2f} s typing + {self.wait_seconds:g} s waits = {self.total_seconds:.2f} s;"
            f" HTTPIP/HTTPPort counted as {self.assumed_http_ip}:{self.assumed_http_port}"
        )


# --------------------------------------------------------------------------------------------
# Compiler
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    text: str
    kind: str  # "char" (one literal character), "tag" or "action"
    ends_line: bool = False
    is_wait: bool = False


def _step_error(index: int, step: object, message: str) -> BootCommandError:
    return BootCommandError(f"boot_command step {index} ({type(step).__name__}): {message}")


def _check_printable(index: int, step: object, text: str) -> None:
    for offset, ch in enumerate(text):
        if " " <= ch <= "~":
            continue
        hint = {
            "\n": '; use PressKey("enter") for a newline',
            "\r": '; use PressKey("enter") for a newline',
            "\t": '; use PressKey("tab") for a tab',
        }.get(ch, "; the guest keymap is US and QEMU only knows key positions")
        raise _step_error(
            index,
            step,
            f"character {ch!r} (U+{ord(ch):04X}) at offset {offset} cannot be typed: "
            f"expected printable ASCII 0x20-0x7e{hint}",
        )


def _special(index: int, step: object, name: object, what: str = "key") -> SpecialKey:
    key = _SPECIAL_BY_LOWER.get(name.lower()) if isinstance(name, str) else None
    if key is None:
        names = ", ".join(k.name for k in SPECIAL_KEYS if k.proxmox_supported)
        raise _step_error(index, step, f"{name!r} is not a special {what}; expected one of: {names}")
    if not key.proxmox_supported:
        raise _step_error(
            index,
            step,
            f"{key.token} is not supported by the proxmox driver: it would send {key.qemu_key!r}, "
            "which is not a QEMU key code (PVE answers 'invalid parameter')",
        )
    return key


def _wait_ns(index: int, step: Wait) -> int:
    value = step.seconds
    if isinstance(value, timedelta):
        ns = (value.days * 86400 + value.seconds) * 10**9 + value.microseconds * 1000
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        ns = round(value * 1e9) if isinstance(value, float) else value * 10**9
    else:
        raise _step_error(index, step, f"seconds = {value!r}: expected a positive number or timedelta")
    if ns <= 0:
        raise _step_error(
            index, step, f"seconds = {value!r}: expected a positive wait (Packer: 'Expecting a positive wait value')"
        )
    if ns > _INT64_MAX:
        raise _step_error(index, step, f"seconds = {value!r}: longer than Go's time.Duration (~292 years)")
    return ns


def _format_wait(ns: int) -> str:
    for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns % size == 0:
            return f"<wait{ns // size}{unit}>"
    return f"<wait{ns}ns>"


def _chord_tokens(index: int, step: Chord) -> list[_Tok]:
    if not step.modifiers:
        raise _step_error(index, step, "modifiers is empty: expected at least one modifier key, e.g. ('leftCtrl',)")
    mods: list[SpecialKey] = []
    for name in step.modifiers:
        mod = _special(index, step, name, "modifier key")
        if not mod.modifier:
            raise _step_error(index, step, f"{mod.token} is not a modifier; expected one of: "
                              + ", ".join(k.name for k in SPECIAL_KEYS if k.modifier and k.proxmox_supported))
        if any(m.qemu_key == mod.qemu_key for m in mods):
            raise _step_error(index, step, f"{mod.token} repeats a modifier that sends {mod.qemu_key!r}")
        mods.append(mod)
    if not isinstance(step.key, str) or not step.key:
        raise _step_error(index, step, f"key = {step.key!r}: expected one character or a special key name")
    toks = [_Tok(f"<{m.name}On>", "tag") for m in mods]
    if len(step.key) == 1:
        _check_printable(index, step, step.key)
        char = step.key
        combo = _char_qcode(char)
        if combo.startswith("shift-") and any(m.qemu_key == "shift" for m in mods):
            char = _UNSHIFTED[combo[len("shift-"):]]  # shift is already held: type the base key
        toks.append(_Tok(char, "char"))
    else:
        toks.append(_Tok(_special(index, step, step.key).token, "tag"))
    toks += [_Tok(f"<{m.name}Off>", "tag") for m in reversed(mods)]
    return toks


def compile_steps(steps: Iterable[Step]) -> list[str]:
    """Compile typed steps to Packer's ``boot_command`` list (one element per line: each
    ``PressKey("enter")``, plus the waits right after it, ends an element).

    Raises :class:`BootCommandError` naming the step index, the value and what was expected.
    """
    toks: list[_Tok] = []
    for index, step in enumerate(steps):
        if isinstance(step, TypeText):
            if not isinstance(step.text, str):
                raise _step_error(index, step, f"text = {step.text!r}: expected a string")
            _check_printable(index, step, step.text)
            toks += [_Tok(ch, "char") for ch in step.text]
        elif isinstance(step, PressKey):
            key = _special(index, step, step.name)
            toks.append(_Tok(key.token, "tag", ends_line=key.qemu_key == "ret"))
        elif isinstance(step, Wait):
            toks.append(_Tok(_format_wait(_wait_ns(index, step)), "tag", is_wait=True))
        elif isinstance(step, HttpIp):
            toks.append(_Tok(HTTPIP_ACTION, "action"))
        elif isinstance(step, HttpPort):
            toks.append(_Tok(HTTPPORT_ACTION, "action"))
        elif isinstance(step, Chord):
            toks += _chord_tokens(index, step)
        else:
            raise BootCommandError(
                f"boot_command step {index}: expected TypeText, PressKey, Wait, HttpIp, HttpPort or Chord, "
                f"got {step!r}"
            )

    elements: list[str] = []
    current: list[str] = []
    line_done = False
    for i, tok in enumerate(toks):
        text = tok.text
        if tok.kind == "char" and text == "<":
            text = _ESCAPED_LT
        elif tok.kind == "char" and text == "{":
            # `{{` would open a Go template action; Packer re-renders until the text is stable,
            # so a template escape cannot survive. Type the same key through a shift toggle.
            if i + 1 == len(toks) or toks[i + 1].text.startswith("{"):
                text = _ESCAPED_LBRACE
        if line_done and not tok.is_wait:
            elements.append("".join(current))
            current, line_done = [], False
        current.append(text)
        line_done = line_done or tok.ends_line
    if current:
        elements.append("".join(current))
    return elements


# --------------------------------------------------------------------------------------------
# Go text/template subset (interpolate.Render) with source positions
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# PEG parser (boot_command.pigeon) and the proxmox driver
# --------------------------------------------------------------------------------------------

_PRESS, _ON, _OFF = "Press", "On", "Off"


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
                    if f > _INT64_MAX // 10 or y > 1 << 63:
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
        unit = _GO_UNITS.get(s[:i])
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
    if d > _INT64_MAX:
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
    if value > _INT64_MAX:
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
        unit = next((u for u in _TIME_UNITS if text.startswith(u, m)), None)
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
                if seconds * 10**9 > _INT64_MAX:
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


def _char_qcode(ch: str) -> str:
    if ch in PROXMOX_RUNE_MAP:
        return PROXMOX_RUNE_MAP[ch]
    return f"shift-{ch.lower()}" if ch.isupper() else ch


_TEXT_BY_QCODE = {_char_qcode(chr(c)): chr(c) for c in range(0x20, 0x7F)}
_TEXT_BY_QCODE.update({"ret": "\n", "tab": "\t"})
_UNSHIFTED = {q: ch for q, ch in _TEXT_BY_QCODE.items() if "-" not in q}


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
            driver.send(key if isinstance(expr, _SpecialExpr) else _char_qcode(key))
        else:
            changed = (driver.add if expr.action == _ON else driver.remove)(buffer, key)
            if on_toggle is not None:
                on_toggle(expr, key, changed, driver.sent)
    return driver.events


# --------------------------------------------------------------------------------------------
# Public functions over raw boot_command lists
# --------------------------------------------------------------------------------------------


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
            key = _SPECIAL_BY_LOWER[expr.name]
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


def stats(
    boot_command: Sequence[str],
    key_interval_s: float,
    assumed_http_ip: str = "255.255.255.255",
    assumed_http_port: int = 65535,
) -> Stats:
    """Keystrokes and estimated typing time: keys x (interval + :data:`API_LATENCY_S`) + waits."""
    events = parse_to_qemu_keys(boot_command, assumed_http_ip, assumed_http_port)
    keys = sum(isinstance(e, KeyEvent) for e in events)
    waits = sum(e.nanoseconds for e in events if isinstance(e, WaitEvent)) / 1e9
    typing = keys * (key_interval_s + API_LATENCY_S)
    return Stats(keys, waits, typing, typing + waits, key_interval_s, API_LATENCY_S, assumed_http_ip, assumed_http_port)


def decode_qemu_keys(keys: Iterable[KeyEvent | WaitEvent | str]) -> str:
    """Text typed by a key sequence: printable ASCII, ``ret`` -> ``\\n``, ``tab`` -> ``\\t``; waits
    are skipped. Raises :class:`BootCommandError` for a key that does not type text (``ctrl-c``)."""
    out = []
    for index, event in enumerate(keys):
        if isinstance(event, WaitEvent):
            continue
        key = event.key if isinstance(event, KeyEvent) else event
        if key not in _TEXT_BY_QCODE:
            raise BootCommandError(f"key event {index} = {key!r}: expected a key that types text")
        out.append(_TEXT_BY_QCODE[key])
    return "".join(out)
