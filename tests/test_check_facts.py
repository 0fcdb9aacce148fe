"""nixgold.verify.checks.facts: the probes declared by the check modules, gathered in one command,
answer exactly what each command run on its own answers (exit status, stdout, stderr, bytes and
all); what did not come back runs on its own; root's answers never leave the process; the
cross-clone checks answer from an earlier run's facts without connecting. Against this machine
(testinfra's local backend), no guest needed."""
from __future__ import annotations

import base64
import io
import shlex
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import testinfra

from nixgold.verify.checks import CHECKS_DIR, CloneTarget, run_checks
from nixgold.verify.checks.facts import EXTRA_PATH, Answer, FactStore, Probe, command_line, gather_script, \
    parse_gathered, plain_words, run_probe
from nixgold.verify.checks.helpers import glob_covers, sshd_dump
from tests.test_checks_runner import ctx_for

PROBES = [
    Probe("echo out; echo err >&2; exit 3"),
    Probe("printf 'a\\000b\\377'"),  # NUL and a byte that is not UTF-8
    Probe("true"),  # no output at all
    Probe("sleep 5", timeout=1),  # the guest-side timeout: exit 124
    Probe("""printf '%s|' "it's" '$HOME' "a\\"b" """),  # quotes and a dollar that must stay literal
    Probe("echo $((6 * 7))", as_root=True),  # through sudo -n (absent here: its own failure)
    Probe("cat /proc/cmdline"),
    Probe("echo -e x"),  # a builtin: the shell's echo, not coreutils'
    Probe("ls -d / /no-such-dir"),  # a plain command (no shell): both outputs and exit 2
]


@pytest.fixture
def local() -> Any:
    return testinfra.get_host("local://")


def test_gathered_answers_are_what_each_command_answers_on_its_own(local):
    store = FactStore()
    t0 = time.monotonic()
    assert store.gather(local, PROBES + PROBES[:2]) == len(PROBES)  # repeats run once
    assert time.monotonic() - t0 < 5  # the timeout probe stopped at 1 s
    for probe in PROBES:
        alone = local.run(command_line(probe))
        got = store.answer(local, probe)
        assert got is not None, probe
        assert (got.rc, got.stdout, got.stderr) == (alone.rc, alone.stdout_bytes, alone.stderr_bytes), probe
    assert store.answer(local, PROBES[0]).rc == 3 and store.answer(local, PROBES[3]).rc == 124
    assert store.answer(local, PROBES[1]).stdout == b"a\x00b\xff"


def test_run_answers_from_the_facts_and_asks_the_rest_over_the_connection(local, monkeypatch):
    class Counting:
        """The local host, counting what goes over the connection."""

        def __init__(self, host: Any):
            self.host, self.backend, self.sent = host, host.backend, []

        def run(self, command: str) -> Any:
            self.sent.append(command)
            return self.host.run(command)

    host = Counting(local)
    store = FactStore()
    monkeypatch.setattr("nixgold.verify.checks.facts.STORE", store)
    store.gather(host, PROBES[:3])
    assert len(host.sent) == 1  # one command for all of them
    result = run_probe(host, PROBES[0])
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n") and result.failed
    assert len(host.sent) == 1 and store.one_by_one(host) == []
    assert run_probe(host, PROBES[6]).stdout == Path("/proc/cmdline").read_text()  # not gathered
    assert host.sent[-1] == command_line(PROBES[6]) and store.one_by_one(host) == ["cat /proc/cmdline"]


def _archive_line(files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"NGFACTS {base64.b64encode(buf.getvalue()).decode()} ."


def test_a_lost_or_garbled_answer_is_asked_again_on_its_own(local):
    probes = [Probe("echo one"), Probe("echo two"), Probe("echo three")]
    whole = local.run(gather_script(probes)).stdout
    assert set(parse_gathered(whole, probes)) == set(probes)
    assert parse_gathered("noise from a login script\n" + whole + "more noise\n", probes)[probes[1]].stdout == b"two\n"
    line = whole.strip("\n")
    tag, blob, end = line.split(" ")
    cut = base64.b64encode(base64.b64decode(blob)[:700]).decode()  # the archive ends inside a member
    for broken in (line,  # the last line, without its newline: cut off
                   f"{tag} {blob}\n",  # no end mark
                   f"{tag} {blob[:-7]} .\n",  # cut inside the base64
                   f"{tag} not-base64! .\n",
                   f"{tag} {cut} .\n",
                   f"{tag} {base64.b64encode(b'not a tar archive' * 40).decode()} .\n"):
        assert parse_gathered(broken, probes) == {}, broken[:40]
    # an answer without its exit status, or with a garbled one, or without one of its outputs: asked again
    partial = _archive_line({"0.r": b"0\n", "0.o": b"one\n", "0.e": b"", "1.o": b"two\n", "1.e": b"",
                             "2.r": b"zero\n", "2.o": b"three\n", "2.e": b"", "9.r": b"0\n"})
    answers = parse_gathered(partial + "\n", probes)
    assert answers == {probes[0]: Answer(0, b"one\n", b"")}
    assert parse_gathered(_archive_line({"0.r": b"0\n", "0.e": b""}) + "\n", probes) == {}


def test_a_command_killed_by_a_signal_is_asked_again_on_its_own(local, tmp_path):
    """Gathered, the shell turns a signal death into 128+N; alone, the command (exec'd by the
    login shell) dies with its signal and SSH says so differently: that answer is not kept."""
    crash = tmp_path / "crash"
    crash.write_text("#!/bin/sh\necho before\nkill -SEGV $$\n")
    crash.chmod(0o755)
    probes = [Probe(str(crash)), Probe("sleep 5", timeout=1), Probe("echo fine")]
    assert plain_words(probes[0].command) is not None
    answers = parse_gathered(local.run(gather_script(probes)).stdout_bytes, probes)
    assert answers == {probes[1]: Answer(124, b"", b""), probes[2]: Answer(0, b"fine\n", b"")}
    assert parse_gathered(_archive_line({"0.r": b"137\n", "0.o": b"", "0.e": b""}) + "\n", probes) == {}


TOOLS = ("base64", "mktemp", "tar")


@pytest.mark.parametrize("missing", TOOLS)
def test_a_guest_without_base64_mktemp_or_tar_never_answers_wrong(local, missing):
    """The real script with the tool gone: no answers at all (never an empty one in their place:
    each check then runs its own command)."""
    probes = [Probe("hostname"), Probe("echo oops >&2"), Probe("true")]
    script = gather_script(probes).replace(f"{missing} -", f"no-such-{missing} -")
    assert f"no-such-{missing}" in script and all(f"no-such-{t}" not in script for t in TOOLS if t != missing)
    assert parse_gathered(local.run(script).stdout_bytes, probes) == {}


def test_a_plain_command_runs_without_a_shell_and_answers_as_through_one(local):
    """One program with literal words runs under ``timeout`` directly (one process less on the
    guest); what needs the shell (a builtin, a quote, an expansion, a pipe, root) still goes through
    /bin/sh -c, and the answers are the same either way."""
    def through_sh(probe: Probe) -> str:
        return (f"export PATH={EXTRA_PATH}:\"$PATH\"; timeout -k 5 {probe.timeout} /bin/sh -c "
                f"{shlex.quote(f'export PATH={EXTRA_PATH}:{chr(34)}$PATH{chr(34)}; {probe.command}')}")

    plain = [Probe("cat /proc/cmdline"), Probe("ls -d / /no-such-dir"), Probe("stat -c %s:%U /etc/hostname"),
             Probe("env -u HOME id -un"), Probe("sleep 5", timeout=1)]
    for probe in plain:
        assert plain_words(probe.command) is not None, probe
        assert "/bin/sh" not in command_line(probe)
        direct, shelled = local.run(command_line(probe)), local.run(through_sh(probe))
        assert (direct.rc, direct.stdout_bytes, direct.stderr_bytes) == \
            (shelled.rc, shelled.stdout_bytes, shelled.stderr_bytes), probe
    for command in ("echo -e x", "test -e /", "true", "command -v ls", "cd /tmp", "FOO=1 env", "cat /etc/host*",
                    "echo $HOME", "echo 'a b'", "ls | wc -l", "ls; ls", "ls >/dev/null", "~/bin/x", "ls ~",
                    "if true", "a\\b", "ls\nid", "cat\u00a0/proc/cmdline", "cat\x0b/proc/cmdline", "shopt -q extglob",
                    "pushd /tmp", "chdir /tmp", "coproc ls", "ls =ls", "[ -e / ]", "time ls"):
        assert plain_words(command) is None, command
        assert "/bin/sh -c" in command_line(Probe(command)), command
    assert "/bin/sh -c" in command_line(Probe("cat /proc/cmdline", as_root=True))  # sudo resets PATH
    assert plain_words(" cat\t/proc/cmdline  -A ") == ["cat", "/proc/cmdline", "-A"]
    shell_words = subprocess.run(["bash", "-c", "compgen -b; compgen -k"], capture_output=True, text=True,
                                 check=True).stdout.split()
    assert [w for w in shell_words if plain_words(f"{w} x") is not None] == []  # bash: NixOS's /bin/sh
    # builtins differ from the program of the same name: the shell's echo is what the check meant
    assert local.run(command_line(Probe("echo -e x"))).stdout == local.run("echo -e x").stdout
    # a program that is not there: exit 127 either way (the message is timeout's, not the shell's)
    missing = Probe("no-such-program --flag")
    assert local.run(command_line(missing)).rc == local.run(through_sh(missing)).rc == 127


def test_bad_probes_are_left_out_and_said(tmp_path):
    """A site's module (verify.checks_dir) declaring nonsense: the rest is still gathered, the
    bad ones are said in the run's warnings, and its checks still run."""
    (tmp_path / "test_site.py").write_text("""
from nixgold.verify.checks.facts import Probe

def probes(ctx):
    return [Probe(["echo"]), Probe("hostname", timeout="x"), "uname", Probe("uname -r")]

def test_site(host):
    assert run(host, "uname -r").rc == 0
""".replace("from nixgold", "from nixgold.verify.checks.helpers import run\nfrom nixgold", 1))
    (tmp_path / "test_raises.py").write_text("def probes(ctx):\n    raise RuntimeError('boom')\n\n"
                                             "def test_other(host):\n    pass\n")
    run = run_checks(ctx_for("a"), [tmp_path], scope="clone")
    assert run.one_by_one == {"a": []}  # the valid one and everybody else's: from the gathered facts
    assert any(r.id == "site.site" and r.outcome == "passed" for r in run.results)
    assert any(r.id == "raises.other" and r.outcome == "passed" for r in run.results)
    assert "test_site.probes(): left out a probe (its command is not a non-empty string): that command runs on its " \
           "own" in run.warnings
    assert "test_site.probes(): left out a probe (timeout is not a positive whole number of seconds: 'x'): that " \
           "command runs on its own" in run.warnings
    assert "test_site.probes(): left out a probe (not a Probe: str): that command runs on its own" in run.warnings
    assert "test_raises.probes() failed (RuntimeError: boom): its checks ran their commands one by one" in run.warnings


def test_root_answers_stay_in_the_process(local):
    store = FactStore()
    mine, roots = Probe("echo mine"), Probe("echo roots", as_root=True)
    store.gather(local, [mine, roots])
    exported = store.export(local, [mine, roots])
    assert [e["command"] for e in exported] == ["echo mine"]
    assert store.export(local, []) == []  # only what is asked for
    other = FactStore()
    other.load(local, exported)
    assert other.answer(local, mine).stdout == b"mine\n"
    assert other.answer(local, roots) is None


def test_every_command_of_a_clone_run_comes_from_its_facts():
    """The suite against this machine: one gathering command, nothing asked one by one; handed on
    are only the answers the checks across clones ask for (user-level: no root answer leaves)."""
    from nixgold.verify.checks.test_hygiene import HOST_KEYS, MACHINE_ID

    run = run_checks(ctx_for("a"), scope="clone")
    assert run.one_by_one == {"a": []}
    assert set(run.gather_seconds) == {"a"} and run.warnings == []
    assert {e["command"] for e in run.facts["a"]} == {MACHINE_ID, HOST_KEYS}


def test_the_cross_clone_checks_answer_from_the_facts_without_connecting(tmp_path):
    """Clone runs on this machine hand their facts on; the cross run's clones point at an address
    where nothing listens, so any connection would fail (see test_an_unreachable_clone_...)."""
    facts = {}
    for name in ("a", "b"):
        facts.update(run_checks(ctx_for(name), scope="clone").facts)
    unreachable = tuple(CloneTarget(vmid=100 + i, name=n, node="pve", address="127.0.0.1", ssh_user="nobody",
                                    ssh_key_file=tmp_path / "no-key", disk_bytes=0) for i, n in enumerate("ab"))
    ctx = ctx_for(clones=unreachable, connection="paramiko")
    run = run_checks(ctx, [], scope="cross", facts=facts)
    table = {r.id: r for r in run.results}
    assert set(table) == {"hygiene.machine-id", "hygiene.host-keys"}
    machine_id = Path("/etc/machine-id").read_text().strip()
    assert table["hygiene.machine-id"].outcome == "failed"  # both "clones" are this machine
    assert table["hygiene.machine-id"].reason == f"a, b share machine-id {machine_id} (baked into the image)"
    without = run_checks(ctx, [], scope="cross")
    assert {r.outcome for r in without.results} == {"error"}
    assert all("no SSH connection to nobody@127.0.0.1" in r.reason for r in without.results)


def test_module_probes_are_declared_next_to_the_checks():
    from nixgold.verify.checks import test_nixos, test_sshd

    assert test_nixos.probes(ctx_for("a", profile="generic")) == []
    assert Probe(test_nixos.VERSION) in test_nixos.probes(ctx_for("a", profile="nixos"))
    assert Probe(sshd_dump("root")) in test_sshd.probes(ctx_for("a"))
    assert sorted(p.name for p in CHECKS_DIR.glob("test_*.py")) == sorted(
        f"{m}.py" for m in ("test_agent", "test_cloud_init", "test_console", "test_disk", "test_hygiene",
                            "test_identity", "test_nixos", "test_sshd"))


def test_listening_sockets_and_key_file_globs():
    """The port-22 rule is testinfra's (modules/socket.py is_listening for tcp://22): a socket on
    every IPv6 address; IPv4-only or loopback-only is not enough."""
    from nixgold.verify.checks.test_sshd import listening_addresses, listens_everywhere

    dual = "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*\n"
    assert listens_everywhere(dual, 22) and listening_addresses(dual, 22) == {"0.0.0.0", "::"}
    assert listens_everywhere("LISTEN 0 4096 *:22 *:*", 22)
    assert not listens_everywhere("LISTEN 0 128 0.0.0.0:22 0.0.0.0:*", 22)
    assert not listens_everywhere("LISTEN 0 128 127.0.0.1:22 0.0.0.0:*\nLISTEN 0 128 [::1]:22 [::]:*", 22)
    assert listening_addresses("LISTEN 0 128 0.0.0.0:2222 0.0.0.0:*", 22) == set()
    assert glob_covers("/home/*/.ssh/authorized_keys*", "/home/nixgold/.ssh/authorized_keys")
    assert not glob_covers("/home/*/.ssh/authorized_keys*", "/home/a/b/.ssh/authorized_keys")  # * is one segment
    assert not glob_covers("/etc/ssh/authorized_keys.d/*", "/etc/ssh/authorized_keys.d/.hidden")
    assert not glob_covers("/root/.ssh/authorized_keys*", "/var/lib/nixgold/.ssh/authorized_keys")


class _Answering:
    """A host whose every command answers ``rc`` and ``stdout`` (and records the command)."""

    def __init__(self, rc: int, stdout: str):
        self.rc, self.stdout, self.commands = rc, stdout, []

    def run(self, command: str) -> Any:
        self.commands.append(command)
        return type("Result", (), {"rc": self.rc, "stdout": self.stdout})()


#: `systemctl show -p Id -p LoadState -p ActiveState -p SubState -p UnitFileState sshd.service
#: ssh.service` on the Debian 12 stand-in (systemd 252): sshd.service is an alias of ssh.service
#: there, a name that does not exist prints its block too (LoadState=not-found, exit 0).
SHOW_TWO = ("Id=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
            "Id=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n")
SHOW_MISSING_FIRST = ("Id=sshd.socket\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n\n"
                      "Id=ssh.socket\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nUnitFileState=disabled\n")
SHOW_FIRST_ONLY = ("Id=qemu-guest-agent.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
                   "UnitFileState=enabled\n\nId=qemu-ga.service\nLoadState=not-found\nActiveState=inactive\n"
                   "SubState=dead\nUnitFileState=\n")
SHOW_BOTH_DIFFER = ("Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
                    "Id=b.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nUnitFileState=disabled\n")
SHOW_NONE = ("Id=a.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n\n"
             "Id=b.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n")


@pytest.mark.parametrize("rc, stdout, names, expected", [
    (0, SHOW_TWO, ("sshd.service", "ssh.service"), {"Id": "ssh.service", "UnitFileState": "enabled"}),
    (0, SHOW_MISSING_FIRST, ("sshd.socket", "ssh.socket"), {"Id": "ssh.socket", "UnitFileState": "disabled"}),
    (0, SHOW_FIRST_ONLY, ("qemu-guest-agent.service", "qemu-ga.service"),
     {"Id": "qemu-guest-agent.service", "ActiveState": "active"}),
    (0, SHOW_BOTH_DIFFER, ("a.service", "b.service"), {"Id": "a.service", "UnitFileState": "enabled"}),
    (0, SHOW_NONE, ("a.service", "b.service"), {}),
    (1, SHOW_TWO, ("sshd.service", "ssh.service"), {}),  # systemctl failed: nothing is known
])
def test_systemd_unit_asks_once_for_all_names_and_takes_the_first_loaded(rc, stdout, names, expected):
    from nixgold.verify.checks.helpers import systemd_unit, unit_probes, unit_show

    host = _Answering(rc, stdout)
    props = systemd_unit(host, *names)
    assert {k: props[k] for k in expected} == expected and bool(props) == bool(expected)
    assert host.commands == [command_line(Probe(unit_show(*names)))]  # one command for every name
    assert unit_probes(*names) == [Probe(unit_show(*names))]  # what the modules declare is that command
    assert unit_show(*names).endswith(" ".join(names))
