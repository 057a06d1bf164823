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


def pause(seconds: float) -> None:
    """Sleep before a retry; on a cancellable thread, give up when told to stop."""
    event = getattr(_cancel, "event", None)
    if event is None:
        time.sleep(seconds)
    elif event.wait(seconds):
        raise RequestCancelled("The request was not retried: the run is stopping.")
