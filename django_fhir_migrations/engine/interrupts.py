"""SIGTERM and SIGHUP end a migration run the way Ctrl-C (SIGINT) does.

A deploy system stops a process with SIGTERM; a closed terminal sends SIGHUP. Left to Python's
defaults, both kill the process on the spot: the lease stays on the state until its TTL runs
out and no AuditEvent says what happened. While the engine holds the lock, they raise
`Interrupted` (a KeyboardInterrupt) instead, so the same clean-up as for Ctrl-C runs: the
failed migration is audited, nothing more is recorded, the lease is released, and the front
end exits with 128 + the signal number. A second signal during that clean-up is ignored (and
logged) so the clean-up itself is not cut short.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("django_fhir_migrations")

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)
SIGINT_EXIT = 130


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is 128 + its number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    return interrupt.exit_code if isinstance(interrupt, Interrupted) else SIGINT_EXIT


def interrupt_text(interrupt: KeyboardInterrupt) -> str:
    """'stopped by SIGTERM', or 'SIGINT' for Ctrl-C (a bare KeyboardInterrupt has no text, and
    an exception is always truthy, so `exc or 'SIGINT'` printed empty parentheses)."""
    return str(interrupt) or "SIGINT"


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise Interrupted in the main thread (elsewhere: no-op,
    Python only delivers signals to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if raised.is_set():
            logger.warning("Ignoring %s: the interrupted run is cleaning up (releasing the lock)",
                           signal.Signals(signum).name)
            return
        raised.set()
        raise Interrupted(signum)

    previous = {}
    for signum in HANDLED:
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not settable here (embedded interpreter)
            continue
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
