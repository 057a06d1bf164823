"""Stopping the tool's background threads (the page reader, bundle workers) within bounded time.

A thread that waits to retry (a 503 with `Retry-After: 120`) must not hold a stopping run for
two minutes: a thread that runs inside `cancellable(event)` sleeps through `pause`, which ends
as soon as the event is set and raises RequestCancelled instead of sending the request again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import FhirServerError

_cancel = threading.local()


class RequestCancelled(FhirServerError):
    """A background thread was told to stop while it waited to retry (SIGTERM, a search left
    early, a failed bundle block): it stops now instead of after a Retry-After of minutes."""


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """While inside, this thread's waits before a retry end as soon as `event` is set."""
    previous = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield
    finally:
        _cancel.event = previous


def pause(seconds: float, stopping: threading.Event | None = None) -> None:
    """Sleep before a retry. On a cancellable thread, give up (RequestCancelled) when told to
    stop; once `stopping` is set (the run is being interrupted), return at once, so that the
    last writes (the failure, the lease's release) are not held behind a long Retry-After."""
    event = getattr(_cancel, "event", None)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if event is not None and event.is_set():
            raise RequestCancelled("The request was not retried: the run is stopping.")
        if stopping is not None and stopping.is_set():
            return
        time.sleep(min(left, 0.05))
    if event is not None and event.is_set():
        raise RequestCancelled("The request was not retried: the run is stopping.")
