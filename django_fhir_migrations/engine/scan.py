"""The strict read of a plain script's text: what it declares, without running it.

A status over thousands of files must not execute thousands of modules, so the metadata a graph
needs (revision, down_revision, irreversible, the docstring's first line) is read from the text
of files that have the plain form `fhirmakemigration` writes: docstring, comments and plain
imports, then `revision = "..."` / `down_revision = ...` / `irreversible = ...` as literals, and
nothing further down that could rebind those names (the names themselves, `globals()`,
`setattr`, `__dict__`, `import *`, `exec`, decorators ...), with `def upgrade(...)` and
`def downgrade(...)` at top level taking one argument or none.

Everything here answers "can the metadata be taken from the text without running it?"; any
doubt answers None and script.py imports the file instead. The patterns work on bytes, line by
line from the top, so a match is known to be a top-level statement (not text inside a string).
Whether the values read are a valid revision and down_revision is script.py's to judge, as it
judges an imported module's.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

_EOL = rb"(?:\r\n|\n|\r|\Z)"
_TAIL = rb"[ \t]*(?:#[^\r\n]*)?" + _EOL  # what may follow a statement on its line
_BLANK = re.compile(rb"(?:[ \t\f]*(?:#[^\r\n]*)?(?:\r\n|\n|\r))*[ \t\f]*(?:#[^\r\n]*)?" + _EOL)  # blank lines
_BOM = b"\xef\xbb\xbf"
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.M)
_DOCSTRING = re.compile(
    rb'([rRuU]?(?:"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*"""'
    rb"|'''[^'\\]*(?:(?:\\[\s\S]|'(?!''))[^'\\]*)*'''"
    rb'|"[^"\\\r\n]*(?:\\[\s\S][^"\\\r\n]*)*"'
    rb"|'[^'\\\r\n]*(?:\\[\s\S][^'\\\r\n]*)*'))" + _TAIL
)
# A revision literal: printable ASCII, no quote, no backslash (so no escapes to interpret).
_STR = rb"""(?:"[ !#-\[\]-~]*"|'[ -&(-\[\]-~]*')"""
_STRINGS = rb"\s*" + _STR + rb"(?:\s*,\s*" + _STR + rb")*\s*,?\s*"
_ASSIGN = re.compile(
    rb"(revision|down_revision|irreversible)[ \t]*=[ \t]*("
    rb"None|True|False|" + _STR + rb"|\(" + _STRINGS + rb"\)"
    rb"|\[" + _STRINGS + rb"\])" + _TAIL
)
_STR_VALUE = re.compile(_STR)
_IMPORT = re.compile(
    rb"(?:import[ \t]+[\w.]+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*[\w.]+(?:[ \t]+as[ \t]+\w+)?)*"
    rb"|from[ \t]+\.*[\w.]*[ \t]+import[ \t]+\w+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*\w+(?:[ \t]+as[ \t]+\w+)?)*)"
    + _TAIL
)
_DECLARED = re.compile(rb"\b(?:revision|down_revision|irreversible|upgrade|downgrade|__doc__)\b")
# Below the header, anything that could bind the metadata names, directly or not, sends the file
# to a real import: the names themselves, and the ways to reach a module's namespace. Matched as
# whole identifiers (in code, strings and comments alike, which only errs towards importing).
_REBINDING_NAMES = frozenset({
    b"revision", b"down_revision", b"irreversible", b"__doc__", b"globals", b"locals", b"vars", b"exec",
    b"eval", b"compile", b"modules", b"__getattr__", b"__import__", b"import_module", b"getmodule",
    b"reload", b"builtins", b"__builtins__", b"__globals__", b"f_globals", b"f_locals", b"setattr",
    b"__setattr__", b"delattr", b"__delattr__", b"__dict__", b"__class__",
})
_IDENTIFIER_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") | frozenset(
    range(128, 256))
_WORDS_ONLY = bytes(b if b in _IDENTIFIER_BYTES else 32 for b in range(256))  # for bytes.translate
_STAR_IMPORT = re.compile(rb"\bimport[ \t\\\r\n]*\*")
# upgrade/downgrade: each defined once at top level by a def of the form accepted, and no
# statement that would rebind them (best effort: ensure_loaded() decides before anything runs).
_DEF = re.compile(
    rb"def[ \t]+(upgrade|downgrade)[ \t]*\([ \t]*(?:[A-Za-z_]\w*(?:[ \t]*:[ \t]*[\w.]+)?[ \t]*,?[ \t]*)?\)"
    rb"[ \t]*(?:->[ \t]*[\w.]+[ \t]*)?:"
)
_BINDING_WORD = re.compile(rb"\b(?:global|nonlocal|del|as|import|for|class|def|lambda)\b")
_BINDING_OPERATOR = re.compile(rb"[ \t]*(?:(?:[-+*/%&|^@]|//|>>|<<|\*\*)?=(?!=)|:|\[|\.|,)")
_UTF8 = {"utf-8", "utf8", "utf_8", "utf-8-sig", "utf_8_sig"}


@dataclass(frozen=True)
class Declared:
    """What a plain script's text declares: the literals as written (a constant, a string, a
    tuple or a list of strings) and the docstring's first line."""

    revision: Any
    down_revision: Any
    irreversible: Any
    doc: str


def scan_plain(source: bytes) -> Declared | None:
    """What the text declares, if the file has the plain form and its text alone says what the
    module will hold; None when it must be imported to know."""
    if b"\0" in source or not _utf8(source):
        return None
    pos = len(_BOM) if source.startswith(_BOM) else 0
    end = len(source)
    found: dict[bytes, bytes] = {}
    doc = ""
    statements = 0
    while pos < end:
        match = _BLANK.match(source, pos)
        if match and match.end() > pos:
            pos = match.end()
            continue
        match = _ASSIGN.match(source, pos)
        if match:
            name = match.group(1)
            if name in found:
                return None
            found[name] = match.group(2)
        elif found:
            break  # after the first assignment, only assignments and blank lines belong here
        elif statements == 0 and (match := _DOCSTRING.match(source, pos)):
            first_line = _docstring(match.group(1))
            if first_line is None:
                return None
            doc = first_line
        elif (match := _IMPORT.match(source, pos)) and not _DECLARED.search(match.group(0)):
            pass
        else:
            break
        statements += 1
        pos = match.end()
    if b"revision" not in found or b"down_revision" not in found:
        return None
    rest = source[pos:]
    if not rest.isascii():
        # Python folds identifiers to NFKC: a full-width 'ｒevision' is `revision`.
        rest = unicodedata.normalize("NFKC", rest.decode("utf-8")).encode("utf-8")
    if not _REBINDING_NAMES.isdisjoint(rest.translate(_WORDS_ONLY).split()):
        return None
    if b"*" in rest and _STAR_IMPORT.search(rest):
        return None
    if not _plain_functions(rest):
        return None
    return Declared(_literal(found[b"revision"]), _literal(found[b"down_revision"]),
                    _literal(found.get(b"irreversible", b"False")), doc)


def _utf8(source: bytes) -> bool:
    """Python reads the file as UTF-8: no other coding declared, and it decodes."""
    head_end = 0
    for _ in range(2):  # a coding declaration counts on the first two lines only
        newline = source.find(b"\n", head_end)
        head_end = len(source) if newline < 0 else newline + 1
    for cookie in _COOKIE.finditer(source, 0, head_end):
        if cookie.group(1).decode("ascii").lower() not in _UTF8:
            return False
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_CONSTANTS = {b"None": None, b"True": True, b"False": False}


def _literal(value: bytes) -> Any:
    """The value of an _ASSIGN literal: a constant, a string, a tuple or a list of strings."""
    if value in _CONSTANTS:
        return _CONSTANTS[value]
    if value[:1] in (b'"', b"'"):
        return value[1:-1].decode("ascii")
    strings = [m.group(0)[1:-1].decode("ascii") for m in _STR_VALUE.finditer(value)]
    if value[:1] == b"[":
        return strings
    if b"," in _STR_VALUE.sub(b"", value):
        return tuple(strings)
    return strings[0]  # a string in parentheses


def _docstring(literal: bytes) -> str | None:
    """The first line of the docstring, or None when it cannot be read without Python."""
    text = literal.decode("utf-8")
    if "\\" in text:
        try:
            value = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return None
        if not isinstance(value, str):
            return None
    else:
        body = text.lstrip("rRuU")
        quote = 3 if body[:3] in ('"""', "'''") else 1
        value = body[quote:-quote]
    value = value.strip()
    return value.splitlines()[0] if value else ""


def _plain_functions(rest: bytes) -> bool:
    """upgrade and downgrade are each defined once at top level, undecorated, with one plain
    parameter or none, and nothing else in the text looks like it binds those names."""
    if rest.startswith(b"@") or b"\n@" in rest or b"\r@" in rest:
        return False
    defined = []
    for start, end in _function_names(rest):
        line = max(rest.rfind(b"\n", 0, start), rest.rfind(b"\r", 0, start)) + 1
        prefix = rest[line:start]
        if not prefix[:1].isspace() and prefix[:1] != b"#":  # on a top-level line: only its def
            match = _DEF.match(rest, line)
            if match is None or match.start(1) != start:
                return False
            defined.append(match.group(1))
        elif _BINDING_WORD.search(prefix) or _BINDING_OPERATOR.match(rest, end):
            return False
    return sorted(defined) == [b"downgrade", b"upgrade"]


def _function_names(rest: bytes):
    """(start, end) of every `upgrade` / `downgrade` standing as a word (bytes.find is the fast
    way through a file where they are rare)."""
    at = rest.find(b"grade")
    while at >= 0:
        end = at + 5
        if at >= 2 and rest[at - 2:at] == b"up":
            start = at - 2
        elif at >= 4 and rest[at - 4:at] == b"down":
            start = at - 4
        else:
            start = -1
        if start >= 0 and (start == 0 or rest[start - 1] not in _IDENTIFIER_BYTES) and (
                end == len(rest) or rest[end] not in _IDENTIFIER_BYTES):
            yield start, end
        at = rest.find(b"grade", end)
