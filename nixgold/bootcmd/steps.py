"""Typed boot_command steps compiled into the strings Packer types (and the key tables they use).

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
HCL parsing; the HCL emitter (``nixgold.render.hcl.hcl_string``) escapes every string uniformly
(``\\``, ``"``, ``${`` -> ``$${``, ``%{`` -> ``%%{``). ``{{ .HTTPIP }}`` passes through HCL2 untouched.
So an unescaped ``${``/``%{`` is not a lint concern at this level: in a hand-written ``.pkr.hcl``
it is an HCL interpolation/directive, in our pipeline it is escaped by the emitter.

Proxmox driver quirks encoded in the tables: ``<pageUp>``/``<pageDown>`` send ``pageup``/``pagedown``
(the driver map has camelCase keys but the parser lowercases names) and ``<leftCommand>``,
``<rightCommand>``, ``<leftOption>``, ``<rightOption>`` are unmapped: none is a QEMU QKeyCode, so
PVE rejects them. ``<rightShift>`` sends ``shift`` (left), not ``shift_r``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Union

from nixgold.errors import BootCommandError

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

SPECIAL_BY_LOWER = {k.name.lower(): k for k in SPECIAL_KEYS}

#: Regular expressions equivalent to the grammar rules (documentation; the parser below is a
#: hand-written PEG because pigeon's ordered choice and action errors are not regex semantics).
SPECIAL_TAG_RE = "(?i)^<(" + "|".join(k.name for k in SPECIAL_KEYS) + ")(on|off)?>$"

CHAR_TOGGLE_RE = "(?i)^<.(on|off)>$"

WAIT_TAG_RE = r"^<wait((0|[1-9][0-9]*)|((-?(0|[1-9][0-9]*)(\.[0-9]+)?)(ns|us|µs|ms|s|m|h))+)?>$"

TIME_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")  # pigeon TimeUnit, in choice order

GO_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
             "m": 60 * 10**9, "h": 3600 * 10**9}  # fmt: skip

INT64_MAX = 2**63 - 1

HTTPIP_ACTION = "{{ .HTTPIP }}"

HTTPPORT_ACTION = "{{ .HTTPPort }}"

_ESCAPED_LT = "<leftShiftOn>,<leftShiftOff>"

_ESCAPED_LBRACE = "<leftShiftOn>[<leftShiftOff>"

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
    key = SPECIAL_BY_LOWER.get(name.lower()) if isinstance(name, str) else None
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
    if ns > INT64_MAX:
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
        combo = char_qcode(char)
        if combo.startswith("shift-") and any(m.qemu_key == "shift" for m in mods):
            char = UNSHIFTED[combo[len("shift-"):]]  # shift is already held: type the base key
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


def char_qcode(ch: str) -> str:
    if ch in PROXMOX_RUNE_MAP:
        return PROXMOX_RUNE_MAP[ch]
    return f"shift-{ch.lower()}" if ch.isupper() else ch

TEXT_BY_QCODE = {char_qcode(chr(c)): chr(c) for c in range(0x20, 0x7F)}

TEXT_BY_QCODE.update({"ret": "\n", "tab": "\t"})

UNSHIFTED = {q: ch for q, ch in TEXT_BY_QCODE.items() if "-" not in q}
