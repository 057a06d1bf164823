"""A script's fingerprint: a checksum of its code's tokens, cached next to its bytecode.

The checksum covers the code's tokens, not its layout, so reformatting or editing comments does
not count as a change (and it does not depend on the Python version's AST shape, which would
make every interpreter upgrade look like drift).

Tokenizing is the most expensive part of loading, and only recording and drift checks need it,
so `MigrationScript.checksum` asks for it on first use. It is cached next to the bytecode, in
the scripts folder's `__pycache__` (`<stem>.<python tag>.fhirsum`, honouring
PYTHONPYCACHEPREFIX and PYTHONDONTWRITEBYTECODE): Python's own place for data derived from a
source file, which packagers and `.gitignore`s already exclude. An entry holds the file's path,
size and mtime_ns and is used only when all three match the file as it is now; a file modified
in the last few seconds is not cached at all, so an edit within one timestamp tick that keeps
the size cannot be mistaken for the cached version. A folder that cannot be written to simply
has no cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import tokenize
from pathlib import Path

from .errors import ScriptError

Stamp = tuple[int, int]  # (st_mtime_ns, st_size): what identifies a version of a file on disk

_CHECKSUM_FORMAT = "django-fhir-migrations checksum 1"
_RACY_SECONDS = 3  # a file modified more recently than this is not cached (timestamp granularity)


def source_checksum(source: bytes) -> str:
    """sha256 over the token stream: comments, blank lines and spacing do not change it."""
    digest = hashlib.sha256()
    for kind, text in _significant_tokens(source):
        digest.update(f"{kind}:{text}\n".encode())
    return "sha256:" + digest.hexdigest()


def read_source(path: Path) -> tuple[bytes, Stamp]:
    """The file's bytes and the stamp of that version of it."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            source = handle.read()
    except OSError as exc:
        raise ScriptError(path, f"cannot be read ({exc.strerror}).") from None
    return source, (stat.st_mtime_ns, stat.st_size)


def file_checksum(path: Path, stamp: Stamp | None, source: bytes | None) -> str:
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
        source, stamp = read_source(path)
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
