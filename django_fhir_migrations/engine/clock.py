"""Time as the state, the lease and the AuditEvents write it: UTC, FHIR dateTime strings.

Kept apart so that modules needing a timestamp (scaffold, audit, lock, recorder) do not import
the state's format to get one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    """A FHIR dateTime with milliseconds and 'Z': 2026-11-26T12:58:46.425Z."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_datetime(value: str | None) -> datetime | None:
    """A FHIR dateTime (or None); None for anything unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def http_date(value: str | None) -> datetime | None:
    """An HTTP date header (RFC 9110: IMF-fixdate, RFC 850 or asctime) as an aware UTC datetime;
    None for anything unreadable. HTTP dates are GMT: the asctime form and "-0000" parse without
    a zone and must not be read as local time."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def seconds_since(moment: str | None, at_least: float) -> float:
    """Seconds from `moment` (a FHIR dateTime) until now, never below `at_least` (what this
    process measured itself: another host's clock may be behind)."""
    start = parse_datetime(moment)
    if start is None or start.tzinfo is None:
        return at_least
    return max(at_least, (utcnow() - start).total_seconds())
