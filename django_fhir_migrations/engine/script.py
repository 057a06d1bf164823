"""One migration file: imported once, validated, and fingerprinted.

A script declares `revision`, `down_revision` (None, the seed tool's string 'None', a revision,
or a tuple of revisions for a merge), and `upgrade` / `downgrade`, which take `ctx` or, in the
seed tool's style, no argument. The checksum covers the code's tokens, not its layout, so
reformatting or editing comments does not count as a change (and it does not depend on the
Python version's AST shape, which would make every interpreter upgrade look like drift).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import keyword
import re
import sys
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ScriptError

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


@dataclass(eq=False)
class MigrationScript:
    path: Path
    label: str
    revision: str
    down_revisions: tuple[str, ...]
    module: ModuleType = field(repr=False)
    checksum: str = ""
    irreversible: bool = False

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1

    @property
    def doc(self) -> str:
        text = (self.module.__doc__ or "").strip()
        return text.splitlines()[0] if text else ""

    @property
    def short(self) -> str:
        return self.revision[:12]

    def run(self, direction: str, ctx: Any) -> Any:
        """Call upgrade/downgrade, passing ctx only to functions that take an argument."""
        func: Callable[..., Any] = getattr(self.module, direction)
        if _takes_no_argument(func):
            return func()
        return func(ctx)

    def __str__(self) -> str:
        return f"{self.name} ({self.short})"


# Each file is imported once per process: keyed by path and by what is on disk, so a file that
# is edited (tests, a long-lived admin process) is read again, and an unchanged one never is.
_CACHE: dict[Path, tuple[tuple[int, int], MigrationScript]] = {}


def load_script(path: Path, label: str = "dir") -> MigrationScript:
    # absolute(), not resolve(): a symlinked script is named after the link, where it is listed.
    path = Path(path).absolute()
    try:
        stat = path.stat()
        source = path.read_bytes()
    except OSError as exc:
        raise ScriptError(path, f"cannot be read ({exc.strerror}).") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHE.get(path)
    if cached and cached[0] == stamp and cached[1].label == label:
        return cached[1]
    module = _import(path, source)
    script = _validate(path, label, module)
    script.checksum = source_checksum(source)
    _CACHE[path] = (stamp, script)
    return script


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
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ScriptError(
            path, f"raised {type(exc).__name__} while being imported: {exc}"
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
    irreversible = getattr(module, "irreversible", False)
    if not isinstance(irreversible, bool):
        raise ScriptError(path, f"`irreversible` must be True or False, got {irreversible!r}.")
    return MigrationScript(
        path=path, label=label, revision=revision, down_revisions=down, module=module,
        irreversible=irreversible,
    )


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


def source_checksum(source: bytes) -> str:
    """sha256 over the token stream: comments, blank lines and spacing do not change it."""
    digest = hashlib.sha256()
    for kind, text in _significant_tokens(source):
        digest.update(f"{kind}:{text}\n".encode())
    return "sha256:" + digest.hexdigest()


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
