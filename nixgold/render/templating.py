"""The one Jinja2 environment for guest files, and the escaping filters it offers.

Rule for every template in ``nixgold/templates``: a value that comes from the config (or
is derived from it) is only ever emitted through one of these filters, never as a raw
``{{ value }}`` (tests walk the template ASTs to enforce it):

* ``nix_str``       -- a complete double-quoted Nix string literal
* ``nix_attr_path`` -- ``pkgs.a.b``: a validated Nix attribute path below a root
* ``nix_bool``      -- ``true`` / ``false``
* ``sh``            -- one shell word (``shlex.quote``)
* ``token``         -- a plain token (hex hash, version) emitted verbatim; safe in comments
  of both languages because it can only hold ``[A-Za-z0-9._+:-]``

A render failure becomes :class:`~nixgold.errors.RenderError` naming the template and
line, with the surrounding template lines shown (pyinfra style).
"""

from __future__ import annotations

import os
import re
import shlex
import traceback
from collections.abc import Iterable
from typing import Any

import jinja2

from nixgold.errors import RenderError

# Same identifier/keyword rules as nixgold.config (Nix lexer: ID [a-zA-Z_][a-zA-Z0-9_'-]*).
_NIX_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
_NIX_KEYWORDS = frozenset({"if", "then", "else", "let", "in", "with", "rec", "inherit", "assert", "or"})
# Segments that are not plain identifiers but are still sane attribute names
# (e.g. "1password", "or"): emitted quoted. Anything else is refused.
_QUOTABLE_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_'+-]*")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._+:-]*")

TEMPLATE_PACKAGE = "nixgold.render"
TEMPLATE_DIR = "templates"
#: The filters a template may use to emit a value (see the module docstring).
ESCAPING_FILTERS = frozenset({"nix_str", "nix_attr_path", "nix_bool", "sh", "token"})


# --- filters ------------------------------------------------------------------------------
def _defined(value: Any) -> None:
    """A missing variable must fail as itself, not as "bad value 'Undefined'"."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the variable
        raise jinja2.UndefinedError("undefined value passed to an escaping filter")


def nix_str(value: str) -> str:
    """``value`` as a double-quoted Nix string literal that evaluates to exactly ``value``.

    Escapes ``\\``, ``"`` and ``${`` (``\\${``; a lone ``$`` is literal), and newline / CR /
    tab as ``\\n`` / ``\\r`` / ``\\t`` so the literal stays on one line. NUL cannot be
    represented in a Nix string (the evaluator uses C strings), so it is refused.
    """
    _defined(value)
    if not isinstance(value, str):
        raise TypeError(f"nix_str expects a string, got {type(value).__name__} {value!r}")
    if "\0" in value:
        raise ValueError(f"a NUL character cannot be written into a Nix string: {value!r}")
    escaped = (
        value.replace("\\", "\\\\")  # first: the escapes below add backslashes
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def nix_attr_path(path: str | Iterable[str], root: str = "pkgs") -> str:
    """``"python3Packages.requests"`` -> ``pkgs.python3Packages.requests``.

    Plain identifiers stay bare; keywords and digit-leading names are quoted
    (``pkgs."1password"``); empty segments, whitespace, quotes, ``$`` etc. are refused.
    """
    _defined(path)
    segments = path.split(".") if isinstance(path, str) else list(path)
    if not segments:
        raise ValueError("an attribute path needs at least one segment")
    out = [root] if root else []
    for segment in segments:
        if not isinstance(segment, str):
            raise TypeError(f"attribute path segments must be strings, got {segment!r}")
        if _NIX_IDENT_RE.fullmatch(segment) and segment not in _NIX_KEYWORDS:
            out.append(segment)
        elif _QUOTABLE_SEGMENT_RE.fullmatch(segment):
            out.append(nix_str(segment))
        else:
            raise ValueError(f"not a Nix attribute path: {path!r} (bad segment {segment!r})")
    return ".".join(out)


def nix_bool(value: bool) -> str:
    _defined(value)
    if not isinstance(value, bool):  # 0/1/"yes" would silently mean something else
        raise TypeError(f"nix_bool expects a bool, got {type(value).__name__} {value!r}")
    return "true" if value else "false"


def sh(value: str | int) -> str:
    """One shell word. ints are allowed (ports, counts); NUL cannot live in a bash string."""
    _defined(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"sh expects a string or int, got {type(value).__name__} {value!r}")
    text = str(value)
    if "\0" in text:
        raise ValueError(f"a NUL character cannot be passed to the shell: {value!r}")
    return shlex.quote(text)


def token(value: str) -> str:
    """A plain token emitted verbatim; refuses anything that could end a comment or a word."""
    _defined(value)
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"not a plain token ([A-Za-z0-9._+:-]): {value!r}")
    return value


FILTERS = {"nix_str": nix_str, "nix_attr_path": nix_attr_path, "nix_bool": nix_bool, "sh": sh, "token": token}


# --- environment ----------------------------------------------------------------------------
def make_environment(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> jinja2.Environment:
    """The environment; ``extra_dirs`` come first (templates that extend nixgold's own, such as
    the test bed's stand-in install.sh)."""
    loader: jinja2.BaseLoader = jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_DIR)
    extra = [str(d) for d in extra_dirs]
    if extra:
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(extra), loader])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,  # a typo in a variable name fails, never renders ""
        keep_trailing_newline=True,
        autoescape=False,  # HTML escaping would corrupt Nix and shell; our filters escape
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


ENV = make_environment()


def render(template_name: str, *, env: jinja2.Environment | None = None, **context: Any) -> str:
    """Render one template; any failure becomes RenderError with the template line shown."""
    env = env or ENV
    try:
        template = env.get_template(template_name)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(_describe(template_name, exc.source, exc.lineno, exc)) from exc
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template {template_name} not found in {TEMPLATE_PACKAGE}/{TEMPLATE_DIR}") from exc
    try:
        return template.render(**context)
    except Exception as exc:  # StrictUndefined, filter ValueErrors, type errors, ...
        lineno, name = _template_line(exc, env)
        name = name or template_name
        source = env.loader.get_source(env, name)[0] if env.loader else None
        raise RenderError(_describe(name, source, lineno, exc)) from exc


def _template_line(exc: BaseException, env: jinja2.Environment) -> tuple[int | None, str | None]:
    """(line, template name) of the innermost template frame: Jinja rewrites tracebacks so
    template frames carry the template's file and line (an included partial has its own)."""
    files = {}
    for name in env.list_templates(extensions=["j2"]):
        try:
            files[env.get_template(name).filename] = name
        except jinja2.TemplateError:
            continue
    line = found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in files:
            line, found = frame.lineno, files[frame.filename]
    return line, found


def _describe(name: str, source: str | None, lineno: int | None, exc: BaseException) -> str:
    where = f"{name}, line {lineno}" if lineno else name
    message = getattr(exc, "message", None) or str(exc)
    text = f"could not render {where}: {type(exc).__name__}: {message}"
    if source and lineno:
        lines = source.splitlines()
        first, last = max(1, lineno - 2), min(len(lines), lineno + 2)
        context = [
            f"  {'-->' if n == lineno else '   '} {n:4d} | {lines[n - 1]}" for n in range(first, last + 1)
        ]
        text += "\n" + "\n".join(context)
    return text
