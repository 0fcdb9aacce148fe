"""Guest facts gathered in one SSH command per clone, then served to the checks' ``run()`` calls.

A check module says which commands its checks run, next to the checks::

    CMDLINE = "cat /proc/cmdline"

    def probes(ctx):
        return [Probe(CMDLINE)]

    def test_serial_console(host):
        cmdline = run(host, CMDLINE).stdout.split()

Before the first check on a clone, the plugin sends every probe of the selected check modules as
one shell script (:func:`gather_script`): each probe runs exactly the command ``run()`` would
send (:func:`command_line`: PATH, guest-side ``timeout``, ``sudo -n`` for root), in the modules'
order (the same order the checks ran in one by one: the cloud-init wait comes before the hostname,
user and key checks), its exit status, stdout and stderr kept apart in files. One ``tar`` of those
files, base64-encoded, comes back as one line; ``run()`` then answers from that store, so a
check's result and failure message are what its own command would have given. A command nobody
declared, or one whose answer did not come back whole (no ``mktemp``, ``tar`` or ``base64`` on the
guest, a cut connection: the answers count only when their line ends with the end mark and the
archive reads), runs over SSH as before. Nothing here waits on the guest for more than the probes'
own timeouts.

Each probe costs the guest as few processes as keep it exact, since under emulation (TCG) every
process start counts: a probe whose command is one plain command (literal words, not a shell
builtin, not as root) runs under ``timeout`` directly instead of through ``/bin/sh -c`` (the same
program, arguments and PATH), no probe runs in a subshell of its own (each is one ``timeout``
command, which leaves the gathering shell as it was), and the outputs are encoded once for all
probes instead of once per output.

What the probes print lives on the guest only in a 0700 ``mktemp -d`` directory of the SSH user,
the directory removed on exit, hang-up, INT or TERM.
Root's probes' answers stay in the process that asked (:meth:`FactStore.export` hands on only the
user-level answers the caller names).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import shlex
import tarfile
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

#: Prepended to PATH for every command: NixOS keeps its tools under /run/current-system/sw/bin and
#: sudo under /run/wrappers/bin (nixpkgs nixos/modules/security/wrappers/default.nix:
#: ``security.wrapperDir = "/run/wrappers/bin"``); Debian keeps sshd in /usr/sbin.
EXTRA_PATH = "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 60
#: Marks the gathered answers in the output: ``NGFACTS <tar of the answer files, base64> .`` (the
#: final ``.``: the line came whole). The archive holds ``<index>.r`` (exit status), ``<index>.o``
#: and ``<index>.e`` (stdout, stderr) per probe.
TAG = "NGFACTS"
END = "."
#: A word that /bin/sh passes on as it is (no quoting, expansion, globbing, redirection or operator;
#: no leading `=`, which zsh expands when it is the SSH user's login shell).
_LITERAL_WORD = re.compile(r"[A-Za-z0-9_@%+:,./-][A-Za-z0-9_@%+=:,./-]*")
_PROGRAM = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_.+/-]*")  # no `=`: `a=b cmd` is an assignment to sh
#: Words /bin/sh treats itself: bash's builtins and reserved words (`compgen -b; compgen -k`: on
#: NixOS /bin/sh is bash, nixpkgs nixos/modules/config/shells-environment.nix binsh) and dash's
#: (`chdir`; /bin/sh on Debian). Through ``timeout`` they would run a different program
#: (coreutils' echo/printf/test/kill...) or none at all.
_SHELL_WORDS = frozenset("""
    ! [ [[ ]] { } . : alias bg bind break builtin caller case cd chdir command compgen complete compopt
    continue coproc declare dirs disown do done echo elif else enable esac eval exec exit export false fc
    fg fi for function getopts hash help history if in jobs kill let local logout mapfile popd printf
    pushd pwd read readarray readonly return select set shift shopt source suspend test then time times
    trap true type typeset ulimit umask unalias unset until wait while
""".split())
#: The shell splits words at spaces and tabs only (not at other Unicode whitespace).
_PLAIN = re.compile(rf"[ \t]*{_LITERAL_WORD.pattern}(?:[ \t]+{_LITERAL_WORD.pattern})*[ \t]*")


@dataclass(frozen=True)
class Probe:
    """One guest command as a check runs it: the command, as root or not, its guest-side timeout."""

    command: str
    as_root: bool = False
    timeout: int = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Answer:
    """What one probe answered: its exit status and its output, byte for byte."""

    rc: int
    stdout: bytes
    stderr: bytes


def plain_words(command: str) -> list[str] | None:
    """``command`` as the program and arguments /bin/sh would run, when it is one plain command
    (literal words only, not a shell builtin or reserved word); None: it needs a shell."""
    if not _PLAIN.fullmatch(command):  # also: a newline separates commands
        return None
    words = re.split(r"[ \t]+", command.strip(" \t"))
    if not _PROGRAM.fullmatch(words[0]) or words[0] in _SHELL_WORDS:
        return None
    return words


def guest_command(probe: Probe) -> str:
    """The one ``timeout`` command that runs ``probe`` (PATH already set): ``timeout ... <program>
    <args>`` for a plain command of the SSH user, ``timeout ... [sudo -n] /bin/sh -c '...'`` for
    anything else (sudo resets PATH, so root's shell sets it again)."""
    bound = f"timeout -k 5 {int(probe.timeout)}"
    words = None if probe.as_root else plain_words(probe.command)
    if words is not None:
        return f"{bound} {' '.join(words)}"
    inner = f"export PATH={EXTRA_PATH}:\"$PATH\"; {probe.command}"
    prefix = "sudo -n " if probe.as_root else ""
    return f"{bound} {prefix}/bin/sh -c {shlex.quote(inner)}"


def command_line(probe: Probe) -> str:
    """The one shell line that runs ``probe`` on the guest over SSH (bounded by ``timeout``)."""
    return f"export PATH={EXTRA_PATH}:\"$PATH\"; {guest_command(probe)}"


def unique(probes: Iterable[Probe]) -> list[Probe]:
    """``probes`` without repeats, first occurrence kept (the order is the order they run in)."""
    return list(dict.fromkeys(probes))


def valid_probe(probe: Any) -> str | None:
    """Why ``probe`` cannot be gathered (None: it can): a check module's ``probes(ctx)`` may be a
    site's own code (``verify.checks_dir``)."""
    if not isinstance(probe, Probe):
        return f"not a Probe: {type(probe).__name__}"
    if not isinstance(probe.command, str) or not probe.command.strip():
        return "its command is not a non-empty string"
    if not isinstance(probe.as_root, bool):
        return "as_root is not True or False"
    if isinstance(probe.timeout, bool) or not isinstance(probe.timeout, int) or probe.timeout <= 0:
        return f"timeout is not a positive whole number of seconds: {probe.timeout!r}"
    return None


def gather_script(probes: Sequence[Probe]) -> str:
    """One shell script running every probe in order with stdin from /dev/null, each answer in
    files, then printing them as one ``NGFACTS`` line (coreutils' ``mktemp`` and ``base64``, GNU
    ``tar``: nixpkgs nixos/modules/config/system-path.nix corePackageNames has "coreutils-full"
    and "gnutar"; looked up with the same PATH as the probes)."""
    lines = [f'export PATH={EXTRA_PATH}:"$PATH"', 'd=$(mktemp -d) || exit 97',
             "trap 'rm -rf \"$d\"' EXIT", "trap 'exit 129' HUP", "trap 'exit 130' INT", "trap 'exit 143' TERM",
             'mkdir "$d/a" || exit 97']
    for n, probe in enumerate(probes):
        lines.append(f'{guest_command(probe)} </dev/null >"$d/a/{n}.o" 2>"$d/a/{n}.e"; echo $? >"$d/a/{n}.r"')
    lines.append(f'tar -C "$d/a" -cf "$d/t" . && printf "{TAG} " && base64 -w0 "$d/t" && printf " {END}\\n"')
    return "\n".join(lines) + "\n"


def parse_gathered(output: str | bytes, probes: Sequence[Probe]) -> dict[Probe, Answer]:
    """The answers in ``output`` of :func:`gather_script`: none unless the ``NGFACTS`` line came
    whole and its archive reads; a probe answers only with its exit status and both outputs."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    files: dict[str, bytes] = {}
    for line in output.split("\n")[:-1]:  # a last piece without its newline was cut off
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != TAG or parts[2] != END:
            continue
        try:
            archive = tarfile.open(fileobj=io.BytesIO(base64.b64decode(parts[1], validate=True)), mode="r:")
            with archive:
                for member in archive.getmembers():
                    content = archive.extractfile(member) if member.isfile() else None
                    if content is not None:
                        files[member.name.removeprefix("./")] = content.read()
        except (ValueError, binascii.Error, tarfile.TarError, EOFError):
            return {}
    answers: dict[Probe, Answer] = {}
    for n, probe in enumerate(probes):
        rc, out, err = (files.get(f"{n}.{k}") for k in "roe")
        if rc is None or out is None or err is None or not rc.strip().isdigit():
            continue
        status = int(rc)
        # Killed by a signal (a crash, the OOM killer, timeout's KILL): the gathering shell says
        # 128+N, but alone the command may die with its signal, and sshd then sends "exit-signal"
        # instead of "exit-status" (OpenSSH session.c session_exit_message: WIFSIGNALED); such a
        # command runs again on its own. 124 is timeout's own status for a command it stopped.
        if status > 128:
            continue
        answers[probe] = Answer(status, out, err)
    return answers


class FactStore:
    """The gathered answers, per testinfra host (forgotten with the host); clones may gather at
    the same time from their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: weakref.WeakKeyDictionary[Any, dict[Probe, Answer]] = weakref.WeakKeyDictionary()
        self._asked: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()

    def gather(self, host: Any, probes: Sequence[Probe]) -> int:
        """Run ``probes`` on ``host`` in one command and keep the answers; how many came back."""
        probes = unique(probes)
        if not probes:
            return 0
        result = host.run(gather_script(probes))
        answers = parse_gathered(result.stdout_bytes, probes)
        with self._lock:
            self._answers.setdefault(host, {}).update(answers)
        return len(answers)

    def load(self, host: Any, entries: Iterable[dict[str, Any]]) -> None:
        """Answers exported by another process (:meth:`export`)."""
        loaded = {Probe(e["command"], bool(e["as_root"]), int(e["timeout"])):
                  Answer(int(e["rc"]), base64.b64decode(e["stdout"]), base64.b64decode(e["stderr"])) for e in entries}
        with self._lock:
            self._answers.setdefault(host, {}).update(loaded)

    def export(self, host: Any, wanted: Iterable[Probe]) -> list[dict[str, Any]]:
        """The answers for ``host`` to the ``wanted`` user-level probes, as JSON-able dicts (root's
        answers never leave this process)."""
        keep = {p for p in wanted if not p.as_root}
        with self._lock:
            answers = dict(self._answers.get(host, {}))
        return [{"command": p.command, "as_root": p.as_root, "timeout": p.timeout, "rc": a.rc,
                 "stdout": base64.b64encode(a.stdout).decode(), "stderr": base64.b64encode(a.stderr).decode()}
                for p, a in answers.items() if p in keep]

    def answer(self, host: Any, probe: Probe) -> Answer | None:
        with self._lock:
            return self._answers.get(host, {}).get(probe)

    def asked(self, host: Any, probe: Probe) -> None:
        """``probe`` ran over SSH on its own (nobody declared it, or its answer did not come back)."""
        with self._lock:
            self._asked.setdefault(host, []).append(probe.command)

    def one_by_one(self, host: Any) -> list[str]:
        """The commands that ran on ``host`` outside the gathered facts, in order."""
        with self._lock:
            return list(self._asked.get(host, []))


#: The one store of this process (the check suite runs in its own process per run).
STORE = FactStore()


def run_probe(host: Any, probe: Probe) -> Any:
    """testinfra's CommandResult for ``probe``: the gathered answer, else the command over SSH."""
    line = command_line(probe)
    answer = STORE.answer(host, probe)
    if answer is None:
        STORE.asked(host, probe)
        return host.run(line)
    return host.backend.result(answer.rc, host.backend.encode(line), answer.stdout, answer.stderr)
