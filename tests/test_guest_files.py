"""configuration.nix, install.sh and cleanup.sh: syntax, NixOS option validity, behaviour.

Tools: ``nix-instantiate`` (only --parse and --eval of plain Nix, no nixpkgs; it runs
hermetically with NIX_STATE_DIR/NIX_STORE_DIR/HOME... in a temp dir, see ``nix_env``),
``shellcheck`` and ``bash``. The scripts run against a scratch root (``NIXGOLD_TEST_ROOT``)
with a PATH holding only recording stubs and an allowlist of harmless coreutils, so a
command the script is not supposed to run fails instead of touching this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterable

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixgold.render import templating
from nixgold.config.model import Config, UserSettings
from nixgold.config.load import parse_config
from nixgold.errors import ConfigError, RenderError
from nixgold.render.guest_files import (
    BUILD_OVERRIDE_NIX,
    TEMPLATE_PACKAGES,
    render_cleanup_sh,
    render_configuration_nix,
    render_install_sh,
)
from nixgold.build.install_status import parse_report, report_token
from nixgold.render.inputs import BUILD_KEY_PUB, CONFIGURATION_NIX, RenderInputs, guest_disk_device
from nixgold.render.templating import nix_attr_path, nix_bool, nix_str, sh, token
from tests.helpers.nix import nix_eval_expr, nix_eval_modules as _nix_eval_modules, nix_parse

HERE = Path(__file__).parent
OPTIONS = json.loads((HERE / "fixtures" / "nixos-options.json").read_text())
TEMPLATES = Path(templating.__file__).parent / "templates"

RELEASES = ("23.05", "24.05", "25.11", "26.05")
FIRMWARES = ("uefi", "bios")
ROOT_LOGINS = ("prohibit-password", "no")

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbbAdzDTczAgOkk8e6klmU3bUmAxOnTrfF6wOq1w6HR"
BUILD_KEY = ED25519_KEY + " nixgold-build"

# The tools are part of the dev setup (scripts/setup.sh --dev); a missing tool fails loudly
# instead of silently skipping the checks that need it.
@pytest.fixture()
def _require_nix() -> None:
    if shutil.which("nix-instantiate") is None:
        pytest.fail("nix-instantiate is not installed: run `bash scripts/setup.sh --dev`")


@pytest.fixture()
def _require_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: run `bash scripts/setup.sh --dev`")


needs_nix = pytest.mark.usefixtures("_require_nix")
needs_shellcheck = pytest.mark.usefixtures("_require_shellcheck")


# --- helpers -----------------------------------------------------------------------------
def make_config(raw: dict[str, Any] | None = None) -> Config:
    return parse_config(raw or {})


def make_inputs(config: Config) -> RenderInputs:
    return RenderInputs(config=config, dialect="plugin", boot_command=(), manifest={}, iso=None)


def matrix_raw(firmware: str, root_login: str, release: str, rich: bool) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "vm": {"firmware": firmware, "disk_type": "virtio" if firmware == "bios" else "scsi"},
        "nixos": {"release": release, "permit_root_login": root_login},
    }
    if rich:
        raw["nixos"].update(packages=["vim", "python3Packages.requests", "nodePackages.prettier"],
                            locale="de_DE.UTF-8", timezone="Europe/Berlin", keymap="de", flakes=True, auto_gc=True)
        raw["users"] = [
            {"name": "alice", "ssh_keys": [ED25519_KEY + " alice@laptop", ED25519_KEY], "sudo": True,
             "groups": ["video"]},
            {"name": "bob", "ssh_keys": [ED25519_KEY + " bob"], "sudo": False},
        ]
    else:
        raw["nixos"].update(packages=[], flakes=False, auto_gc=False)
    return raw


MATRIX = [
    pytest.param(fw, rl, rel, rich, id=f"{fw}-{rl}-{rel}-{'users' if rich else 'bare'}")
    for fw in FIRMWARES for rl in ROOT_LOGINS for rel in RELEASES for rich in (True, False)
]


def nix_eval_modules(env: dict[str, str], specs: list[tuple[Path, Iterable[str]]]) -> list[dict[str, Any]]:
    """Rendered modules evaluated with stub packages for the template's own and the config's."""
    return _nix_eval_modules(env, [(path, (*TEMPLATE_PACKAGES, *packages)) for path, packages in specs])


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_all(config: Config) -> tuple[str, str, str]:
    inputs = make_inputs(config)
    nixcfg = render_configuration_nix(inputs)
    return nixcfg, render_install_sh(inputs, sha256(nixcfg)), render_cleanup_sh(inputs)


def get_path(data: dict[str, Any], dotted: Iterable[str]) -> Any:
    for key in dotted:
        data = data[key]
    return data


# --- the NixOS option fixture --------------------------------------------------------------
def _split_top(text: str, sep: str | None = None) -> list[str]:
    """Split at top level (outside (), [], {}, "..." and ''...'') on whitespace or ``sep``."""
    parts, depth, buf, i, quote = [], 0, "", 0, None
    while i < len(text):
        if quote:
            end = text.find(quote, i)
            end = len(text) if end < 0 else end + len(quote)
            buf += text[i:end]
            i, quote = end, None
            continue
        ch = text[i]
        if text.startswith("''", i) or ch == '"':
            quote = "''" if ch == "'" else '"'
            buf += quote
            i += len(quote)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and ((sep is None and ch.isspace()) or (sep is not None and text.startswith(sep, i))):
            if buf.strip():
                parts.append(buf.strip())
            buf = ""
            i += 1 if sep is None else len(sep)
            continue
        buf += ch
        i += 1
    if buf.strip():
        parts.append(buf.strip())
    return parts


def _unparen(text: str) -> str:
    """Drop parentheses that enclose the whole type expression."""
    text = text.strip()
    while text.startswith("("):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth == 0:
                break
        if i != len(text) - 1:
            break
        text = text[1:-1].strip()
    return text


def value_matches_type(value: Any, type_text: str) -> bool:
    """Does an evaluated JSON value fit a declared option type string from the fixture?"""
    t = _unparen(type_text)
    if t.startswith("NOT DECLARED"):  # freeform entry (nix.settings.experimental-features)
        return True
    variants = _split_top(t, sep=" | ")
    if len(variants) > 1:  # "X (older) | Y (newest)": must fit every version
        return all(value_matches_type(value, v) for v in variants)
    override = re.search(r"//\s*\{\s*type\s*=\s*(.+?);\s*\}\s*$", t)
    if override:
        return value_matches_type(value, override.group(1))
    if t.startswith("mkEnableOption"):
        return isinstance(value, bool)
    if t.startswith("mkPackageOption"):
        return isinstance(value, dict)
    words = _split_top(t)
    head, args = words[0], words[1:]
    head = head.removeprefix("types.")
    if head == "nullOr":
        return value is None or value_matches_type(value, args[0])
    if head in ("listOf", "nonEmptyListOf"):
        return isinstance(value, list) and (head == "listOf" or value) and all(
            value_matches_type(v, args[0]) for v in value)
    if head == "either":
        return value_matches_type(value, args[0]) or value_matches_type(value, args[1])
    if head in ("passwdEntry", "addCheck"):
        return value_matches_type(value, args[0])
    if head == "enum":
        return value in re.findall(r'"([^"]*)"', " ".join(args))
    if head == "bool":
        return isinstance(value, bool)
    if head in ("int", "port") or head.startswith("ints."):
        return isinstance(value, int) and not isinstance(value, bool)
    if head in ("str", "lines", "singleLineStr", "nonEmptyStr", "strMatching", "path"):
        if not isinstance(value, str):
            return False
        if head == "singleLineStr" and "\n" in value:
            return False
        if head == "nonEmptyStr" and not value.strip():
            return False
        if head == "strMatching":
            regex = args[0][2:-2] if args[0].startswith("''") else args[0][1:-1]
            posix = regex.replace("[:alnum:]", "a-zA-Z0-9").replace("[:space:]", r"\s")
            return re.fullmatch(posix, value) is not None
        return True
    if head in ("attrs", "attrsOf", "submodule", "package", "shellPackage"):
        return isinstance(value, dict)
    raise AssertionError(f"the test does not know the option type {type_text!r}; teach value_matches_type")


def _pattern_matches(pattern: list[str], path: list[str]) -> bool:
    return len(pattern) == len(path) and all(p == "<name>" or p == s for p, s in zip(pattern, path))


_DECLARED = [(name.split("."), name) for name in OPTIONS["options"]]


def _option_named(path: list[str]) -> str | None:
    for pattern, name in _DECLARED:
        if _pattern_matches(pattern, path):
            return name
    return None


def _has_declared_below(path: list[str]) -> bool:
    return any(len(p) > len(path) and _pattern_matches(p[: len(path)], path) for p, _ in _DECLARED)


def _snapshots_for(release: str) -> set[str]:
    """Fixture snapshots: C = 24.x, A = 25.05-pre, B = 26.05-dev. A release between two
    snapshots must satisfy both neighbours."""
    year, month = (int(x) for x in release.split("."))
    key = (year, month)
    if key <= (24, 11):
        return {"C"}
    if key == (25, 5):
        return {"A"}
    if key < (26, 5):
        return {"A", "B"}
    return {"B"}


_OPENSSH_LIST_KEYS = {"Ciphers", "KexAlgorithms", "Macs", "AuthorizedKeysFile", "AllowGroups", "AllowUsers",
                      "DenyGroups", "DenyUsers"}


def option_problems(module: dict[str, Any], release: str, used: list[str] | None = None) -> list[str]:
    """Every option path the evaluated module sets, checked against the fixture.
    ``used`` collects the declared options that were checked."""
    problems: list[str] = []
    used = [] if used is None else used

    def unwrap(value: Any) -> Any:
        if isinstance(value, dict) and value.get("_type") == "override":
            return unwrap(value["content"])
        return value

    def visit(path: list[str], value: Any, freeform_parent: str | None) -> None:
        value = unwrap(value)
        dotted = ".".join(path)
        declared = _option_named(path)
        for table in ("renamed", "removed"):
            for retired in OPTIONS[table]:
                if _pattern_matches(retired.split("."), path):
                    problems.append(f"{dotted}: {retired} is listed as {table} in the fixture")
        if declared and not (isinstance(value, dict) and _has_declared_below(path)):
            spec = OPTIONS["options"][declared]
            used.append(declared)
            if not value_matches_type(value, spec["type"]):
                problems.append(f"{dotted} = {value!r}: does not fit type {spec['type']}")
            present = spec.get("present_in")
            if present:
                missing = _snapshots_for(release) - set(present.split(","))
                if missing:
                    problems.append(f"{dotted}: not present in snapshot(s) {sorted(missing)} (release {release})")
            return
        if isinstance(value, dict) and (_has_declared_below(path) or declared):
            freeform = declared if declared and "freeformType" in OPTIONS["options"][declared]["type"] else None
            for key, child in value.items():
                visit(path + [key], child, freeform or freeform_parent if declared else freeform_parent)
            return
        if freeform_parent and len(path) == len(freeform_parent.split(".")) + 1:
            if freeform_parent == "services.openssh.settings" and isinstance(value, list) \
                    and path[-1] not in _OPENSSH_LIST_KEYS:
                problems.append(f"{dotted}: sshd settings accept lists only for {sorted(_OPENSSH_LIST_KEYS)}")
            return  # a freeform entry of a declared freeform submodule
        problems.append(f"{dotted}: no such option in the fixture")

    for key, value in module.items():
        if key == "imports":
            continue
        visit([key], value, None)
    return problems


# --- filters -----------------------------------------------------------------------------------
def test_nix_str_escapes() -> None:
    assert nix_str("plain") == '"plain"'
    assert nix_str('a"b') == r'"a\"b"'
    assert nix_str("a\\b") == r'"a\\b"'
    assert nix_str("${x}") == r'"\${x}"'
    assert nix_str("$x $(y) `z` ''") == '"$x $(y) `z` \'\'"'
    assert nix_str("a\nb\rc\td") == r'"a\nb\rc\td"'
    with pytest.raises(ValueError, match="NUL"):
        nix_str("a\0b")
    with pytest.raises(TypeError):
        nix_str(1)  # type: ignore[arg-type]


def test_nix_attr_path() -> None:
    assert nix_attr_path("vim") == "pkgs.vim"
    assert nix_attr_path("python3Packages.requests") == "pkgs.python3Packages.requests"
    assert nix_attr_path(["gnome", "or"]) == 'pkgs.gnome."or"'
    assert nix_attr_path("1password-cli") == 'pkgs."1password-cli"'
    assert nix_attr_path("a", root="") == "a"
    for bad in ("", "a..b", "vim\n", "a b", 'a"b', "${x}", "a.${x}", "a;b"):
        with pytest.raises(ValueError):
            nix_attr_path(bad)


def test_nix_bool_sh_token() -> None:
    assert nix_bool(True) == "true" and nix_bool(False) == "false"
    with pytest.raises(TypeError):
        nix_bool(1)  # type: ignore[arg-type]
    assert sh("/dev/sda") == "/dev/sda"
    assert sh("a b'c") == "'a b'\"'\"'c'"
    assert sh(8080) == "8080"
    with pytest.raises(TypeError):
        sh(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sh("a\0")
    assert token("0.1.0") == "0.1.0"
    for bad in ("a b", "x\n", "a#b", "$x"):
        with pytest.raises(ValueError):
            token(bad)


@needs_nix
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))
                       | st.sampled_from(["${", "$${x}", "\\${x}", "''${x}", "$", "\\", '"', "'''", "a$"]),
                       min_size=10, max_size=40))
def test_nix_str_round_trips_through_nix(values: list[str], nix_env: dict[str, str],
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("nixstr")
    expr = "[\n" + "\n".join(nix_str(v) for v in values) + "\n]\n"
    assert nix_eval_expr(nix_env, expr, tmp) == values


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))),
                       min_size=1, max_size=30))
def test_sh_round_trips_through_bash(values: list[str]) -> None:
    script = "printf '%s\\0' " + " ".join(sh(v) for v in values)
    out = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30).stdout
    assert out.decode("utf-8", "surrogateescape").split("\0")[:-1] == values


# --- templating --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.glob("*.j2")
                                        if p.name in ("configuration.nix.j2", "install.sh.j2", "cleanup.sh.j2")))
def test_every_output_goes_through_an_escaping_filter(name: str) -> None:
    """No raw {{ value }}: each expression printed by a guest-file template is a filter call."""
    tree = templating.ENV.parse((TEMPLATES / name).read_text())
    outputs = [node for out in tree.find_all(jinja2.nodes.Output) for node in out.nodes
               if not isinstance(node, jinja2.nodes.TemplateData)]
    assert outputs
    for node in outputs:
        assert isinstance(node, jinja2.nodes.Filter) and node.name in templating.ESCAPING_FILTERS, \
            f"{name} line {node.lineno}: unescaped output {node}"


def test_render_error_names_template_and_line() -> None:
    with pytest.raises(RenderError) as info:
        templating.render("configuration.nix.j2", nixgold_version="0.1.0", config_hash="ab")
    text = str(info.value)
    source = (TEMPLATES / "configuration.nix.j2").read_text().splitlines()
    line = next(n for n, s in enumerate(source, 1) if "build_override_nix" in s)  # the first undefined
    assert f"configuration.nix.j2, line {line}:" in text
    assert f"-->  {line:3d} |" in text and "'build_override_nix' is undefined" in text and "UndefinedError" in text
    assert f"     {line - 1:3d} |" in text and f"     {line + 1:3d} |" in text  # surrounding lines


def test_filter_failure_is_a_render_error() -> None:
    config = dataclasses.replace(make_config(), nixos=dataclasses.replace(make_config().nixos, packages=("vim\n",)))
    with pytest.raises(RenderError, match=r"configuration.nix.j2, line \d+.*not a Nix attribute path"):
        render_configuration_nix(make_inputs(config))


def test_install_sh_refuses_a_bad_sha256() -> None:
    with pytest.raises(RenderError, match="64 lowercase hex"):
        render_install_sh(make_inputs(make_config()), "abc")


def test_no_secret_or_key_material_is_rendered() -> None:
    nixcfg, install, cleanup = render_all(make_config(matrix_raw("uefi", "no", "26.05", rich=False)))
    for text in (nixcfg, install, cleanup):
        assert "PRIVATE KEY" not in text and "ssh-ed25519 AAAA" not in text
    assert f"KEY_NAME={BUILD_KEY_PUB}\n" in install  # the key is fetched at install time


def test_build_override_file_name_matches_constant() -> None:
    nixcfg, install, cleanup = render_all(make_config({"nixos": {"permit_root_login": "no"}}))
    assert f"builtins.pathExists ./{BUILD_OVERRIDE_NIX}) ./{BUILD_OVERRIDE_NIX}" in nixcfg
    assert f"BUILD_OVERRIDE_NAME={BUILD_OVERRIDE_NIX}" in install
    assert f'BUILD_OVERRIDE="${{TEST_ROOT}}/etc/nixos/"{BUILD_OVERRIDE_NIX}\n' in cleanup


def test_configuration_header() -> None:
    config = make_config()
    nixcfg = render_configuration_nix(make_inputs(config))
    first = nixcfg.splitlines()[0]
    assert first.startswith("# Generated by nixgold") and config.config_hash() in first
    assert "Do not edit" in nixcfg.splitlines()[1]
    assert "{ config, lib, pkgs, ... }:" in nixcfg


# --- configuration.nix: parse + evaluate + check options ------------------------------------
@pytest.fixture(scope="module")
def rendered_matrix(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("matrix")
    cases = []
    for param in MATRIX:
        firmware, root_login, release, rich = param.values
        config = make_config(matrix_raw(firmware, root_login, release, rich))
        nixcfg, install, cleanup = render_all(config)
        case_dir = root / param.id
        case_dir.mkdir()
        (case_dir / CONFIGURATION_NIX).write_text(nixcfg)
        (case_dir / "install.sh").write_text(install)
        (case_dir / "cleanup.sh").write_text(cleanup)
        cases.append({"id": param.id, "config": config, "dir": case_dir, "firmware": firmware,
                      "root_login": root_login, "release": release, "rich": rich})
    return cases


@needs_nix
def test_matrix_parses(rendered_matrix: list[dict[str, Any]], nix_env: dict[str, str]) -> None:
    nix_parse(nix_env, [case["dir"] / CONFIGURATION_NIX for case in rendered_matrix])


@pytest.fixture(scope="module")
def evaluated_matrix(rendered_matrix: list[dict[str, Any]], nix_env: dict[str, str]) -> list[tuple[dict, dict]]:
    if shutil.which("nix-instantiate") is None:
        pytest.fail("nix-instantiate is not installed: run `bash scripts/setup.sh --dev`")
    results = nix_eval_modules(nix_env, [(case["dir"] / CONFIGURATION_NIX, case["config"].nixos.packages)
                                         for case in rendered_matrix])
    return list(zip(rendered_matrix, results))


def test_matrix_key_options(evaluated_matrix: list[tuple[dict, dict]]) -> None:
    for case, m in evaluated_matrix:
        config: Config = case["config"]
        where = case["id"]
        assert m["imports"] == ["hardware-configuration.nix"], where  # nixgold-build.nix absent
        assert m["services"]["cloud-init"]["enable"] is True
        assert m["services"]["cloud-init"]["network"]["enable"] is True
        system_info = m["services"]["cloud-init"]["settings"]["system_info"]
        assert system_info["distro"] == "nixos" and system_info["network"]["renderers"] == ["networkd"]
        assert system_info["default_user"]["sudo"] == ["ALL=(ALL) NOPASSWD:ALL"]
        assert system_info["default_user"]["groups"] == ["wheel"] and system_info["default_user"]["lock_passwd"]
        assert m["networking"]["useNetworkd"] is True and m["networking"]["useDHCP"] is True
        assert m["networking"]["hostName"] == ""
        assert m["services"]["qemuGuest"]["enable"] is True
        ssh = m["services"]["openssh"]
        assert ssh["enable"] is True
        assert ssh["settings"]["PasswordAuthentication"] is False
        assert ssh["settings"]["KbdInteractiveAuthentication"] is False
        assert ssh["settings"]["PermitRootLogin"] == case["root_login"]
        assert m["boot"]["growPartition"] is True
        assert m["fileSystems"]["/"] == {"fsType": "ext4", "autoResize": True}  # device: hardware-configuration
        assert m["boot"]["kernelParams"] == ["console=tty0", "console=ttyS0,115200", "net.ifnames=0"]
        assert isinstance(m["boot"]["loader"]["timeout"], int)
        if case["firmware"] == "uefi":
            assert m["boot"]["loader"]["systemd-boot"]["enable"] is True
            assert m["boot"]["loader"]["efi"]["canTouchEfiVariables"] is False
            assert "grub" not in m["boot"]["loader"]
        else:
            assert m["boot"]["loader"]["grub"]["device"] == guest_disk_device(config.vm.disk_type) == "/dev/vda"
            assert "systemd-boot" not in m["boot"]["loader"]
        assert m["system"]["stateVersion"] == case["release"]
        assert m["users"]["mutableUsers"] is True
        assert m["users"]["users"]["root"]["hashedPassword"] == "!"
        assert "@includedir /etc/sudoers.d" in m["security"]["sudo"]["extraConfig"].splitlines()
        assert m["i18n"]["defaultLocale"] == config.nixos.locale
        assert m["time"]["timeZone"] == config.nixos.timezone
        assert m["console"]["keyMap"] == config.nixos.keymap
        assert [p["_stubPackage"] for p in m["environment"]["systemPackages"]] == \
            [*TEMPLATE_PACKAGES, *config.nixos.packages]
        if case["rich"]:
            assert m["nix"]["settings"]["experimental-features"] == ["nix-command", "flakes"]
            assert m["nix"]["gc"]["automatic"] is True
            alice, bob = m["users"]["users"]["alice"], m["users"]["users"]["bob"]
            assert alice["isNormalUser"] and alice["extraGroups"] == ["video", "wheel"]
            assert alice["openssh"]["authorizedKeys"]["keys"] == list(config.users[0].ssh_keys)
            assert bob["extraGroups"] == [] and bob["openssh"]["authorizedKeys"]["keys"] == [ED25519_KEY + " bob"]
            assert m["security"]["sudo"]["extraRules"] == [
                {"users": ["alice"], "commands": [{"command": "ALL", "options": ["NOPASSWD"]}]}]
        else:
            assert "nix" not in m
            assert set(m["users"]["users"]) == {"root"} and "extraRules" not in m["security"]["sudo"]


def test_matrix_options_exist_in_fixture(evaluated_matrix: list[tuple[dict, dict]]) -> None:
    for case, module in evaluated_matrix:
        used: list[str] = []
        assert option_problems(module, case["release"], used) == [], case["id"]
        assert {"services.openssh.settings.PermitRootLogin", "users.users.<name>.hashedPassword",
                "fileSystems.<name>.autoResize", "services.cloud-init.settings", "system.stateVersion",
                "boot.kernelParams"} <= set(used)
        if case["rich"]:
            assert {"users.users.<name>.openssh.authorizedKeys.keys", "nix.settings.experimental-features",
                    "security.sudo.extraRules", "nix.gc.automatic"} <= set(used)


def test_option_checker_catches_bad_modules() -> None:
    """The checker itself: renamed, removed, unknown, wrong type, wrong enum, missing snapshot."""
    assert option_problems({"services": {"openssh": {"permitRootLogin": "no"}}}, "26.05")
    assert option_problems({"services": {"openssh": {"banner": "hi"}}}, "24.05")
    assert option_problems({"services": {"openssh": {"settings": {"Banner": "/etc/issue"}}}}, "24.05")
    assert option_problems({"services": {"openssh": {"generateHostKeys": True}}}, "25.05")
    assert option_problems({"services": {"openssh": {"settings": {"PermitRootLogin": "maybe"}}}}, "26.05")
    assert option_problems({"services": {"openssh": {"settings": {"AcceptEnv2": ["x"]}}}}, "26.05")
    assert option_problems({"boot": {"growPartition": "yes"}}, "26.05")
    assert option_problems({"boot": {"kernelParams": ["a b"]}}, "26.05")
    assert option_problems({"networking": {"hostName": "a.b"}}, "26.05")
    assert option_problems({"networking": {"frobnicate": True}}, "26.05")
    assert option_problems({"fileSystems": {"/": {"formatOptions": "x"}}}, "26.05")
    assert option_problems({"users": {"users": {"x": {"passwordFile": "/x"}}}}, "26.05")
    assert option_problems({"users": {"users": {"x": {"openssh": {"authorizedKeys": {"keys": ["a\nb"]}}}}}}, "26.05")
    assert option_problems({"users": {"users": {"x": {"isNormalUser": True}}}}, "26.05") == []
    assert option_problems({"services": {"openssh": {"settings": {"Banner": "/etc/issue"}}}}, "26.05") == []


# --- nixgold-build.nix via install.sh, evaluated ----------------------------------------------
STUB_COMMANDS: dict[str, str] = {
    # name -> extra bash run after recording the call ($@ = the arguments)
    "curl": r'''
dest=""; url=""; post=""
while (($#)); do case "$1" in -o) dest=$2; shift 2 ;; --data-binary) post=$2; shift 2 ;; http*) url=$1; shift ;; *) shift ;; esac; done
if [[ -n $post ]]; then  # an install report: keep it, answer like nixgold's endpoint
  { printf '>>> %s\n' "$url"; cat; printf '<<<\n'; } >>"$STUB_DIR/reports"; exit 0
fi
src="$STUB_SERVE_DIR/${url##*/}"
[[ -f $src ]] || { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
cp "$src" "$dest"
''',
    "blockdev": r'[[ -e ${2-} ]] && echo 21474836480 || { echo "blockdev: cannot open ${2-}" >&2; exit 1; }',
    "parted": r'disk=$2; : >"${disk}1"; if [[ $* == *" gpt "* ]]; then : >"${disk}2"; fi',
    "nixos-generate-config": r'mkdir -p "$2/etc/nixos"; echo "{ ... }: { }" >"$2/etc/nixos/hardware-configuration.nix"',
    "nixos-install": r'ls "$2/etc/nixos" | tr "\n" " " >"$STUB_DIR/etc-nixos-at-install"',
    "wipefs": "", "udevadm": "", "mkfs.fat": "", "mkfs.ext4": "", "mount": "", "umount": "", "sync": "",
    "reboot": "",
    # cleanup.sh
    "nixos-rebuild": "", "nix-collect-garbage": "", "fstrim": "",
    # `cloud-init status --wait` exits with $STUB_DIR/cloud-init-status-exit when a test writes one
    "cloud-init": r'if [[ ${1-} == status && -f $STUB_DIR/cloud-init-status-exit ]]; then exit "$(cat "$STUB_DIR/cloud-init-status-exit")"; fi',
    # like efivarfs (see _efivarfs_rm): `chattr -i` makes the variable removable
    "chattr": r'if [[ ${1-} == -i && -n ${2-} ]]; then : >"$2.mutable"; fi',
    # like systemd: stopping systemd-random-seed.service saves a seed (its ExecStop), so the file
    # is gone at the end only when the script stops the service before it removes the file
    "systemctl": r'if [[ $* == "stop systemd-random-seed.service" ]]; then echo saved >"$NIXGOLD_TEST_ROOT/var/lib/systemd/random-seed"; fi',
}
# Real tools the scripts may use; anything else is "command not found".
ALLOWED_REAL = ("bash", "date", "mkdir", "install", "cp", "rm", "cat", "sha256sum", "cut", "wc", "mktemp", "sleep",
                "ls", "tr", "chmod", "tee", "tail", "timeout")


def make_stub_bin(root: Path) -> Path:
    bin_dir = root / "stub-bin"
    bin_dir.mkdir()
    for name in ALLOWED_REAL:
        real = shutil.which(name)
        assert real, name
        (bin_dir / name).symlink_to(real)
    for name, body in STUB_COMMANDS.items():
        script = bin_dir / name
        script.write_text(
            "#!/bin/bash\n"
            "set -u\n"
            '{ printf "%s" "${0##*/}"; printf "\\x1f%s" "$@"; printf "\\n"; } >>"$STUB_CALLS"\n'
            'if [[ " ${STUB_FAIL:-} " == *" ${0##*/} "* ]]; then echo "${0##*/}: simulated failure" >&2; exit 1; fi\n'
            + body + "\nexit 0\n")
        script.chmod(0o755)
    return bin_dir


@dataclasses.dataclass
class Report:
    url: str
    headers: dict[str, str]
    body: list[str]


@dataclasses.dataclass
class ScriptRun:
    proc: subprocess.CompletedProcess[str]
    root: Path
    calls: list[list[str]]  # every stub call but the install reports
    reports: list[Report]

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def parse_reports(text: str) -> list[Report]:
    reports = []
    for chunk in re.findall(r"^>>> (.*?)\n(.*?)^<<<$", text, re.M | re.S):
        url, payload = chunk
        head, _, body = payload.partition("\n\n")
        headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
        parsed = parse_report(payload.rstrip("\n"))  # nixgold's endpoint accepts exactly what install.sh sends
        assert (parsed.state, str(parsed.step), parsed.name) == (headers["state"], headers["step"], headers["name"])
        reports.append(Report(url, headers, body.splitlines()))
    return reports


def run_script(script: str, tmp: Path, args: list[str], *, fail: str = "", serve: dict[str, str] | None = None,
               prepare: Any = None, via_stdin: bool = True) -> ScriptRun:
    root = tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("dev", "tmp", "work"):
        (root / sub).mkdir(exist_ok=True)
    stub_dir = tmp / "stubs"
    stub_dir.mkdir(exist_ok=True)
    bin_dir = stub_dir / "stub-bin"
    if not bin_dir.exists():
        make_stub_bin(stub_dir)
    serve_dir = tmp / "serve"
    serve_dir.mkdir(exist_ok=True)
    for name, text in (serve or {}).items():
        (serve_dir / name).write_text(text)
    if prepare:
        prepare(root)
    calls_file = stub_dir / "calls"
    calls_file.write_text("")
    env = {
        "PATH": str(bin_dir), "NIXGOLD_TEST_ROOT": str(root), "STUB_CALLS": str(calls_file),
        "STUB_FAIL": fail, "STUB_SERVE_DIR": str(serve_dir), "STUB_DIR": str(stub_dir),
        "TMPDIR": str(root / "work"), "LC_ALL": "C.UTF-8",
    }
    bash = str(bin_dir / "bash")
    if via_stdin:  # exactly like `curl ... | sudo bash -s -- URL`
        proc = subprocess.run([bash, "-s", "--", *args], input=script, env=env, capture_output=True, text=True,
                              timeout=60)
    else:
        path = tmp / "script.sh"
        path.write_text(script)
        proc = subprocess.run([bash, str(path), *args], env=env, capture_output=True, text=True, timeout=60)
    calls = [line.split("\x1f") for line in calls_file.read_text().splitlines()]
    calls = [c for c in calls if not (c[0] == "curl" and "--data-binary" in c)]
    reports_file = stub_dir / "reports"
    reports = parse_reports(reports_file.read_text()) if reports_file.exists() else []
    reports_file.unlink(missing_ok=True)
    return ScriptRun(proc, root, calls, reports)


URL = "http://10.0.0.5:8802"


def served_files(config: Config) -> tuple[str, dict[str, str]]:
    nixcfg, install, _ = render_all(config)
    return install, {CONFIGURATION_NIX: nixcfg, BUILD_KEY_PUB: BUILD_KEY + "\n"}


def create_serial(root: Path) -> None:
    (root / "dev" / "ttyS0").write_text("")


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("root_login", ROOT_LOGINS)
def test_install_sh_happy_path(firmware: str, root_login: str, tmp_path: Path, nix_env: dict[str, str]) -> None:
    config = make_config({"vm": {"firmware": firmware}, "nixos": {"permit_root_login": root_login},
                          "users": [{"name": "alice", "ssh_keys": [ED25519_KEY]}]})
    install, serve = served_files(config)
    (tmp_path / "root" / "dev").mkdir(parents=True)
    (tmp_path / "root" / "dev" / "sda").write_text("")
    run = run_script(install, tmp_path, [URL + "/"], serve=serve, prepare=create_serial)
    assert run.proc.returncode == 0, run.proc.stderr
    root = run.root
    disk = f"{root}/dev/sda"
    if firmware == "uefi":
        expected = ["curl", "curl", "blockdev", "wipefs", "parted", "udevadm", "mkfs.fat", "mkfs.ext4", "mount",
                    "mount", "nixos-generate-config", "nixos-install", "sync", "umount", "reboot"]
    else:
        expected = ["curl", "curl", "blockdev", "wipefs", "parted", "udevadm", "mkfs.ext4", "mount",
                    "nixos-generate-config", "nixos-install", "sync", "umount", "reboot"]
    assert run.names == expected
    calls = {c[0]: c[1:] for c in reversed(run.calls)}  # first call per name
    assert calls["curl"][-1] == f"{URL}/{BUILD_KEY_PUB}"  # trailing slash of the argument dropped
    assert run.calls[1][-1] == f"{URL}/{CONFIGURATION_NIX}"
    parted = " ".join(calls["parted"])
    if firmware == "uefi":
        assert parted == (f"-s {disk} -- mklabel gpt mkpart ESP fat32 1MiB 513MiB set 1 esp on "
                          "mkpart root ext4 513MiB 100%")
        assert calls["mkfs.fat"] == ["-F", "32", "-n", "BOOT", f"{disk}1"]
        assert calls["mkfs.ext4"] == ["-q", "-F", "-L", "nixos", f"{disk}2"]
        mounts = [c[1:] for c in run.calls if c[0] == "mount"]
        assert mounts == [["-t", "ext4", f"{disk}2", f"{root}/mnt"],
                          ["-t", "vfat", "-o", "fmask=0077,dmask=0077", f"{disk}1", f"{root}/mnt/boot"]]
    else:
        assert parted == f"-s {disk} -- mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on"
        assert calls["mkfs.ext4"] == ["-q", "-F", "-L", "nixos", f"{disk}1"]
        assert calls["mount"] == ["-t", "ext4", f"{disk}1", f"{root}/mnt"]
    assert calls["udevadm"] == ["settle"]
    assert calls["nixos-generate-config"] == ["--root", f"{root}/mnt"]
    assert calls["nixos-install"] == ["--root", f"{root}/mnt", "--no-root-passwd"]
    assert calls["umount"] == ["-R", f"{root}/mnt"]
    # files in the target
    etc = root / "mnt" / "etc" / "nixos"
    assert (etc / CONFIGURATION_NIX).read_text() == serve[CONFIGURATION_NIX]
    ssh_dir = root / "mnt" / "root" / ".ssh"
    assert stat.S_IMODE(ssh_dir.stat().st_mode) == 0o700
    keys = ssh_dir / "authorized_keys"
    assert keys.read_text() == BUILD_KEY + "\n" and stat.S_IMODE(keys.stat().st_mode) == 0o600
    at_install = (tmp_path / "stubs" / "etc-nixos-at-install").read_text().split()
    override = etc / BUILD_OVERRIDE_NIX
    if root_login == "no":
        assert BUILD_OVERRIDE_NIX in at_install  # written BEFORE nixos-install
        shutil.copy(root / "mnt" / "etc" / "nixos" / CONFIGURATION_NIX, tmp_path / "configuration.nix")
        (tmp_path / "hardware-configuration.nix").write_text("{ ... }: { }\n")
        shutil.copy(override, tmp_path / BUILD_OVERRIDE_NIX)
        nix_parse(nix_env, [tmp_path / BUILD_OVERRIDE_NIX])
        main, extra = nix_eval_modules(nix_env, [(tmp_path / "configuration.nix", config.nixos.packages),
                                                 (tmp_path / BUILD_OVERRIDE_NIX, ())])
        assert main["imports"] == ["hardware-configuration.nix", BUILD_OVERRIDE_NIX]
        assert main["services"]["openssh"]["settings"]["PermitRootLogin"] == "no"
        assert extra["services"]["openssh"]["settings"]["PermitRootLogin"] == {
            "_type": "override", "priority": 50, "content": "prohibit-password"}
        assert option_problems(extra, config.nixos.release) == []
    else:
        assert not override.exists() and BUILD_OVERRIDE_NIX not in at_install
    # logging: numbered, timestamped steps on stderr, in the log file and on the serial port
    steps = re.findall(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] nixgold-install: step (\d+)/(\d+): (.*)$",
                       run.proc.stderr, re.M)
    assert [int(n) for n, _, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 10
    assert {int(total) for _, total, _ in steps} == {len(steps)}  # STEPS_TOTAL counts every step
    log = (root / "tmp" / "nixgold-install.log").read_text()
    assert all(f"step {n}/{total}: {name}" in log for n, total, name in steps)
    assert f"step 1/{len(steps)}:" in (root / "dev" / "ttyS0").read_text()
    # reports: every step from the first on (the key names the endpoint), then "finished"
    token = report_token(BUILD_KEY)  # what nixgold's endpoint listens under
    assert {r.url for r in run.reports} == {f"http://10.0.0.5:{config.build.status_port}/install/{token}"}
    states = [(r.headers["state"], int(r.headers["step"]), r.headers["name"]) for r in run.reports]
    assert states[-1][0] == "finished" and states[-1][1] == len(steps)
    assert [(n, name) for state, n, name in states[:-1]] == [(int(n), name) for n, _, name in steps]
    assert all(r.headers["total"] == str(len(steps)) and not r.body for r in run.reports)
    assert (root / "mnt" / "var" / "log" / "nixgold-install.log").exists()


def _install_env(tmp_path: Path, **raw: Any) -> tuple[str, dict[str, str]]:
    (tmp_path / "root" / "dev").mkdir(parents=True, exist_ok=True)
    (tmp_path / "root" / "dev" / "sda").write_text("")
    return served_files(make_config(raw or None))


def test_install_sh_refuses_a_tampered_configuration(tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    serve[CONFIGURATION_NIX] = serve[CONFIGURATION_NIX].replace('PermitRootLogin = "prohibit-password"',
                                                                'PermitRootLogin = "yes"')
    run = run_script(install, tmp_path, [URL], serve=serve)
    assert run.proc.returncode != 0
    assert f"sha256 mismatch for {CONFIGURATION_NIX}" in run.proc.stderr
    assert sha256(serve[CONFIGURATION_NIX]) in run.proc.stderr and "INSTALL FAILED in step 2" in run.proc.stderr
    assert run.names == ["curl", "curl"]  # the key, the configuration; nothing touched the disk
    failed = run.reports[-1]
    assert failed.headers["state"] == "failed" and failed.headers["step"] == "2"
    assert failed.headers["name"] == f"fetch {CONFIGURATION_NIX} and check its sha256"
    assert any("sha256 mismatch" in line for line in failed.body) and len(failed.body) <= 20


@pytest.mark.parametrize("bad_key", ["", "not a key\n", BUILD_KEY + "\n" + BUILD_KEY + "\n",
                                     "-----BEGIN OPENSSH PRIVATE KEY-----\n"])
def test_install_sh_refuses_a_bad_build_key(bad_key: str, tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    serve[BUILD_KEY_PUB] = bad_key
    run = run_script(install, tmp_path, [URL], serve=serve)
    assert run.proc.returncode != 0 and BUILD_KEY_PUB in run.proc.stderr
    assert "blockdev" not in run.names and "parted" not in run.names


def test_install_sh_fails_loudly_when_a_step_fails(tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    run = run_script(install, tmp_path, [URL], serve=serve, fail="mkfs.ext4")
    assert run.proc.returncode != 0
    assert re.search(r"INSTALL FAILED in step \d+ \(create the file systems\): 'mkfs\.ext4 -q -F -L nixos .*"
                     r"exited with 1", run.proc.stderr), run.proc.stderr
    assert run.names[-1] == "mkfs.ext4" and "mount" not in run.names


@pytest.mark.parametrize("missing,step", [(BUILD_KEY_PUB, 1), (CONFIGURATION_NIX, 2)])
def test_install_sh_fails_when_the_http_server_is_missing_a_file(missing: str, step: int, tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    del serve[missing]
    run = run_script(install, tmp_path, [URL], serve=serve)
    assert run.proc.returncode == 22 and f"INSTALL FAILED in step {step}" in run.proc.stderr
    assert "curl" in run.proc.stderr and "parted" not in run.names
    if missing == BUILD_KEY_PUB:
        assert run.reports == []  # the key names the report endpoint: without it nobody hears
    else:
        assert run.reports[-1].headers["state"] == "failed" and run.reports[-1].headers["code"] == "22"
        assert any("404" in line for line in run.reports[-1].body)


def test_install_sh_fails_when_the_disk_is_missing(tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    (tmp_path / "root" / "dev" / "sda").unlink()
    run = run_script(install, tmp_path, [URL], serve=serve)
    assert run.proc.returncode != 0 and "disk " in run.proc.stderr and "not found" in run.proc.stderr
    assert "wipefs" not in run.names


@pytest.mark.parametrize("args", [[], ["ftp://x"], ["http://1.2.3.4:80/x;reboot"], [URL, URL], ["http://a b"]])
def test_install_sh_validates_the_base_url(args: list[str], tmp_path: Path) -> None:
    install, serve = _install_env(tmp_path)
    run = run_script(install, tmp_path, args, serve=serve)
    assert run.proc.returncode == 2 and "usage: install.sh" in run.proc.stderr
    assert run.calls == []


def test_install_sh_partition_names(tmp_path: Path) -> None:
    fn = re.search(r"^partition\(\) \{.*?^\}$", render_all(make_config())[1], re.S | re.M)
    assert fn
    script = fn.group(0) + "\nfor d in /dev/sda /dev/vda /dev/nvme0n1 /dev/mmcblk0; do partition $d 2; done\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10).stdout
    assert out.split() == ["/dev/sda2", "/dev/vda2", "/dev/nvme0n1p2", "/dev/mmcblk0p2"]


def test_truncated_install_sh_runs_nothing(tmp_path: Path) -> None:
    """`curl | bash -s`: bash executes as it reads, so a cut download must be inert."""
    install, serve = _install_env(tmp_path)
    assert install.endswith('\nmain "$@" </dev/null\n')
    last_line_start = install.rindex("\nmain ") + 1
    # every line boundary, the middle of every line, and each prefix of the last line that
    # is shorter than the complete command `main "$@"` (which already holds the whole script)
    cuts = set()
    for match in re.finditer(r"\n", install[:last_line_start]):
        cuts.add(match.start() + 1)
    starts = [0] + sorted(cuts)
    for a, b in zip(starts, starts[1:]):
        cuts.add((a + b) // 2)
    cuts.update(range(last_line_start, last_line_start + len('main "$@')))
    for cut in sorted(cuts):
        run = run_script(install[:cut], tmp_path, [URL], serve=serve)
        assert run.calls == [], f"cut at {cut}: {install[max(0, cut - 40):cut]!r} ran {run.calls}"
        assert not (run.root / "mnt").exists()
    assert len(cuts) > 100


# --- cleanup.sh ------------------------------------------------------------------------------
def _guest_root(root: Path, with_override: bool) -> None:
    files = {
        "etc/ssh/ssh_host_ed25519_key": "secret", "etc/ssh/ssh_host_ed25519_key.pub": "pub",
        "etc/ssh/ssh_host_rsa_key": "secret", "etc/ssh/authorized_keys.d/alice": ED25519_KEY,
        "etc/ssh/sshd_config": "keep", "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "root/.ssh/authorized_keys": BUILD_KEY, "var/lib/systemd/random-seed": "x",
        "etc/systemd/network/10-cloud-init-eth0.network": "[Match]\n",
        "etc/nixos/configuration.nix": "{ }", "etc/hostname": "nixos\n",
    }
    if with_override:
        files[f"etc/nixos/{BUILD_OVERRIDE_NIX}"] = "{ }"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    stc = root / "nix/var/nix/profiles/system/bin/switch-to-configuration"
    stc.parent.mkdir(parents=True)
    stc.write_text('#!/bin/bash\n{ printf "switch-to-configuration"; printf "\\x1f%s" "$@"; echo; } >>"$STUB_CALLS"\n')
    stc.chmod(0o755)


@pytest.mark.parametrize("root_login", ROOT_LOGINS)
def test_cleanup_sh_happy_path(root_login: str, tmp_path: Path) -> None:
    config = make_config({"nixos": {"permit_root_login": root_login}})
    cleanup = render_cleanup_sh(make_inputs(config))
    with_override = root_login == "no"
    run = run_script(cleanup, tmp_path, [], fail="fstrim", prepare=lambda r: _guest_root(r, with_override),
                     via_stdin=False)
    assert run.proc.returncode == 0, run.proc.stderr
    expected = (["nixos-rebuild"] if with_override else []) + [
        "nix-collect-garbage", "switch-to-configuration", "cloud-init", "cloud-init", "systemctl", "fstrim", "sync"]
    assert run.names == expected
    # cloud-init has ended before its state goes (Packer may connect while its last stage still runs)
    assert [c[1:] for c in run.calls if c[0] == "cloud-init"] == [["status", "--wait"], ["clean", "--logs", "--seed"]]
    calls = {c[0]: c[1:] for c in run.calls}
    if with_override:
        assert calls["nixos-rebuild"] == ["boot"]
    assert calls["nix-collect-garbage"] == ["-d"]
    assert calls["cloud-init"] == ["clean", "--logs", "--seed"]
    assert calls["fstrim"] == ["-av"]
    # the seed service is stopped (it saves on stop) before the seed goes: shutdown writes none
    assert calls["systemctl"] == ["stop", "systemd-random-seed.service"]
    root = run.root
    assert not (root / "var/lib/systemd/random-seed").exists()
    assert not (root / "etc/nixos" / BUILD_OVERRIDE_NIX).exists()
    assert (root / "etc/nixos/configuration.nix").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/authorized_keys.d/alice").read_text() == ED25519_KEY  # config users keep keys
    assert (root / "etc/ssh/sshd_config").exists()
    machine_id = root / "etc/machine-id"
    assert machine_id.exists() and machine_id.stat().st_size == 0
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert not (root / "etc/systemd/network/10-cloud-init-eth0.network").exists()
    assert "WARNING: fstrim failed" in run.proc.stderr
    assert not (root / "etc/hostname").exists()  # the build VM's "nixos": clones get their own
    steps = re.findall(r"nixgold-cleanup: step (\d+)/(\d+): ", run.proc.stderr)
    assert len(steps) >= 8 and [int(n) for n, _ in steps] == list(range(1, len(steps) + 1))
    assert {int(total) for _, total in steps} == {len(steps)}
    assert run.reports == []  # cleanup's output goes to Packer, not to the install endpoint


EFI_TOKEN = "sys/firmware/efi/efivars/LoaderSystemToken-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def _efivarfs_rm(tmp: Path) -> None:
    """run_script's stubs for ``tmp``, with an ``rm`` that, like efivarfs, cannot remove a variable
    until ``chattr -i`` (the chattr stub) made it mutable."""
    (tmp / "stubs").mkdir(parents=True)
    bin_dir = make_stub_bin(tmp / "stubs")
    (bin_dir / "rm").unlink()
    (bin_dir / "rm").write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do\n'
        '  if [[ $a == */efivars/* && -e $a && ! -e $a.mutable ]]; then\n'
        '    echo "rm: cannot remove \'$a\': Operation not permitted" >&2; exit 1\n'
        "  fi\n"
        "done\n"
        f'exec {shutil.which("rm")} "$@"\n')
    (bin_dir / "rm").chmod(0o755)


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_cleanup_sh_leaves_no_boot_loader_seed_or_token_in_a_uefi_template(firmware: str, tmp_path: Path) -> None:
    """PVE copies the ESP and the EFI vars disk into every clone: systemd-boot's seed file and the
    system token it hashes with it would be the same in all of them (NIXOS-ASSUMPTIONS.md K12)."""
    cleanup = render_cleanup_sh(make_inputs(make_config({"vm": {"firmware": firmware}})))

    def prepare(root: Path) -> None:
        _guest_root(root, False)
        for rel in ("boot/loader/random-seed", EFI_TOKEN):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"\x06\x00\x00\x00" + bytes(32))

    _efivarfs_rm(tmp_path)
    run = run_script(cleanup, tmp_path, [], prepare=prepare, via_stdin=False)
    assert run.proc.returncode == 0, run.proc.stderr
    token = str(run.root / EFI_TOKEN)
    if firmware == "bios":  # no systemd-boot: nothing of the kind to touch
        assert "chattr" not in run.names and (run.root / "boot/loader/random-seed").exists()
        return
    assert not (run.root / "boot/loader/random-seed").exists() and not (run.root / EFI_TOKEN).exists()
    # efivarfs: the variable is immutable until chattr -i; only then can rm delete it
    assert ["chattr", "-i", token] in run.calls
    assert f"+ chattr -i {token}; rm -f {token}" in run.proc.stderr
    # the last thing before fstrim and sync: nothing after it writes a seed again
    assert run.names[-3:] == ["chattr", "fstrim", "sync"]

    # chattr fails: a warning, the token stays, the seed file is gone all the same
    _efivarfs_rm(tmp_path / "chattr-fails")
    failed = run_script(cleanup, tmp_path / "chattr-fails", [], fail="chattr", prepare=prepare, via_stdin=False)
    assert failed.proc.returncode == 0, failed.proc.stderr
    assert "WARNING: could not remove the EFI variable LoaderSystemToken-" in failed.proc.stderr
    assert (failed.root / EFI_TOKEN).exists() and not (failed.root / "boot/loader/random-seed").exists()
    assert failed.names[-2:] == ["fstrim", "sync"]  # cleanup went on

    # no token (nothing has written one): the seed file goes all the same
    def prepare_without_token(root: Path) -> None:
        prepare(root)
        (root / EFI_TOKEN).unlink()

    _efivarfs_rm(tmp_path / "no-token")
    again = run_script(cleanup, tmp_path / "no-token", [], prepare=prepare_without_token, via_stdin=False)
    assert again.proc.returncode == 0, again.proc.stderr
    assert "chattr" not in again.names and not (again.root / "boot/loader/random-seed").exists()


@pytest.mark.parametrize("status_exit", [1, 2])
def test_cleanup_sh_goes_on_when_cloud_init_ended_with_errors(status_exit: int, tmp_path: Path) -> None:
    """The build VM's cloud-init had no datasource: how it ended does not matter, only that it did."""
    cleanup = render_cleanup_sh(make_inputs(make_config({})))
    (tmp_path / "stubs").mkdir()
    (tmp_path / "stubs" / "cloud-init-status-exit").write_text(f"{status_exit}\n")
    run = run_script(cleanup, tmp_path, [], prepare=lambda r: _guest_root(r, False), via_stdin=False)
    assert run.proc.returncode == 0, run.proc.stderr
    assert f"cloud-init status --wait: exit {status_exit} (1, 2: it ended with errors" in run.proc.stderr
    assert [c[1:] for c in run.calls if c[0] == "cloud-init"] == [["status", "--wait"], ["clean", "--logs", "--seed"]]


def test_cleanup_sh_fails_loudly(tmp_path: Path) -> None:
    cleanup = render_cleanup_sh(make_inputs(make_config({"nixos": {"permit_root_login": "no"}})))
    run = run_script(cleanup, tmp_path, [], fail="nixos-rebuild", prepare=lambda r: _guest_root(r, True),
                     via_stdin=False)
    assert run.proc.returncode == 1
    assert "CLEANUP FAILED in step 1" in run.proc.stderr and "'nixos-rebuild boot' exited with 1" in run.proc.stderr
    assert run.names == ["nixos-rebuild"]
    assert (run.root / "root/.ssh/authorized_keys").exists()  # stopped before anything else


# --- shell static checks -------------------------------------------------------------------------
@needs_shellcheck
def test_scripts_pass_shellcheck_and_bash_n(rendered_matrix: list[dict[str, Any]]) -> None:
    scripts = []
    for case in rendered_matrix:
        if case["release"] == "26.05" and case["rich"]:  # firmware x root login
            scripts += [case["dir"] / "install.sh", case["dir"] / "cleanup.sh"]
    assert len(scripts) == 8
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -Eeuo pipefail" in text
        for disabled in re.finditer(r"^(.*)# shellcheck disable=.*$", text, re.M):  # each needs a reason
            previous = text[: disabled.start()].rstrip("\n").rsplit("\n", 1)[-1]
            assert previous.strip().startswith("#"), f"{script.name}: shellcheck disable without a reason"
    proc = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", *map(str, scripts)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- hostile values ----------------------------------------------------------------------------------
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")


def _public_keys() -> list[str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys = [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()),
            rsa.generate_private_key(public_exponent=65537, key_size=1024)]
    return [k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
            for k in keys]


PUBLIC_KEYS = _public_keys()
HOSTILE = ['"', "\\", "${", "${x}", "$(reboot)", "`reboot`", "<enter>", "''", "'''", "''${", "\\${", "$", "'",
           "\t", "é", "☃", "\u2028", "\x7f", "\x1b[31m", "#", ";", "*/", "/*", "{", "}", "\\n", "%{x}", "{{ x }}"]
comment_text = st.lists(
    st.sampled_from(HOSTILE) | st.text(alphabet=st.characters(blacklist_characters="\n\r\0",
                                                              blacklist_categories=("Cs",)), max_size=6),
    min_size=1, max_size=8).map("".join)


@needs_nix
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comments=st.lists(st.lists(comment_text, min_size=1, max_size=3), min_size=1, max_size=4))
def test_hostile_key_comments_survive_verbatim(comments: list[list[str]], nix_env: dict[str, str],
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """SSH key comments are the free text that reaches configuration.nix: any of them (one
    line, no NUL) must come out of Nix byte for byte, and still be a key for config.py."""
    users = [{"name": f"user{i}", "ssh_keys": [f"{PUBLIC_KEYS[(i + j) % 3]} {c}" for j, c in enumerate(cs)]}
             for i, cs in enumerate(comments)]
    config = make_config({"users": users, "nixos": {"packages": []}})
    tmp = tmp_path_factory.mktemp("hostile")
    path = tmp / CONFIGURATION_NIX
    path.write_text(render_configuration_nix(make_inputs(config)))
    (module,) = nix_eval_modules(nix_env, [(path, ())])  # eval implies parse
    for user in users:
        assert module["users"]["users"][user["name"]]["openssh"]["authorizedKeys"]["keys"] == user["ssh_keys"]
    assert option_problems(module, config.nixos.release) == []


def test_nul_in_a_key_comment_is_refused() -> None:
    # config.py refuses it with the key named; rendering refuses too rather than corrupt.
    with pytest.raises(ConfigError, match=r"users\[0\]\.ssh_keys\[0\].*NUL"):
        make_config({"users": [{"name": "alice", "ssh_keys": [ED25519_KEY + " a\0b"]}]})
    config = dataclasses.replace(make_config(), users=(UserSettings(name="alice", ssh_keys=(ED25519_KEY + " a\0b",)),))
    with pytest.raises(RenderError, match="NUL"):
        render_configuration_nix(make_inputs(config))


VALIDATED = {
    # config key -> (how to put a value in the raw config, a valid value)
    "nixos.locale": (lambda v: {"nixos": {"locale": v}}, "en_US.UTF-8"),
    "nixos.timezone": (lambda v: {"nixos": {"timezone": v}}, "Europe/Berlin"),
    "nixos.keymap": (lambda v: {"nixos": {"keymap": v}}, "de"),
    "nixos.packages[0]": (lambda v: {"nixos": {"packages": [v]}}, "python3Packages.requests"),
    "nixos.release": (lambda v: {"nixos": {"release": v}}, "25.11"),
    "nixos.permit_root_login": (lambda v: {"nixos": {"permit_root_login": v}}, "no"),
    "users[0].name": (lambda v: {"users": [{"name": v}]}, "alice"),
    "users[0].groups[0]": (lambda v: {"users": [{"name": "alice", "groups": [v]}]}, "video"),
}
HOSTILE_IN_VALIDATED = ['"', "\\", "${", "$(x)", "`x`", "<enter>", " ", ";", "é", "\t", "\n", "{", "}", "#", "/*"]


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(VALIDATED)), frag=st.sampled_from(HOSTILE_IN_VALIDATED),
       cut=st.integers(min_value=0, max_value=30), tail=st.sampled_from(["", "x", "''", "${a}"]))
def test_hostile_values_in_validated_fields_are_rejected(key: str, frag: str, cut: int, tail: str) -> None:
    build, valid = VALIDATED[key]
    value = valid[:cut] + frag + valid[cut:] + tail
    with pytest.raises(ConfigError) as info:
        parse_config(build(value))
    assert any(issue.key.startswith(key) for issue in info.value.issues), str(info.value)


@pytest.mark.parametrize("key", sorted(set(VALIDATED) - {"nixos.permit_root_login"}))  # that one is an enum
def test_trailing_newline_is_rejected(key: str) -> None:
    build, valid = VALIDATED[key]
    with pytest.raises(ConfigError):
        parse_config(build(valid + "\n"))


@needs_nix
def test_values_config_lets_through_are_still_escaped(tmp_path: Path, nix_env: dict[str, str]) -> None:
    """Defence in depth: even values config.py would refuse keep the output valid."""
    base = make_config()
    config = dataclasses.replace(base, nixos=dataclasses.replace(
        base.nixos, keymap="de\n", locale='en"${x}', timezone="UTC\\", packages=()),
        users=(UserSettings(name="alice\n", ssh_keys=(ED25519_KEY,)),))
    path = tmp_path / CONFIGURATION_NIX
    path.write_text(render_configuration_nix(make_inputs(config)))
    (module,) = nix_eval_modules(nix_env, [(path, ())])
    assert module["console"]["keyMap"] == "de\n"
    assert module["i18n"]["defaultLocale"] == 'en"${x}' and module["time"]["timeZone"] == "UTC\\"
    assert "alice\n" in module["users"]["users"]
