"""When a failed request may be sent again, and how long to wait first.

Only what is safe to repeat is repeated: a request that never reached the server (connection
refused, connect timeout) always; a request that may have been processed (read timeout, reset
after sending, 502/504 from a gateway) only if repeating it cannot change the outcome (GET, PUT,
DELETE, conditional create). 429 and 503 mean "not processed, come back later" and are retried
for every method, honouring Retry-After.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import requests

from ..clock import http_date

ALWAYS_RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_RETRY_STATUSES = frozenset({502, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 120.0

    def retry_status(self, status: int, idempotent: bool) -> bool:
        return status in ALWAYS_RETRY_STATUSES or (idempotent and status in IDEMPOTENT_RETRY_STATUSES)

    def retry_exception(self, exc: requests.RequestException, idempotent: bool) -> bool:
        if not isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return False
        if isinstance(exc, requests.exceptions.SSLError):
            return False  # a certificate problem will not fix itself
        return idempotent or never_reached_server(exc)

    def delay(self, attempt: int, response: requests.Response | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        if response is not None:
            after = parse_retry_after(response.headers.get("Retry-After"))
            if after is not None:
                return min(after, self.max_retry_after)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.75 + random.random() / 2)


def never_reached_server(exc: requests.RequestException) -> bool:
    """True when the request cannot have been processed: no connection was ever made."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        return "NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text
    return False


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = http_date(value)
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
