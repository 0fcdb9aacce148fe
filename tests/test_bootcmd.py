"""Tests for nixgold.bootcmd: Packer boot_command grammar, proxmox key replay, compiler and lint.

Golden cases live in tests/bootcmd/<case>.json (steps -> boot_command -> qemu keys); the grammar and
driver tables are checked against tests/fixtures/packer-boot-keys.json (packer-plugin-sdk's
boot_command.pigeon and packer-plugin-proxmox's key driver, as named in its `_source`).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import hcl2
import pytest
from hcl2.utils import SerializationOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixgold.bootcmd import grammar as bc_grammar
from nixgold.bootcmd import steps as bc_steps
from nixgold.bootcmd.stats import API_LATENCY_S, DEFAULT_KEY_INTERVAL_S, stats
from nixgold.bootcmd.grammar import RULES, Finding, KeyEvent, WaitEvent, decode_qemu_keys, lint, parse_to_qemu_keys
from nixgold.bootcmd.steps import SPECIAL_KEYS, Chord, HttpIp, HttpPort, PressKey, TypeText, Wait, compile_steps
from nixgold.errors import BootCommandError

HERE = Path(__file__).parent
FIXTURE = json.loads((HERE / "fixtures" / "packer-boot-keys.json").read_text(encoding="utf-8"))
GOLDEN = sorted((HERE / "bootcmd").glob("*.json"))
STEP_TYPES = {cls.__name__: cls for cls in (TypeText, PressKey, Wait, HttpIp, HttpPort, Chord)}
KEYS_BY_NAME = {k.name: k for k in SPECIAL_KEYS}
IP, PORT = "192.168.1.20", 8123

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def keys(boot_command, http_ip=IP, http_port=PORT):
    """parse_to_qemu_keys in the golden-file notation: key strings and {"wait_s": seconds}."""
    return [
        e.key if isinstance(e, KeyEvent) else {"wait_s": e.seconds}
        for e in parse_to_qemu_keys(boot_command, http_ip, http_port)
    ]


def rules(boot_command):
    return [f.rule for f in lint(boot_command)]


# ------------------------------------------------------------------------------------------------
# The library's tables agree with the spec fixture
# ------------------------------------------------------------------------------------------------


def test_special_keys_agree_with_fixture():
    fixture = {k["name"]: k for k in FIXTURE["special_keys"]}
    assert set(fixture) == set(KEYS_BY_NAME)
    for name, spec in fixture.items():
        key = KEYS_BY_NAME[name]
        assert (key.token, f"<{name}On>", f"<{name}Off>") == (spec["token"], spec["on"], spec["off"])
        assert key.description == spec["description"], name
        assert key.modifier is spec["modifier"], name
        assert key.qemu_key == spec["proxmox_qemu_key_sent"], name
        assert key.proxmox_supported is spec["proxmox_supported"], name


def test_grammar_regexes_agree_with_fixture():
    # SPECIAL_TAG_RE is built from SPECIAL_KEYS, so this also checks the ordered-choice order.
    assert bc_steps.SPECIAL_TAG_RE == FIXTURE["special_key_regex"]
    assert bc_steps.WAIT_TAG_RE == FIXTURE["waits"]["regex"]
    assert bc_steps.CHAR_TOGGLE_RE == re.search(r"regex (\S+)$", FIXTURE["toggles"]["character"]).group(1)


def test_rune_map_and_interval_agree_with_fixture():
    assert bc_steps.PROXMOX_RUNE_MAP == FIXTURE["literal_characters_proxmox"]["mapped_punctuation"]
    default_ms = re.search(r"default (\d+)ms", FIXTURE["timing_proxmox"]["boot_key_interval"]).group(1)
    assert DEFAULT_KEY_INTERVAL_S == int(default_ms) / 1000


@pytest.mark.parametrize("spec", FIXTURE["special_keys"], ids=lambda s: s["name"])
def test_special_key_behaviour_matches_fixture(spec):
    sent = spec["proxmox_qemu_key_sent"]
    for token in (spec["token"], spec["token"].upper(), spec["token"].lower()):
        assert keys([token]) == [sent]
    assert ("unsupported-key" in rules([spec["token"]])) is not spec["proxmox_supported"]
    # held keys are prefixed to the next key; a toggle alone sends nothing
    assert keys([f"{spec['on']}a{spec['off']}"]) == [f"{sent}-a"]
    assert keys([spec["on"] + spec["off"]]) == []


def test_literal_characters_match_fixture():
    text = "".join(chr(c) for c in range(0x20, 0x7F))
    mapped = FIXTURE["literal_characters_proxmox"]["mapped_punctuation"]
    expected = [mapped.get(c) or (f"shift-{c.lower()}" if c.isupper() else c) for c in text]
    assert keys(compile_steps([TypeText(text)])) == expected


def test_documented_wait_examples_are_positive_waits():
    seconds = {"<wait>": 1, "<wait5>": 5, "<wait10>": 10, "<wait10m>": 600, "<wait1m20s>": 80}
    assert set(seconds) == set(FIXTURE["waits"]["documented_examples"])
    for tag, expected in seconds.items():
        assert keys([tag]) == [{"wait_s": expected}]
        assert lint([tag]) == []


# ------------------------------------------------------------------------------------------------
# Golden cases: steps -> boot_command -> qemu keys
# ------------------------------------------------------------------------------------------------


def load_steps(raw):
    return [STEP_TYPES[s["type"]](**{k: v for k, v in s.items() if k != "type"}) for s in raw]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden(path):
    case = json.loads(path.read_text(encoding="utf-8"))
    if "steps" in case:
        assert compile_steps(load_steps(case["steps"])) == case["boot_command"]
    assert keys(case["boot_command"], case["http_ip"], case["http_port"]) == case["qemu_keys"]
    assert rules(case["boot_command"]) == case.get("lint_rules", [])


def test_the_products_boot_command_is_the_nixos_golden_case():
    """nixos_iso_boot_sequence.json is what nixgold types for the default config: the steps
    (nixgold.render.boot_command.install_steps), their Packer boot_command and, through
    test_golden, the keys the proxmox driver sends for them."""
    from nixgold.config.model import Config
    from nixgold.render.boot_command import boot_command, install_steps

    case = json.loads((HERE / "bootcmd" / "nixos_iso_boot_sequence.json").read_text(encoding="utf-8"))
    config = Config()
    assert compile_steps(load_steps(case["steps"])) == boot_command(config) == case["boot_command"]
    assert keys(compile_steps(install_steps(config)), case["http_ip"], case["http_port"]) == case["qemu_keys"]


# ------------------------------------------------------------------------------------------------
# Grammar edge cases (boot_command.pigeon + proxmox driver)
# ------------------------------------------------------------------------------------------------

LT = ["shift-comma"]
GT = ["shift-dot"]


@pytest.mark.parametrize(
    ("boot_command", "expected"),
    [
        (["<wait>"], [{"wait_s": 1}]),
        (["<wait5>"], [{"wait_s": 5}]),
        # '0' has no Integer action (generated parser: onInteger3 is on `NonZeroDigit Digit*` only), so
        # <wait0> takes the default of 1 s; `packer validate` (1.6.6, same grammar) accepts it.
        (["<wait0>"], [{"wait_s": 1}]),
        (["<wait18446744074>"], [{"wait_s": 0.290448384}]),  # time.Duration(t) * time.Second wraps
        (["<wait1m30s>"], [{"wait_s": 90}]),
        (["<wait1.5s>"], [{"wait_s": 1.5}]),
        (["<wait500ms>"], [{"wait_s": 0.5}]),
        (["<wait2h45m>"], [{"wait_s": 9900}]),
        (["<wait1µs>"], [{"wait_s": 1e-6}]),
        (["<wait", "5>"], [{"wait_s": 5}]),  # elements are joined with ""
        (["<WAIT5>"], LT + ["shift-w", "shift-a", "shift-i", "shift-t", "5"] + GT),  # wait is case-sensitive
        (["<Wait5>"], LT + ["shift-w", "a", "i", "t", "5"] + GT),
        (["<wait 5>"], LT + ["w", "a", "i", "t", "spc", "5"] + GT),  # no whitespace inside tags
        (["<wait01>"], LT + ["w", "a", "i", "t", "0", "1"] + GT),  # no leading zeros
        (["<wait1.5>"], LT + ["w", "a", "i", "t", "1", "dot", "5"] + GT),  # a fraction needs a unit
        (["<entre>"], LT + ["e", "n", "t", "r", "e"] + GT),
        (["<enter >"], LT + ["e", "n", "t", "e", "r", "spc"] + GT),
        (["<ENTER>", "<Enter>", "<eNtEr>"], ["ret", "ret", "ret"]),  # special names are case-insensitive
        (["<return>", "<spacebar>", "<bs>", "<del>"], ["ret", "spc", "backspace", "delete"]),
        (["<f1><f10><F12>"], ["f1", "f10", "f12"]),
        (["<left><leftAlt>"], ["left", "alt"]),
        (["<leftCtrlOn>c<leftCtrlOff>"], ["ctrl-c"]),
        (["<LEFTCTRLON>c<leftctrloff>"], ["ctrl-c"]),  # On/Off suffixes are case-insensitive too
        (["<leftCtrlOn><leftAltOn><del><leftAltOff><leftCtrlOff>"], ["ctrl-alt-delete"]),
        (["<cOn>", "x", "<cOff>", "x"], ["c-x", "x"]),  # character toggles
        (["<COn>x<COff>"], ["C-x"]),  # the held rune is sent as typed (%c), not shift-c
        (["<<On>a<<Off>"], ["<-a"]),  # '<' itself can be toggled
        (["<rightShiftOn>a<rightShiftOff>"], ["shift-a"]),  # rightShift sends shift, not shift_r
        (["<leftShiftOn>A<leftShiftOff>"], ["shift-shift-a"]),  # the driver does not merge modifiers
        (["<leftShiftOn><leftShiftOn>a<leftShiftOff>a"], ["shift-a", "a"]),  # holding twice is one hold
        (["<pageUp><pageDown>"], ["pageup", "pagedown"]),  # invalid qcodes, see lint
        (["<leftCommand>"], ["leftcommand"]),
        (["<On>"], LT + ["shift-o", "n"] + GT),
        (["<>"], LT + GT),
        (["<"], LT),
        (["<wait5"], LT + ["w", "a", "i", "t", "5"]),
        ([], []),
        ([""], []),
    ],
)
def test_grammar_edge_cases(boot_command, expected):
    assert keys(boot_command) == expected


@pytest.mark.parametrize(
    "boot_command",
    [["<wait0s>"], ["<wait-1s>"], ["<wait-0.5ms>"], ["<wait0.0000000001s>"], ["<wait9223372037>"], ["<wait-1h1s>"]],
)
def test_non_positive_waits_are_packer_errors(boot_command):
    with pytest.raises(BootCommandError, match="positive wait value"):
        parse_to_qemu_keys(boot_command, IP, PORT)
    assert rules(boot_command) == ["wait-not-positive"]


@pytest.mark.parametrize(
    "boot_command",
    [
        ["<wait1s-1s>"],  # Go's ParseDuration allows a sign only at the start
        ["<wait1s-1sx>"],  # pigeon keeps action errors even when the rule then fails
        ["<wait99999999999999999999>"],  # ParseInt out of range
        ["<wait9999999999999h>"],  # overflows time.Duration
    ],
)
def test_invalid_waits_are_packer_errors(boot_command):
    with pytest.raises(BootCommandError, match=r"boot_command\[0\] offset 0"):
        parse_to_qemu_keys(boot_command, IP, PORT)
    assert "wait-invalid" in rules(boot_command)


def test_go_duration_arithmetic():
    parse = bc_grammar._go_parse_duration
    assert parse("1h2m3.5s") == 3_723_500_000_000
    assert parse("1.5h") == 5_400_000_000_000
    assert parse("-0") == 0 and parse("0") == 0
    assert parse("9223372036854775807ns") == 2**63 - 1
    with pytest.raises(ValueError):
        parse("9223372036854775808ns")


# ------------------------------------------------------------------------------------------------
# Template rendering (Go text/template, re-rendered until stable as interpolate.Render does)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boot_command", "typed"),
    [
        (["{{ .HTTPIP }}:{{ .HTTPPort }}"], f"{IP}:{PORT}"),
        (["{{.HTTPIP}}", "{{", " .HTTPPort }}"], f"{IP}{PORT}"),  # joined before rendering
        (['a{{ "b}}c" }}d'], "ab}}cd"),  # a string literal; }} inside it does not close the action
        (['{{"\\x41\\102\\u0043"}}'], "ABC"),  # Go escapes: hex, octal, unicode
        (["{{ `raw \\n` }}"], "raw \\n"),
        (["a {{/* comment */}} b"], "a  b"),
        (["a  {{- .HTTPIP -}}  b"], f"a{IP}b"),  # trim markers
        (["a {{- /* c */ -}} b"], "ab"),
        (["}} }"], "}} }"),  # a lone }} is text
        (['{{"<"}}enter>'], "\n"),  # the template runs before the tag parser
    ],
)
def test_template_rendering(boot_command, typed):
    assert decode_qemu_keys(parse_to_qemu_keys(boot_command, IP, PORT)) == typed


@pytest.mark.parametrize(
    ("boot_command", "rule", "message"),
    [
        (["{{ .Name }}"], "template-unsupported", r"\.Name.*only \.HTTPIP and \.HTTPPort"),
        (["{{ .httpip }}"], "template-unsupported", "can't evaluate field httpip"),
        (["{{ timestamp }}"], "template-unsupported", "not supported"),
        (["{{ .HTTPIP | printf \"%s\" }}"], "template-unsupported", "not supported"),
        (["{{"], "template-syntax", "unclosed template action"),
        (["a {{ .HTTPIP"], "template-syntax", "unclosed template action"),
        (["{{}}"], "template-syntax", "empty template action"),
        (['{{ "abc }}'], "template-syntax", "unterminated \"-quoted string"),
        (["{{/* x }}"], "template-syntax", "unclosed template comment"),
        (['{{ "\\q" }}'], "template-syntax", "invalid escape"),
        # The classic Go escape does not survive Packer: pass 1 yields "{{", pass 2 fails.
        (['{{"{{"}}'], "template-syntax", "render pass 1"),
    ],
)
def test_template_errors(boot_command, rule, message):
    with pytest.raises(BootCommandError, match=message):
        parse_to_qemu_keys(boot_command, IP, PORT)
    assert rules(boot_command) == [rule]


def test_template_error_position_points_at_the_element():
    with pytest.raises(BootCommandError, match=r"boot_command\[2\] offset 4: \{\{ \.Name \}\}"):
        parse_to_qemu_keys(["a<enter>", "b", "host{{ .Name }}"], IP, PORT)


# ------------------------------------------------------------------------------------------------
# Lint rules: each one fires
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boot_command", "expected"),
    [
        (["<wait0s>"], [("wait-not-positive", 0, 0)]),
        (["ok<enter>", "x<wait-1s>"], [("wait-not-positive", 1, 1)]),
        (["<wait1s-1s>"], [("wait-invalid", 0, 0)]),
        (["<wait0>"], [("wait-quirk", 0, 0)]),
        (["<wait18446744074>"], [("wait-quirk", 0, 0)]),
        (["echo <entre>"], [("unknown-tag", 0, 5)]),
        (["<wait 5>"], [("unknown-tag", 0, 0)]),
        (["<Wait5>"], [("unknown-tag", 0, 0)]),
        (["<wait01>"], [("unknown-tag", 0, 0)]),
        (["a\nb"], [("non-printable", 0, 1)]),
        (["a", "\tb"], [("non-printable", 1, 0)]),
        (["caf\u00e9"], [("non-printable", 0, 3)]),
        (["<\u00e9On>a<\u00e9Off>"], [("non-printable", 0, 0), ("non-printable", 0, 6)]),
        (["<pageUp>"], [("unsupported-key", 0, 0)]),
        (["x<rightOptionOn>a<rightOptionOff>"], [("unsupported-key", 0, 1), ("unsupported-key", 0, 17)]),
        (["ip={{ .Name }}"], [("template-unsupported", 0, 3)]),
        (["{{ .HTTPIP }"], [("template-syntax", 0, 0)]),
        (["<leftCtrlOn>c"], [("toggle-unbalanced", 0, 0)]),
        (["c<leftAltOff>"], [("toggle-unbalanced", 0, 1)]),
        (["<cOn>x"], [("toggle-unbalanced", 0, 0)]),
        (["<leftCtrlOn><wait><leftCtrlOff>"], [("toggle-alone", 0, 0)]),
    ],
)
def test_lint_rule_fires(boot_command, expected):
    findings = lint(boot_command)
    assert [(f.rule, f.element, f.offset) for f in findings] == expected
    for f in findings:
        assert isinstance(f, Finding) and f.severity == RULES[f.rule].severity and f.message
        assert f.rule in str(f)


def test_every_rule_has_a_firing_test():
    fired = {rule for case in test_lint_rule_fires.pytestmark[0].args[1] for rule, _, _ in case[1]}
    assert fired == set(RULES)


def test_lint_suggests_the_intended_tag():
    assert "did you mean <enter>?" in lint(["<entre>"])[0].message
    assert "did you mean <wait5>?" in lint(["<wait 5>"])[0].message
    assert "did you mean <wait5>?" in lint(["<WAIT5>"])[0].message


def test_lint_clean_inputs():
    assert lint(["<esc><wait>", "<leftCtrlOn>c<leftCtrlOff>", "http://{{ .HTTPIP }}:{{ .HTTPPort }}/<enter>"]) == []
    assert lint(["a > b", "a<b", "x <- y"]) == []  # a '<' that does not look like a tag is fine


def test_lint_rejects_non_lists():
    with pytest.raises(BootCommandError, match="list of strings"):
        lint("<enter>")
    with pytest.raises(BootCommandError, match=r"boot_command\[1\]"):
        lint(["a", 3])


# ------------------------------------------------------------------------------------------------
# Compiler
# ------------------------------------------------------------------------------------------------


def test_compile_groups_lines_at_enter():
    steps = [TypeText("sudo -i"), PressKey("enter"), Wait(2), Wait(0.5), TypeText("passwd"), PressKey("RETURN"),
             TypeText("x")]  # fmt: skip
    assert compile_steps(steps) == ["sudo -i<enter><wait2s><wait500ms>", "passwd<return>", "x"]
    assert compile_steps([]) == []


def test_compile_waits():
    steps = [Wait(timedelta(minutes=1, seconds=30)), Wait(timedelta(microseconds=5))]
    assert compile_steps(steps) == ["<wait90s><wait5us>"]
    assert compile_steps([Wait(1e-9), Wait(0.1), Wait(3)]) == ["<wait1ns><wait100ms><wait3s>"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [TypeText("ok"), TypeText("a\nb")],
            r"step 1 \(TypeText\): character '\\n' \(U\+000A\) at offset 1 .*PressKey\(\"enter\"\)",
        ),
        ([TypeText("a\tb")], r"'\\t' \(U\+0009\) at offset 1.*PressKey\(\"tab\"\)"),
        ([TypeText("caf\u00e9")], r"'\u00e9' \(U\+00E9\) at offset 3 cannot be typed: expected printable ASCII"),
        ([TypeText("\x7f")], r"U\+007F"),
        ([TypeText(5)], "expected a string"),
        ([Wait(0)], r"step 0 \(Wait\): seconds = 0: expected a positive wait"),
        ([Wait(-1.5)], "positive"),
        ([Wait(1e-12)], "positive"),
        ([Wait(float("nan"))], "positive number"),
        ([Wait(True)], "positive number"),
        ([Wait(1e12)], "longer than"),
        ([PressKey("entre")], r"'entre' is not a special key; expected one of: bs, del, enter"),
        ([PressKey("pageUp")], r"<pageUp> is not supported by the proxmox driver: it would send 'pageup'"),
        ([PressKey("leftOption")], "not supported by the proxmox driver"),
        ([Chord((), "c")], "modifiers is empty"),
        ([Chord(("enter",), "c")], r"<enter> is not a modifier"),
        ([Chord(("leftShift", "rightShift"), "c")], "repeats a modifier"),
        ([Chord(("leftCommand",), "c")], "not supported"),
        ([Chord(("leftCtrl",), "\n")], "cannot be typed"),
        ([Chord(("leftCtrl",), "")], "expected one character or a special key"),
        ([Chord(("leftCtrl",), "pagedown")], "not supported"),
        (["enter"], r"step 0: expected TypeText, PressKey, Wait, HttpIp, HttpPort or Chord"),
    ],
)
def test_compile_errors(steps, message):
    with pytest.raises(BootCommandError, match=message):
        compile_steps(steps)


def test_chord_accepts_a_single_modifier_string():
    assert Chord("leftCtrl", "c") == Chord(("leftCtrl",), "c")
    assert compile_steps([Chord(["leftctrl"], "c")]) == ["<leftCtrlOn>c<leftCtrlOff>"]


def test_escapes_cost_no_keystrokes():
    text = "<<{{{{ <enter> {{ .HTTPIP }}"
    bc = compile_steps([TypeText(text)])
    assert stats(bc, DEFAULT_KEY_INTERVAL_S).keystrokes == len(text)


# ------------------------------------------------------------------------------------------------
# HCL: bootcmd leaves ${ and %{ alone; the emitter's uniform escaping makes them survive
# ------------------------------------------------------------------------------------------------


def hcl_quoted(value: str) -> str:
    """What nixgold.render.hcl.hcl_string does (kept here so this test does not depend on hcl.py)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "$${").replace("%{", "%%{")
    return f'"{escaped}"'


def test_compiled_output_survives_hcl():
    steps = [TypeText('echo "${HOME}" %{x} \\ $${y}'), PressKey("enter"), TypeText("curl http://"), HttpIp(),
             TypeText(":"), HttpPort(), PressKey("enter")]  # fmt: skip
    boot_command = compile_steps(steps)
    assert boot_command[0] == 'echo "${HOME}" %{x} \\ $${y}<enter>'  # no HCL escaping at this level
    text = "boot_command = [\n" + ",\n".join(f"  {hcl_quoted(e)}" for e in boot_command) + "\n]\n"
    assert "$${HOME}" in text and "%%{x}" in text and "{{ .HTTPIP }}:{{ .HTTPPort }}" in text

    tree = hcl2.parses_to_tree(text)
    assert not {t.data for t in tree.iter_subtrees()} & {"interpolation", "template_if_start", "template_for_start"}
    values = hcl2.loads(text, serialization_options=SerializationOptions(strip_string_quotes=True))["boot_command"]
    # python-hcl2 keeps the $${ / %%{ escapes in values; HCL proper (Packer) turns them back.
    assert [v.replace("$${", "${").replace("%%{", "%{") for v in values] == boot_command
    # control: the same text without escaping is an HCL interpolation
    assert "interpolation" in {t.data for t in hcl2.parses_to_tree('x = "${HOME}"\n').iter_subtrees()}


# ------------------------------------------------------------------------------------------------
# Stats and decoding
# ------------------------------------------------------------------------------------------------


def test_stats_counts_keys_waits_and_assumed_address():
    bc = compile_steps([PressKey("enter"), Wait(10), TypeText("curl http://"), HttpIp(), TypeText(":"), HttpPort(),
                        PressKey("enter"), Wait(1.5)])  # fmt: skip
    s = stats(bc, 0.005)
    assert s.keystrokes == 1 + len("curl http://") + len("255.255.255.255") + 1 + len("65535") + 1
    assert s.wait_seconds == 11.5
    assert s.api_latency_s == API_LATENCY_S == 0.015
    assert s.typing_seconds == pytest.approx(s.keystrokes * (0.005 + API_LATENCY_S))
    assert s.total_seconds == pytest.approx(s.typing_seconds + 11.5)
    assert (s.assumed_http_ip, s.assumed_http_port) == ("255.255.255.255", 65535)
    assert "255.255.255.255:65535" in str(s) and "assumed API latency" in str(s)
    small = stats(bc, 0.1, assumed_http_ip="10.0.0.1", assumed_http_port=80)
    assert small.keystrokes == s.keystrokes - 7 - 3
    assert small.typing_seconds == pytest.approx(small.keystrokes * (0.1 + API_LATENCY_S))


def test_stats_raises_where_packer_fails():
    with pytest.raises(BootCommandError):
        stats(["<wait0s>"], 0.005)


def test_decode_qemu_keys():
    assert decode_qemu_keys(["shift-h", "i", WaitEvent(10**9), KeyEvent("ret"), "tab", "shift-comma"]) == "Hi\n\t<"
    with pytest.raises(BootCommandError, match=r"key event 1 = 'ctrl-c': expected a key that types text"):
        decode_qemu_keys(["a", "ctrl-c"])


# ------------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
TRICKY = st.sampled_from(
    ["<enter>", "<wait5>", "<wait>", "<WAIT5>", "<leftShiftOn>", "<leftShiftOff>", "<cOn>", "<", ">", "{{", "}}",
     "{", "}", "{{ .HTTPIP }}", "{{ .Name }}", '{{"{{"}}', "{{-", " -}}", "{{/*", "*/}}", "${HOME}", "%{x}", "`",
     '"', "\\", "$${"]
)  # fmt: skip
TEXTS = st.lists(st.one_of(st.text(PRINTABLE, max_size=12), TRICKY), max_size=6).map("".join)
SUPPORTED = [k.name for k in SPECIAL_KEYS if k.proxmox_supported]
MODIFIERS = [k.name for k in SPECIAL_KEYS if k.modifier and k.proxmox_supported]
ADDRESSES = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
CHORDS = st.builds(
    Chord,
    st.lists(st.sampled_from(MODIFIERS), min_size=1, max_size=3, unique_by=lambda n: KEYS_BY_NAME[n].qemu_key),
    st.one_of(PRINTABLE, st.sampled_from(SUPPORTED)),
)
WAITS = st.sampled_from([0.001, 0.5, 1, 2.25, 90, timedelta(milliseconds=1500)]).map(Wait)
TEXT_KEYS = {"enter": "\n", "return": "\n", "tab": "\t", "spacebar": " "}
TEXTY_STEPS = st.one_of(
    TEXTS.map(TypeText), st.sampled_from(sorted(TEXT_KEYS)).map(PressKey), WAITS, st.just(HttpIp()), st.just(HttpPort())
)
ANY_STEPS = st.one_of(TEXTY_STEPS, st.sampled_from(SUPPORTED).map(PressKey), CHORDS)


@PROPS
@given(text=TEXTS, address=ADDRESSES)
def test_any_printable_text_round_trips(text, address):
    boot_command = compile_steps([TypeText(text)])
    assert lint(boot_command) == []
    events = parse_to_qemu_keys(boot_command, *address)
    assert len(events) == len(text)
    assert decode_qemu_keys(events) == text


@PROPS
@given(steps=st.lists(TEXTY_STEPS, max_size=8), address=ADDRESSES)
def test_text_steps_decode_to_what_the_screen_shows(steps, address):
    ip, port = address
    expected = "".join(
        s.text if isinstance(s, TypeText)
        else TEXT_KEYS[s.name] if isinstance(s, PressKey)
        else ip if isinstance(s, HttpIp)
        else str(port) if isinstance(s, HttpPort)
        else ""
        for s in steps
    )  # fmt: skip
    boot_command = compile_steps(steps)
    assert lint(boot_command) == []
    assert decode_qemu_keys(parse_to_qemu_keys(boot_command, ip, port)) == expected


@PROPS
@given(steps=st.lists(ANY_STEPS, max_size=8), address=ADDRESSES)
def test_mixed_steps_compile_clean_and_do_not_interact(steps, address):
    boot_command = compile_steps(steps)
    assert lint(boot_command) == []
    separately = [event for step in steps for event in parse_to_qemu_keys(compile_steps([step]), *address)]
    assert parse_to_qemu_keys(boot_command, *address) == separately
    s = stats(boot_command, DEFAULT_KEY_INTERVAL_S)
    assert s.keystrokes == sum(isinstance(e, KeyEvent) for e in stats_events(boot_command))
    assert s.total_seconds == pytest.approx(s.typing_seconds + s.wait_seconds)


def stats_events(boot_command):
    return parse_to_qemu_keys(boot_command, "255.255.255.255", 65535)


@PROPS
@given(boot_command=st.lists(st.one_of(st.text(max_size=15), TRICKY), max_size=4))
def test_lint_and_parse_never_crash_and_agree(boot_command):
    findings = lint(boot_command)
    assert all(f.rule in RULES and 0 <= f.element < max(len(boot_command), 1) for f in findings)
    try:
        parse_to_qemu_keys(boot_command, IP, PORT)
    except BootCommandError:
        assert any(f.severity == "error" for f in findings)


@PROPS
@given(body=st.text(st.sampled_from("0123456789.-smhnuµ x"), max_size=8))
def test_wait_parser_agrees_with_the_spec_regex(body):
    tag = f"<wait{body}>"
    exprs, errors = bc_grammar._parse(tag)
    is_wait = len(exprs) == 1 and isinstance(exprs[0], bc_grammar._WaitExpr)
    if not errors:  # pigeon action errors (Go rejects the number) fail the whole parse
        assert is_wait == bool(re.match(bc_steps.WAIT_TAG_RE, tag))


# --- the product's boot_command (nixgold.render.boot_command) ------------------------------------------
def test_install_line_fits_the_keystroke_budget_and_retries_curl():
    from nixgold.config.model import Config
    from nixgold.render.boot_command import CURL_RETRY, MAX_KEYSTROKES, boot_command

    commands = boot_command(Config())
    worst = stats(commands, DEFAULT_KEY_INTERVAL_S)  # HTTPIP/HTTPPort counted as 255.255.255.255:65535
    assert worst.keystrokes <= MAX_KEYSTROKES == 120
    typed = decode_qemu_keys(parse_to_qemu_keys(commands, "10.99.0.1", 8123))
    assert typed == (f"\nu=http://10.99.0.1:8123;curl -fsS {CURL_RETRY} $u/install.sh|sudo bash -s $u\n")
    # --retry alone never retries "network unreachable" or "connection refused": all errors must be
    assert "--retry-all-errors" in CURL_RETRY and "--retry-delay" in CURL_RETRY
