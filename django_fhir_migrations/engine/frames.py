"""Where in a migration script an exception was raised, for a one-paragraph error.

A script that fails with `AttributeError: 'MigrationContext' object has no attribute 'serch'`
is fixed faster when the message says which line of which file, as pytest shows it, without
asking for --traceback: the deepest frame of the traceback that runs in the script's own file,
and that line's text. For a mistyped name, Python's own "Did you mean" (which 3.11 only prints
with a full traceback) is added from the same facts.
"""

from __future__ import annotations

import builtins
import difflib
import linecache
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ScriptFrame:
    path: str
    line: int
    function: str
    text: str  # the line's source, stripped ("" when the file cannot be read)

    def describe(self) -> str:
        code = f": {self.text}" if self.text else ""
        return f"at {self.path}:{self.line} in {self.function}(){code}"


def script_frame(error: BaseException, path: Path | str) -> ScriptFrame | None:
    """The deepest frame of `error`'s traceback that runs in the file `path`, if any."""
    wanted = os.path.normcase(os.path.abspath(path))
    found: ScriptFrame | None = None
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.normcase(os.path.abspath(code.co_filename)) == wanted:
            text = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            found = ScriptFrame(str(path), tb.tb_lineno, code.co_name, text[:200])
        tb = tb.tb_next
    return found


def suggestion(error: BaseException) -> str:
    """"Did you mean: 'search'?" for a mistyped attribute or name; "" otherwise."""
    name = getattr(error, "name", None)
    if not isinstance(name, str) or not name:
        return ""
    if isinstance(error, AttributeError):
        try:
            candidates = [c for c in dir(error.obj) if not c.startswith("__")]
        except Exception:  # noqa: BLE001 - an object whose dir() fails suggests nothing
            return ""
    elif isinstance(error, NameError):
        frame = _deepest_frame(error)
        scopes = [frame.f_locals, frame.f_globals] if frame is not None else []
        candidates = [c for scope in scopes for c in scope] + dir(builtins)
    else:
        return ""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f"Did you mean: {close[0]!r}?" if close and close[0] != name else ""


def _deepest_frame(error: BaseException):
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame if tb is not None else None


__all__ = ["ScriptFrame", "script_frame", "suggestion"]
