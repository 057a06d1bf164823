"""One migration file: its metadata read, its code imported once, and its fingerprint.

A script declares `revision`, `down_revision` (None, the seed tool's string 'None', a revision,
or a tuple of revisions for a merge), and `upgrade` / `downgrade`, which take `ctx` or, in the
seed tool's style, no argument.

Reading is split in two, so a status over thousands of files does not execute thousands of
modules:

* `read_script` takes the metadata a graph needs from the text of a file of the plain form
  `fhirmakemigration` writes (scan.py says which files those are). Any other file is imported
  there and then, exactly as `load_script` does, so every problem it has is reported with the
  same message as before. What the fast read cannot see is a problem in the rest of the code:
  a syntax error inside a function body, an exception raised while importing, `upgrade`
  rebound by code the scan does not recognise.
* `MigrationScript.ensure_loaded()` imports the module and validates it fully (the same checks
  and messages as ever), and refuses if the file no longer declares what was read. `run`,
  `module` and `load_script` go through it, so nothing runs unvalidated code.

The checksum (checksum.py: over the code's tokens, cached in `__pycache__`) is computed on first
use: only recording and drift checks need it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import keyword
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .checksum import Stamp, file_checksum, read_source
from .errors import ScriptError
from .frames import script_frame
from .scan import scan_plain

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
            self._checksum = file_checksum(self.path, self._stamp, self._source)
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
        source, stamp = read_source(self.path)
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
    source, stamp = read_source(path)
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


def _read_plain(path: Path, label: str, source: bytes, stamp: Stamp) -> MigrationScript | None:
    """The script, if the file has the plain form and its text alone says what the module will
    hold (scan.py), with values an import would accept; None when it must be imported to know."""
    declared = scan_plain(source)
    if declared is None:
        return None
    revision, irreversible = declared.revision, declared.irreversible
    if (not isinstance(revision, str) or not revision or revision == SEED_NONE
            or " " in revision or not isinstance(irreversible, bool)):  # a scanned literal's only whitespace is " "
        return None  # the import reports it, with the value as Python sees it
    try:
        down = parse_down_revision(path, declared.down_revision)
    except ScriptError:
        return None
    if revision in down:
        return None
    return MigrationScript(path, label, revision, down, irreversible, stamp=stamp, doc=declared.doc)
