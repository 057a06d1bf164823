"""One migration file: its metadata read, its code imported once, and its fingerprint.

A script declares `revision`, `down_revision` (None, the seed tool's string 'None', a revision,
or a tuple of revisions for a merge), and `upgrade` / `downgrade`, which take `ctx` or, in the
seed tool's style, no argument. The checksum covers the code's tokens, not its layout, so
reformatting or editing comments does not count as a change (and it does not depend on the
Python version's AST shape, which would make every interpreter upgrade look like drift).

Reading is split in two, so a status over thousands of files does not execute thousands of
modules:

* `read_script` reads the metadata a graph needs (revision, down_revision, irreversible, the
  docstring's first line) by a strict parse of the file's first lines. It only vouches for a
  file of the plain form `fhirmakemigration` writes: docstring, comments and plain imports,
  then `revision = "..."` / `down_revision = ...` / `irreversible = ...` as literals, and
  nothing further down that could rebind those names (the names themselves, `globals()`,
  `setattr`, `__dict__`, `import *`, `exec`, decorators ...), with `def upgrade(...)` and
  `def downgrade(...)` at top level taking one argument or none. Any other file is imported
  there and then, exactly as `load_script` does, so every problem it has is reported with the
  same message as before. What the fast read cannot see is a problem in the rest of the code:
  a syntax error inside a function body, an exception raised while importing, `upgrade`
  rebound by code the scan does not recognise.
* `MigrationScript.ensure_loaded()` imports the module and validates it fully (the same checks
  and messages as ever), and refuses if the file no longer declares what was read. `run`,
  `module` and `load_script` go through it, so nothing runs unvalidated code.

The checksum is computed on first use (`checksum` is a property): tokenizing is the most
expensive part of loading, and only recording and drift checks need it. It is cached next to
the bytecode, in the scripts folder's `__pycache__` (`<stem>.<python tag>.fhirsum`, honouring
PYTHONPYCACHEPREFIX and PYTHONDONTWRITEBYTECODE): Python's own place for data derived from a
source file, which packagers and `.gitignore`s already exclude. An entry holds the file's path,
size and mtime_ns and is used only when all three match the file as it is now; a file modified
in the last few seconds is not cached at all, so an edit within one timestamp tick that keeps
the size cannot be mistaken for the cached version. A folder that cannot be written to simply
has no cache.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import io
import json
import keyword
import os
import re
import sys
import tempfile
import threading
import time
import tokenize
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ScriptError
from .frames import script_frame

SEED_NONE = "None"  # the seed tool wrote the string 'None' for "no parent"
_NUMBERED = re.compile(r"^(\d+)_(.+)$")


def bare_name(stem: str) -> str:
    """'add_mrn' for '0003_add_mrn' (and for the seed tool's unnumbered 'add_mrn')."""
    match = _NUMBERED.match(stem)
    return match.group(2) if match else stem


def file_number(filename: str) -> int | None:
    """3 for '0003_add_mrn.py'; None for an unnumbered (seed) file."""
    match = _NUMBERED.match(Path(filename).stem)
    return int(match.group(1)) if match else None


Stamp = tuple[int, int]  # (st_mtime_ns, st_size): what identifies a version of a file on disk

# One import at a time: two threads (an admin page served by several) must not execute the same
# script twice.
_IMPORT_LOCK = threading.RLock()


class MigrationScript:
    """One script. Its metadata is always there; its module is imported on first need."""

    def __init__(self, path: Path, label: str, revision: str, down_revisions: tuple[str, ...],
                 irreversible: bool = False, *, module: ModuleType | None = None,
                 source: bytes | None = None, stamp: Stamp | None = None, doc: str | None = None):
        self.path = path
        self.label = label
        self.revision = revision
        self.down_revisions = down_revisions
        self.irreversible = irreversible
        self._module = module
        self._source = source  # the bytes the module was imported from (kept for the checksum)
        self._stamp = stamp
        self._doc = doc
        self._checksum: str | None = None
        self._error: ScriptError | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1

    @property
    def short(self) -> str:
        return self.revision[:12]

    @property
    def loaded(self) -> bool:
        """Whether the module was imported and validated."""
        return self._module is not None

    @property
    def module(self) -> ModuleType:
        self.ensure_loaded()
        assert self._module is not None
        return self._module

    @property
    def doc(self) -> str:
        """The first line of the module's docstring."""
        if self._doc is None:
            text = (self.module.__doc__ or "").strip()
            self._doc = text.splitlines()[0] if text else ""
        return self._doc

    @property
    def checksum(self) -> str:
        """The token checksum of the source that was imported (or, before any import, of the
        file as it is now); computed on first use, cached in __pycache__."""
        if self._checksum is None:
            self._checksum = _checksum(self.path, self._stamp, self._source)
        return self._checksum

    def ensure_loaded(self) -> MigrationScript:
        """Import and fully validate the module (once); raises ScriptError when it cannot be
        used, or when the file no longer declares the revisions it was read with."""
        if self._module is not None:
            return self
        with _IMPORT_LOCK:
            if self._module is not None:
                return self
            if self._error is not None:
                raise self._error
            try:
                self._load()
            except ScriptError as exc:
                self._error = exc
                raise
        return self

    def _load(self) -> None:
        source, stamp = _read_source(self.path)
        module = _import(self.path, source)
        found = _validate(self.path, self.label, module)
        declared = (found.revision, found.down_revisions, found.irreversible)
        if declared != (self.revision, self.down_revisions, self.irreversible):
            read = _describe(self.revision, self.down_revisions, self.irreversible)
            now = _describe(*declared)
            if stamp != self._stamp:
                problem = (f"changed on disk while the command ran: it was read as {read}, it now "
                           f"declares {now}. Run the command again.")
            else:
                problem = (f"its text reads {read}, but the module holds {now} once imported; "
                           "assign revision, down_revision and irreversible once each, as literals.")
            raise ScriptError(self.path, problem)
        if stamp != self._stamp:
            self._checksum = None
        self._module, self._source, self._stamp = module, source, stamp

    @property
    def has_verify(self) -> bool:
        """Whether the script defines `verify(ctx)`: run after upgrade, before it is recorded."""
        return callable(vars(self.module).get("verify"))

    def run(self, direction: str, ctx: Any) -> Any:
        """Call upgrade/downgrade (or verify), passing ctx only to functions that take an
        argument."""
        func: Callable[..., Any] = getattr(self.module, direction)
        if _takes_no_argument(func):
            return func()
        return func(ctx)

    def __str__(self) -> str:
        return f"{self.name} ({self.short})"

    def __repr__(self) -> str:
        return (f"MigrationScript(path={self.path!r}, label={self.label!r}, revision={self.revision!r}, "
                f"down_revisions={self.down_revisions!r}, irreversible={self.irreversible!r})")


def _describe(revision: str, down_revisions: tuple[str, ...], irreversible: bool) -> str:
    down = ", ".join(down_revisions) or "None"
    return f"revision {revision} (down_revision {down}{', irreversible' if irreversible else ''})"


# Each file is read once per process: keyed by path and by what is on disk, so a file that is
# edited (tests, a long-lived admin process) is read again, and an unchanged one never is.
_CACHE: dict[Path, tuple[Stamp, MigrationScript]] = {}


def read_script(path: Path, label: str = "dir") -> MigrationScript:
    """The script's metadata, without executing it when its first lines vouch for it; a file
    that does not have the plain form is imported and validated here (raising ScriptError)."""
    # absolute(), not resolve(): a symlinked script is named after the link, where it is listed.
    path = (path if isinstance(path, Path) else Path(path)).absolute()
    source, stamp = _read_source(path)
    cached = _CACHE.get(path)
    if cached and cached[0] == stamp and cached[1].label == label:
        return cached[1]
    script = _read_plain(path, label, source, stamp)
    if script is None:
        module = _import(path, source)
        script = _validate(path, label, module)
        script._source, script._stamp = source, stamp
    _CACHE[path] = (stamp, script)
    return script


def load_script(path: Path, label: str = "dir") -> MigrationScript:
    """The script imported and validated (raises ScriptError naming the file's problem)."""
    return read_script(path, label).ensure_loaded()


def _read_source(path: Path) -> tuple[bytes, Stamp]:
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            source = handle.read()
    except OSError as exc:
        raise ScriptError(path, f"cannot be read ({exc.strerror}).") from None
    return source, (stat.st_mtime_ns, stat.st_size)


def _import(path: Path, source: bytes) -> ModuleType:
    # Validate the syntax first so a syntax error is reported as the file's problem, with its line.
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ScriptError(path, f"syntax error on line {exc.lineno}: {exc.msg}.") from exc
    except ValueError as exc:  # e.g. null bytes
        raise ScriptError(path, f"is not valid Python source ({exc}).") from exc
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"_fhir_migration_{digest}_{_identifier(path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None:  # pragma: no cover - only for paths importlib cannot describe
        raise ScriptError(path, "cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    with _IMPORT_LOCK:
        sys.modules[module_name] = module
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            frame = script_frame(exc, path)
            where = f" ({frame.describe()})" if frame else ""
            raise ScriptError(
                path, f"raised {type(exc).__name__} while being imported: {exc}{where}"
            ) from exc
    return module


def _identifier(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return cleaned if cleaned.isidentifier() and not keyword.iskeyword(cleaned) else f"m_{cleaned}"


def _validate(path: Path, label: str, module: ModuleType) -> MigrationScript:
    if not hasattr(module, "revision"):
        raise ScriptError(path, "has no `revision` attribute (expected revision = \"<uuid4 hex>\").")
    revision = module.revision
    if not isinstance(revision, str) or not revision.strip() or revision == SEED_NONE:
        raise ScriptError(path, f"`revision` must be a non-empty string, got {revision!r}.")
    if revision != revision.strip() or any(c.isspace() for c in revision):
        raise ScriptError(path, f"`revision` {revision!r} contains whitespace.")
    if not hasattr(module, "down_revision"):
        raise ScriptError(
            path,
            "has no `down_revision` attribute (use None for the first migration, or the revision "
            "it follows).",
        )
    down = parse_down_revision(path, module.down_revision)
    if revision in down:
        raise ScriptError(path, f"revision {revision} names itself as its down_revision.")
    for name in ("upgrade", "downgrade"):
        func = getattr(module, name, None)
        if func is None:
            raise ScriptError(path, f"has no `{name}` function (def {name}(ctx): ...).")
        if not callable(func):
            raise ScriptError(path, f"`{name}` must be a function, got {type(func).__name__}.")
        if not _callable_with_ctx_or_nothing(func):
            raise ScriptError(
                path, f"`{name}` must take one argument (ctx) or none, as def {name}(ctx): ..."
            )
    verify = vars(module).get("verify")  # defined in the file, not a module __getattr__'s answer
    if verify is not None and (not callable(verify) or not _callable_with_ctx_or_nothing(verify)):
        raise ScriptError(path, "`verify` must be a function taking one argument (ctx) or none, as "
                                "def verify(ctx): ...")
    irreversible = getattr(module, "irreversible", False)
    if not isinstance(irreversible, bool):
        raise ScriptError(path, f"`irreversible` must be True or False, got {irreversible!r}.")
    return MigrationScript(path, label, revision, down, irreversible, module=module)


def parse_down_revision(path: Path, value: Any) -> tuple[str, ...]:
    if value is None or value == SEED_NONE:
        return ()
    if isinstance(value, str):
        if not value.strip():
            raise ScriptError(path, "`down_revision` is an empty string; use None for the first migration.")
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(
        isinstance(v, str) and v.strip() and v != SEED_NONE for v in value
    ):
        if len(set(value)) != len(value):
            raise ScriptError(path, f"`down_revision` lists a revision twice: {tuple(value)!r}.")
        return tuple(value)
    raise ScriptError(
        path,
        f"`down_revision` must be None, a revision string or a tuple of revision strings, got {value!r}.",
    )


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _takes_no_argument(func: Callable[..., Any]) -> bool:
    sig = _signature(func)
    if sig is None:
        return False
    return not any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in sig.parameters.values()
    )


def _callable_with_ctx_or_nothing(func: Callable[..., Any]) -> bool:
    sig = _signature(func)
    if sig is None:
        return True
    try:
        sig.bind()
        return True
    except TypeError:
        pass
    try:
        sig.bind(object())
        return True
    except TypeError:
        return False


# --- the strict read of a plain script's first lines -------------------------------------------
#
# Everything here answers "can the metadata be taken from the text without running it?"; any
# doubt answers None and the file is imported instead. The patterns work on bytes, line by line
# from the top, so a match is known to be a top-level statement (not text inside a string).

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


def _read_plain(path: Path, label: str, source: bytes, stamp: Stamp) -> MigrationScript | None:
    """The script, if the file has the plain form and its text alone says what the module will
    hold; None when it must be imported to know."""
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
    revision = _literal(found[b"revision"])
    down_value = _literal(found[b"down_revision"])
    irreversible = _literal(found.get(b"irreversible", b"False"))
    if (not isinstance(revision, str) or not revision or revision == SEED_NONE
            or " " in revision or not isinstance(irreversible, bool)):  # _STR's only whitespace is " "
        return None  # the import reports it, with the value as Python sees it
    try:
        down = parse_down_revision(path, down_value)
    except ScriptError:
        return None
    if revision in down:
        return None
    return MigrationScript(path, label, revision, down, irreversible, stamp=stamp, doc=doc)


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


# --- checksums ---------------------------------------------------------------------------------

_CHECKSUM_FORMAT = "django-fhir-migrations checksum 1"
_RACY_SECONDS = 3  # a file modified more recently than this is not cached (timestamp granularity)


def source_checksum(source: bytes) -> str:
    """sha256 over the token stream: comments, blank lines and spacing do not change it."""
    digest = hashlib.sha256()
    for kind, text in _significant_tokens(source):
        digest.update(f"{kind}:{text}\n".encode())
    return "sha256:" + digest.hexdigest()


def _checksum(path: Path, stamp: Stamp | None, source: bytes | None) -> str:
    """The checksum of `source` (read from `path` with `stamp`), or of the file as it is now."""
    cache = _cache_file(path)
    if source is None or stamp is None:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ScriptError(path, f"cannot be read ({exc.strerror}).") from None
        now = (stat.st_mtime_ns, stat.st_size)
        if cache is not None and (hit := _cached_checksum(cache, path, now)):
            return hit
        source, stamp = _read_source(path)
    elif cache is not None and (hit := _cached_checksum(cache, path, stamp)):
        return hit
    checksum = source_checksum(source)
    if cache is not None and not sys.dont_write_bytecode:
        _store_checksum(cache, path, stamp, checksum)
    return checksum


def _cache_file(path: Path) -> Path | None:
    try:
        return Path(importlib.util.cache_from_source(str(path), optimization="")).with_suffix(".fhirsum")
    except (NotImplementedError, ValueError):
        return None


def _cached_checksum(cache: Path, path: Path, stamp: Stamp) -> str | None:
    try:
        record = json.loads(cache.read_bytes())
        if (record["format"], record["path"], record["mtime_ns"], record["size"]) == (
                _CHECKSUM_FORMAT, str(path), *stamp):
            checksum = record["checksum"]
            return checksum if isinstance(checksum, str) and checksum.startswith("sha256:") else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _store_checksum(cache: Path, path: Path, stamp: Stamp, checksum: str) -> None:
    mtime_ns, _ = stamp
    if time.time_ns() - mtime_ns < _RACY_SECONDS * 1_000_000_000:
        return  # it may still change within one timestamp tick, keeping its size: do not vouch
    record = {"format": _CHECKSUM_FORMAT, "path": str(path), "mtime_ns": mtime_ns, "size": stamp[1],
              "checksum": checksum}
    temporary = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(record))
        os.chmod(temporary, 0o644)
        os.replace(temporary, cache)
        temporary = None
    except OSError:
        pass  # a read-only folder has no cache
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python 3.12+ splits f-strings
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _significant_tokens(source: bytes):
    lines = source.decode("utf-8", errors="replace").splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
    depth = 0
    start: tuple[int, int] | None = None
    for tok in tokens:
        if _FSTRING_START is not None and tok.type == _FSTRING_START:
            if depth == 0:
                start = tok.start
            depth += 1
            continue
        if depth:
            if tok.type == _FSTRING_END:
                depth -= 1
                if depth == 0 and start is not None:
                    # Rebuild the f-string as one STRING token, as Python <= 3.11 reports it.
                    yield "STRING", _slice(lines, start, tok.end)
            continue
        if tok.type in _SKIPPED:
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE):
            yield tokenize.tok_name[tok.type], ""
            continue
        yield ("OP" if tok.type == tokenize.OP else tokenize.tok_name[tok.type]), tok.string


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (srow, scol), (erow, ecol) = start, end
    if srow == erow:
        return lines[srow - 1][scol:ecol]
    parts = [lines[srow - 1][scol:], *lines[srow: erow - 1], lines[erow - 1][:ecol]]
    return "".join(parts)
