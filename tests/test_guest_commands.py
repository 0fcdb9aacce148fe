"""Commands exist where they run: every command the rendered guest scripts can run is on PATH there.

* ``install.sh`` runs on the NixOS minimal installer ISO (the live system);
* ``cleanup.sh`` runs over SSH on the installed system;
* the verify check suite's probes (``nixgold/verify/checks``) run over SSH on a clone of it.

What is on PATH in each place is ``tests/fixtures/nixos-path.json``, read from nixpkgs with the
source line of every package (see ``tests/fixtures/nixos-path.md``): system-path.nix's required
(``corePackageNames``) and default packages, what the modules nixgold's configuration.nix enables
add, and for the ISO the installer profiles (installation-cd-minimal.nix, installation-cd-base.nix,
installation-device.nix, profiles/base.nix) and the installer tools. On top of that the installed
system has the ``environment.systemPackages`` of the rendered configuration.nix itself, taken
from evaluating it with ``nix-instantiate``. Commands are read statically from the scripts
(tests/helpers/shell_commands.py: bash's own parse, every branch, not only the ones a test runs).

Two rules keep the ISO list honest where the index holds only some copies of a file: a command
from profiles/base.nix counts only if every copy read has its package (``jq`` is only in the
newest one), and packages only the newest installation-device.nix adds (rsync, git) do not count.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nixgold.render import guest_files
from nixgold.config.model import Config
from nixgold.config.load import parse_config
from nixgold.render.guest_files import (
    TEMPLATE_PACKAGES,
    render_cleanup_sh,
    render_configuration_nix,
    render_install_sh,
)
from nixgold.render.inputs import RenderInputs
from tests.helpers.nix import nix_eval_modules
from tests.helpers.shell_commands import ShellParseError, script_commands

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "nixos-path.json").read_text())
#: Command words that are expansions, each with why it exists where it runs.
DYNAMIC = {
    "$@": "run()'s own call of its arguments (the command named there is checked as run's argument)",
    "${SYSTEM_PROFILE}/bin/switch-to-configuration":
        "every NixOS system profile has bin/switch-to-configuration (nixos/modules/system/activation/top-level.nix "
        "builds it into the system derivation); cleanup.sh only calls it after testing it is executable",
}


def _commands_of(packages: list[dict[str, Any]]) -> dict[str, str]:
    return {cmd: p["name"] for p in packages for cmd in p.get("provides", [])}


def installed_commands(system_packages: list[str], firmware: str) -> dict[str, str]:
    """command -> what provides it, on the installed system of this configuration.nix."""
    section = FIXTURE["installed"]
    found = _commands_of(section["packages"])
    for key, entry in FIXTURE["module_additions"].items():
        if key.startswith("boot.loader.grub") and firmware != "bios":
            continue  # configuration.nix enables GRUB only for BIOS templates
        for cmd in entry.get("provides", []):
            found.setdefault(cmd, key)
    for name in system_packages:  # the rendered configuration.nix's environment.systemPackages
        for cmd in FIXTURE["package_commands"].get(name, []):
            found.setdefault(cmd, f"pkgs.{name} (configuration.nix)")
    return found


def iso_commands() -> dict[str, str]:
    """command -> what provides it, on the minimal installer ISO (every supported release)."""
    section = FIXTURE["installer_iso"]
    older_base = set(section["profiles_base_nix_older_copy"]["packages"])
    kept = []
    for package in section["packages"]:
        added_by = str(package.get("added_by"))
        if "newest copy only" in added_by:
            continue
        if added_by == "profiles/base.nix" and package["name"] not in older_base:
            continue
        kept.append(package)
    return _commands_of(kept)


def builtins() -> set[str]:
    return set(FIXTURE["installed"]["bash_builtins"]) | set(FIXTURE["installed"]["bash_keywords"])


def missing(script: str, available: dict[str, str]) -> list[str]:
    found = script_commands(script)
    known = builtins() | found.functions | set(available)
    problems = [f"{cmd}: not on PATH there" for cmd in sorted(found.commands - known)]
    problems += [f"{word}: a computed command nobody vouched for" for word in sorted(found.dynamic - set(DYNAMIC))]
    return problems


def inputs_for(raw: dict[str, Any]) -> RenderInputs:
    return RenderInputs(config=parse_config(raw), dialect="plugin", boot_command=(), manifest={}, iso=None)


def rendered(raw: dict[str, Any]) -> tuple[str, str, str]:
    inputs = inputs_for(raw)
    nixcfg = render_configuration_nix(inputs)
    return nixcfg, render_install_sh(inputs, hashlib.sha256(nixcfg.encode()).hexdigest()), render_cleanup_sh(inputs)


def system_packages(nixcfg: str, config: Config, nix_env: dict[str, str], tmp: Path) -> list[str]:
    """environment.systemPackages of the rendered configuration.nix, by evaluating it."""
    path = tmp / "configuration.nix"
    path.write_text(nixcfg)
    (module,) = nix_eval_modules(nix_env, [(path, (*TEMPLATE_PACKAGES, *config.nixos.packages))])
    return [p["_stubPackage"] for p in module["environment"]["systemPackages"]]


VARIANTS = [
    pytest.param({"vm": {"firmware": fw}, "nixos": {"permit_root_login": rl}}, id=f"{fw}-{rl}")
    for fw in ("uefi", "bios") for rl in ("prohibit-password", "no")
]


@pytest.mark.parametrize("raw", VARIANTS)
def test_every_command_exists_where_it_runs(raw: dict[str, Any], nix_env: dict[str, str], tmp_path: Path) -> None:
    nixcfg, install, cleanup = rendered(raw)
    config = parse_config(raw)
    assert missing(install, iso_commands()) == []
    packages = system_packages(nixcfg, config, nix_env, tmp_path)
    assert "cloud-init" in packages  # what makes cleanup.sh's `cloud-init clean` possible
    assert missing(cleanup, installed_commands(packages, config.vm.firmware)) == []


def test_cloud_init_clean_without_the_package_fails(monkeypatch: pytest.MonkeyPatch, nix_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """The defect this guard exists for: nixpkgs' cloud-init.nix puts cloud-init only on its
    units' path (``path = with pkgs; [ cloud-init ... ]``), not in environment.systemPackages."""
    monkeypatch.setattr(guest_files, "TEMPLATE_PACKAGES", ())
    nixcfg, _, cleanup = rendered({})
    packages = system_packages(nixcfg, parse_config({}), nix_env, tmp_path)
    assert "cloud-init" not in packages
    assert missing(cleanup, installed_commands(packages, "uefi")) == ["cloud-init: not on PATH there"]


@pytest.mark.parametrize("line", [
    "run jq . \"$f\"",
    "x=$(jq -r .a <\"$f\")",
    "printf '%s' \"$x\" | jq .",
    "if jq -e . \"$f\" >/dev/null; then log ok; fi",
    "log \"$(jq .b \"$f\")\"",
])
def test_a_command_missing_on_the_iso_fails(line: str) -> None:
    """jq is in the newest profiles/base.nix only (not in the older copy read), so install.sh
    must not count on it; the same for any command the ISO lacks, wherever it hides."""
    _, install, _ = rendered({})
    broken = install.replace('  step "check the disk ${DISK}"\n', f"  {line}\n" + '  step "check the disk ${DISK}"\n')
    assert broken != install
    assert missing(broken, iso_commands()) == ["jq: not on PATH there"]


def test_a_command_only_the_iso_has_fails_in_cleanup() -> None:
    """parted is on the ISO (profiles/base.nix) but not on the installed system."""
    _, _, cleanup = rendered({})
    broken = cleanup.replace('  step "sync"\n', '  run parted -s /dev/sda print\n  step "sync"\n')
    assert missing(broken, installed_commands(["cloud-init"], "uefi")) == ["parted: not on PATH there"]


def test_an_unvouched_computed_command_fails() -> None:
    _, install, _ = rendered({})
    broken = install.replace('  step "check the disk ${DISK}"\n', '  "${MNT}/bin/tool" --x\n  step "check the disk ${DISK}"\n')
    assert missing(broken, iso_commands()) == ["${MNT}/bin/tool: a computed command nobody vouched for"]


def test_the_typed_line_uses_only_what_the_live_shell_has() -> None:
    """The boot_command's line runs in the ISO's autologin shell: curl, sudo and bash."""
    from nixgold.render.boot_command import install_steps
    from nixgold.bootcmd.steps import TypeText

    text = "".join(s.text for s in install_steps(parse_config({})) if isinstance(s, TypeText))
    line = text.replace("$u", '"$u"')
    script = "main() {\n" + line + "\n}\nmain \"$@\" </dev/null\n"
    found = script_commands(script)
    assert found.commands == {"curl", "sudo", "bash"}
    assert set(found.commands) <= set(iso_commands()) | {"sudo"}
    assert "sudo" in iso_commands()  # security.sudo is on by default (sudo.nix); the ISO's user is in wheel


def check_suite_script(profile: str = "nixos") -> str:
    """Every probe the check modules declare, as the one command that gathers them, plus each
    probe's own command (what its ``/bin/sh -c`` runs), in the extractor's main() shape."""
    from nixgold.verify.checks import CHECKS_DIR
    from nixgold.verify.checks.facts import gather_script

    ctx = SimpleNamespace(ciuser="nixgold", profile=profile)
    probes = []
    for path in sorted(CHECKS_DIR.glob("test_*.py")):
        module = importlib.import_module(f"nixgold.verify.checks.{path.stem}")
        probes += module.probes(ctx)
    body = gather_script(probes) + "\n".join(p.command for p in probes)
    return "main() {\n" + body + "\n}\nmain \"$@\" </dev/null\n"


def absolute_paths() -> dict[str, str]:
    return {e["path"]: e["basis"] for e in FIXTURE["installed"]["also_present"]}


def test_the_check_suites_commands_exist_on_the_installed_system(nix_env: dict[str, str], tmp_path: Path) -> None:
    nixcfg, _, _ = rendered({})
    packages = system_packages(nixcfg, parse_config({}), nix_env, tmp_path)
    script = check_suite_script()
    assert {"cloud-init", "sshd", "base64", "tar", "mkdir", "/bin/sh", "nixos-version"} <= script_commands(script).commands
    assert missing(script, {**installed_commands(packages, "uefi"), **absolute_paths()}) == []


def test_a_check_suite_command_missing_on_the_installed_system_fails(nix_env: dict[str, str], tmp_path: Path) -> None:
    """jq is not on the installed system: a probe that needs it is caught."""
    nixcfg, _, _ = rendered({})
    packages = system_packages(nixcfg, parse_config({}), nix_env, tmp_path)
    broken = check_suite_script().replace("ss -Htln", "ss -Htln | jq -R .")
    assert missing(broken, {**installed_commands(packages, "uefi"), **absolute_paths()}) == ["jq: not on PATH there"]


# --- the extractor itself ---------------------------------------------------------------------------
def test_extractor_reads_every_kind_of_command_position() -> None:
    script = r'''#!/usr/bin/env bash
f() {
  local a
  a=$(one "$(two)")
  three | four && five || six
  if seven; then eight; elif nine; then :; else ten; fi
  while eleven; do twelve; done
  for x in not-a-command; do thirteen "$x"; done
  case "$1" in
    pat1) fourteen ;;
    *[0-9]) fifteen ;;
  esac
  [[ -n $(sixteen) && $a == x ]]
  ((a + 1))
  run seventeen --flag
  sudo -n eighteen
  X=1 nineteen 2>/dev/null >&2 </dev/null
  cat <<EOF >/dev/null
not-a-command here
EOF
  twenty < <(twentyone)
  trap 'twentytwo $?' ERR
  echo "`twentythree`"
}
main() { f; }
main "$@" </dev/null
'''
    found = script_commands(script)
    expected = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                "thirteen", "fourteen", "fifteen", "sixteen", "run", "seventeen", "sudo", "eighteen", "nineteen",
                "cat", "twenty", "twentyone", "twentytwo", "twentythree", "local", "trap", "echo", ":", "f"}
    assert found.commands == expected
    assert found.functions == {"f", "main"}


def test_extractor_refuses_a_script_it_cannot_read() -> None:
    with pytest.raises(ShellParseError):
        script_commands("main() {\n  echo hi\n}\n")  # no main call as the last line
    with pytest.raises(ShellParseError):
        script_commands("f() {\n  echo 'x\n}\nmain \"$@\"\n")  # bash refuses it
