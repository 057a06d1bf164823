"""Pausing and cancelling a running migration from another process (any host).

As a long run in Shopify's maintenance_tasks: an operator's request only *asks*; nothing is
killed from outside. `request_stop` writes a `migration-control` request into the state (a
version-aware write, meant for the lease that holds the state now), and the running process
sees it at its next bundle boundary: `Attempt.checkpoint` writes its progress at most every
CHECK_EVERY seconds (which also renews the lease) and reads the request back from that write,
then raises StopRequested. A pause records the attempt as paused and releases the lease (a
plain `fhirmigrate` resumes it); a cancel reverts what the application's attempts wrote and
records nothing as applied. `wait_for_stop` is what the asking process does meanwhile.
"""

from __future__ import annotations

import time

from .clock import isoformat, utcnow
from .errors import LockError, VersionConflictError
from .recorder import StateRecorder
from .state import ControlRequest, MigrationState

CHECK_EVERY = 5.0  # seconds between a running migration's looks at the state (at bundle boundaries)
POLL = 1.0


class StopRequested(BaseException):  # noqa: N818 - a signal to the run, like KeyboardInterrupt
    """Raised at a bundle boundary: an operator asked this run to pause or cancel. Not an
    Exception, so that a script's own `except Exception:` cannot swallow it."""

    def __init__(self, request: ControlRequest):
        super().__init__(request.action)
        self.request = request


def request_stop(recorder: StateRecorder, action: str, requested_by: str
                 ) -> tuple[MigrationState, ControlRequest | None]:
    """Ask the run that holds the lease to `action`; (state, None) when no run holds it."""
    state = recorder.read()
    for _ in range(5):
        if state.lock is None or state.lock_expired():
            return state, None
        request = ControlRequest(action, state.lock.token, requested_by, isoformat(utcnow()))
        try:
            return recorder.write(state.with_control(request)), request
        except VersionConflictError:  # the holder wrote meanwhile (progress, a renewal): again
            state = recorder.reread(state)
    raise LockError("The migration state kept changing while asking the running migration to stop; "
                    "nothing was asked.", "Try again.")


def wait_for_stop(recorder: StateRecorder, request: ControlRequest, timeout: float) -> MigrationState | None:
    """The state once the run holding `request.token` has let its lease go; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        state = recorder.read()
        if state.lock is None or state.lock.token != request.token or state.lock_expired():
            return state
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL)


__all__ = ["CHECK_EVERY", "StopRequested", "request_stop", "wait_for_stop"]
