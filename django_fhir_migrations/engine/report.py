"""How the engine talks to whoever runs it.

The engine never prints directly: it calls a Reporter. Django commands pass one that styles
lines with `self.style`; the CLI and Flask pass the plain one. `verbosity` follows Django's
meaning: 0 silent but for errors, 1 normal, 2 more, 3 everything.
"""

from __future__ import annotations

import sys
from typing import IO

from .redaction import scrub


class Reporter:
    def __init__(self, stream: IO[str] | None = None, verbosity: int = 1):
        self.stream = stream or sys.stdout
        self.verbosity = verbosity

    def style(self, kind: str, text: str) -> str:
        return text

    def _write(self, kind: str, text: str, level: int) -> None:
        if self.verbosity >= level:
            self.stream.write(self.style(kind, scrub(text)) + "\n")
            flush = getattr(self.stream, "flush", None)
            if flush:
                flush()

    def heading(self, text: str) -> None:
        self._write("heading", text, 1)

    def info(self, text: str, level: int = 1) -> None:
        self._write("info", text, level)

    def success(self, text: str, level: int = 1) -> None:
        self._write("success", text, level)

    def warning(self, text: str) -> None:
        self._write("warning", text, 1)

    def error(self, text: str) -> None:
        self._write("error", text, 0)
