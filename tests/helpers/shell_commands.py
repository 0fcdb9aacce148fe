"""Every command a bash script can run, read statically (for the "commands exist where they run" guard).

Bash itself parses the script first: the script's function definitions are sourced (its last line,
the ``main "$@"`` call, is left out) and printed back with ``declare -f``, bash's own normalised
form (one command per line, comments gone, here-documents and substitutions kept). A small
tokenizer then walks that text and takes the command word of every simple command, including
those inside ``$( )``, ``<( )``, back quotes, ``trap '...'`` strings, and the commands that the
script's ``run`` wrapper (and ``sudo``/``command``/``exec``/``env``) runs.

    found = script_commands(text)   # ScriptCommands(commands={'curl', 'mkfs.ext4', ...}, functions=..., dynamic=...)

``dynamic`` holds command words that are expansions (``"${PROFILE}/bin/switch-to-configuration"``):
the caller decides whether each is acceptable.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

KEYWORDS_START = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "in"}
KEYWORDS_END = {"fi", "done", "esac", "}"}
#: Words that run their next non-option word as a command.
WRAPPERS = {"run", "sudo", "command", "exec", "env", "nohup", "timeout", "xargs"}
#: Options of a wrapper that take the next word as their value (``timeout -k 5 60 cmd``, ``sudo -u user cmd``).
WRAPPER_OPTIONS_WITH_VALUE = {"timeout": ("-k", "-s"), "sudo": ("-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U"),
                              "env": ("-u", "-C", "-S"), "xargs": ("-I", "-n", "-P", "-d", "-L", "-s", "-E")}
#: timeout's DURATION: a number with an optional unit.
_DURATION_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[smhd]?$")
SEPARATORS = {"\n", ";", "&&", "||", "|", "|&", "&", "(", ")"}
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_REDIR_RE = re.compile(r"(\d*)(<<<|<<-|<<|<>|>>|>&|<&|>\||&>>|&>|<|>)(&?-|\d+)?")
_FUNCTION_HEADER_RE = re.compile(r"^[A-Za-z_][\w:.-]* \(\) ?$", re.M)


@dataclass
class ScriptCommands:
    commands: set[str] = field(default_factory=set)  # literal command words (names or paths)
    dynamic: set[str] = field(default_factory=set)  # command words that are expansions
    functions: set[str] = field(default_factory=set)  # functions the script defines


class ShellParseError(ValueError):
    pass


def normalise(script: str) -> tuple[str, set[str]]:
    """``declare -f`` of the script's functions (and the function names), by bash itself."""
    lines = script.rstrip("\n").split("\n")
    last = lines[-1]
    if not re.fullmatch(r'main "\$@"( </dev/null)?', last):
        raise ShellParseError(f"the script's last line is not the main call: {last!r}")
    body = "\n".join(lines[:-1]) + "\n"
    proc = subprocess.run(["bash", "-c", 'source /dev/stdin || exit 97; declare -f; printf "\\n@@FUNCTIONS@@\\n"; '
                           'declare -F'], input=body, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "NIXGOLD_TEST_ROOT": "/nonexistent"})
    if proc.returncode != 0 or "@@FUNCTIONS@@" not in proc.stdout:
        raise ShellParseError(f"bash could not load the script: {proc.stderr.strip()[-500:]}")
    text, _, names = proc.stdout.partition("\n@@FUNCTIONS@@\n")
    functions = {line.split()[-1] for line in names.splitlines() if line.startswith("declare -f")}
    return _FUNCTION_HEADER_RE.sub("", text), functions


def script_commands(script: str) -> ScriptCommands:
    text, functions = normalise(script)
    found = ScriptCommands(functions=functions)
    _commands_of(text, found)
    return found


# --- tokenizer ---------------------------------------------------------------------------------
@dataclass
class _Token:
    kind: str  # "word" | "op" | "redir"
    text: str


class _Tokenizer:
    def __init__(self, text: str, found: ScriptCommands):
        self.text = text
        self.i = 0
        self.found = found
        self.tokens: list[_Token] = []
        self.heredocs: list[str] = []

    def error(self, what: str) -> ShellParseError:
        start = max(0, self.i - 60)
        return ShellParseError(f"{what} at offset {self.i}: ...{self.text[start:self.i + 20]!r}")

    # nested text (substitutions) is scanned for commands of its own
    def nested(self, inner: str) -> None:
        _commands_of(inner, self.found)

    def matching(self, open_: str, close: str) -> int:
        """Index just after the ``close`` that matches an ``open_`` already consumed (quotes honoured)."""
        depth, i, t = 1, self.i, self.text
        while i < len(t):
            c = t[i]
            if c == "\\":
                i += 2
                continue
            if c == "'" and open_ != "`":
                end = t.find("'", i + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                i = end + 1
                continue
            if c == '"':
                i = self._skip_double(i + 1)
                continue
            if t.startswith(open_, i) and open_ != close:
                depth += 1
                i += len(open_)
                continue
            if t.startswith(close, i):
                depth -= 1
                if depth == 0:
                    return i + len(close)
                i += len(close)
                continue
            i += 1
        raise self.error(f"no matching {close!r}")

    def _skip_double(self, i: int) -> int:
        t = self.text
        while i < len(t):
            c = t[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                return i + 1
            if t.startswith("$(", i) and not t.startswith("$((", i):
                saved, self.i = self.i, i + 2
                end = self.matching("(", ")")
                self.nested(t[i + 2:end - 1])
                self.i = saved
                i = end
                continue
            if c == "`":
                end = t.find("`", i + 1)
                self.nested(t[i + 1:end])
                i = end + 1
                continue
            i += 1
        raise self.error("unterminated double quote")

    def word(self) -> str:
        """Read one word starting at self.i (quotes, expansions and substitutions included)."""
        t, start = self.text, self.i
        while self.i < len(t):
            c = t[self.i]
            if c in " \t\n;&|<>" or (c in "()" and not t.startswith("$(", self.i - 1)):
                if c in "<>" and t.startswith(("<(", ">("), self.i) and self.i == start:
                    self.i += 2
                    end = self.matching("(", ")")
                    self.nested(t[self.i:end - 1])
                    self.i = end
                    continue
                if c == "(" and self.i > start and t[self.i - 1] in "=@?*+!":
                    # arrays a=(...) and extglob @(...): part of the word
                    self.i = self.matching_from(self.i + 1, "(", ")")
                    continue
                break
            if c == "\\":
                self.i += 2
            elif c == "'":
                end = t.find("'", self.i + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                self.i = end + 1
            elif c == '"':
                self.i = self._skip_double(self.i + 1)
            elif t.startswith("$((", self.i):
                self.i += 3
                self.i = self.matching("((", "))")
            elif t.startswith("$(", self.i):
                self.i += 2
                end = self.matching("(", ")")
                self.nested(t[self.i:end - 1])
                self.i = end
            elif t.startswith("${", self.i):
                self.i += 2
                self.i = self.matching("{", "}")
            elif c == "`":
                end = t.find("`", self.i + 1)
                if end < 0:
                    raise self.error("unterminated back quote")
                self.nested(t[self.i + 1:end])
                self.i = end + 1
            else:
                self.i += 1
        return t[start:self.i]

    def matching_from(self, i: int, open_: str, close: str) -> int:
        saved, self.i = self.i, i
        try:
            return self.matching(open_, close)
        finally:
            self.i = saved

    def skip_heredocs(self) -> None:
        """At a newline: skip the bodies of the here-documents opened on the line just read."""
        for delim in self.heredocs:
            lines_start = self.i
            pattern = re.compile(rf"^\t*{re.escape(delim)}$", re.M)
            m = pattern.search(self.text, lines_start)
            if not m:
                raise self.error(f"here-document without its end line {delim!r}")
            self.i = m.end()
        self.heredocs = []

    def run(self) -> list[_Token]:
        t = self.text
        in_test = False  # inside [[ ... ]]: operators are words
        while self.i < len(t):
            c = t[self.i]
            if c in " \t":
                self.i += 1
                continue
            if c == "#" and (self.i == 0 or t[self.i - 1] in " \t\n;"):
                end = t.find("\n", self.i)
                self.i = len(t) if end < 0 else end
                continue
            if c == "\n":
                self.tokens.append(_Token("op", "\n"))
                self.i += 1
                self.skip_heredocs()
                continue
            if in_test:
                w = self.word() or t[self.i]
                if not w or w == t[self.i:self.i + 1] and w in ";&|<>()":
                    self.i += 1
                if w == "]]":
                    in_test = False
                    self.tokens.append(_Token("word", "]]"))
                continue
            if t.startswith("((", self.i):
                self.i += 2
                self.i = self.matching("((", "))")
                self.tokens.append(_Token("word", "((arith))"))
                continue
            m = _REDIR_RE.match(t, self.i)
            is_redir = m is not None and not t.startswith(("<(", ">("), self.i) and (
                c in "<>" or m.group(1) != "" or m.group(2).startswith("&"))
            if m is not None and is_redir:
                self.i = m.end()
                op = m.group(2)
                if m.group(3):  # >&2, 2>&1: the target is part of the operator
                    self.tokens.append(_Token("redir", m.group(0)))
                    continue
                while self.i < len(t) and t[self.i] in " \t":
                    self.i += 1
                target = self.word()
                if op in ("<<", "<<-"):
                    self.heredocs.append(re.sub(r"['\"\\]", "", target))
                self.tokens.append(_Token("redir", f"{m.group(0)}{target}"))
                continue
            for op in (";;&", ";;", ";&", "&&", "||", "|&", ";", "|", "&", "(", ")"):
                if t.startswith(op, self.i):
                    self.tokens.append(_Token("op", op))
                    self.i += len(op)
                    break
            else:
                w = self.word()
                if not w:
                    raise self.error(f"cannot read {t[self.i]!r}")
                self.tokens.append(_Token("word", w))
                if w == "[[":
                    in_test = True
        return self.tokens


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        return word[1:-1]
    return word


def _record(word: str, found: ScriptCommands) -> None:
    plain = _unquote(word)
    if "$" in plain or "`" in plain:
        found.dynamic.add(plain)
    else:
        found.commands.add(plain.replace("\\", ""))


def _commands_of(text: str, found: ScriptCommands) -> None:
    tokens = _Tokenizer(text, found).run()
    expect = True  # the next word is in command position
    mode = ""  # "" | "for" (skip to separator) | "case-word" | "case-in" | "pattern"
    wrapper_next = ""  # the wrapper whose command comes next ("" = none)
    skip_next = False  # the word after a wrapper's option is the option's value
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if mode == "pattern":
            if tok.kind == "word" and tok.text == "esac":
                mode, expect = "", False
            elif tok.kind == "op" and tok.text == ")":
                mode, expect = "", True
            continue
        if tok.kind == "op":
            if tok.text in (";;", ";&", ";;&"):
                mode, expect = "pattern", False
            elif mode == "case-in" and tok.text == "\n":
                continue
            else:
                if mode == "for" and tok.text in (";", "\n"):
                    mode = ""
                expect = True
            wrapper_next, skip_next = "", False
            continue
        if tok.kind == "redir":
            continue
        if mode == "for":
            continue
        if mode == "case-word":
            mode = "case-in"
            continue
        if mode == "case-in":
            if tok.text != "in":
                raise ShellParseError(f"case without 'in' near {tok.text!r}")
            mode = "pattern"
            continue
        word = tok.text
        if wrapper_next:
            if skip_next:
                skip_next = False
                continue
            if word.startswith("-") or _ASSIGNMENT_RE.match(word):
                skip_next = word in WRAPPER_OPTIONS_WITH_VALUE.get(wrapper_next, ())
                continue
            if wrapper_next == "timeout" and _DURATION_RE.match(word):
                wrapper_next = "timeout-duration-seen"
                continue
            _record(word, found)
            wrapper_next = _unquote(word) if _unquote(word) in WRAPPERS else ""
            continue
        if not expect:
            continue
        if _ASSIGNMENT_RE.match(word):
            continue
        if word in KEYWORDS_START or word in KEYWORDS_END:
            continue
        if word == "for":
            mode = "for"
            continue
        if word == "case":
            mode = "case-word"
            continue
        if word in ("[[", "((arith))"):
            expect = False
            continue
        expect = False
        if word == "trap" and i < len(tokens) and tokens[i].kind == "word":
            action = tokens[i].text
            if action.startswith("'") and action.endswith("'"):
                _commands_of(action[1:-1], found)
        _record(word, found)
        if _unquote(word) in WRAPPERS:
            wrapper_next = _unquote(word)
