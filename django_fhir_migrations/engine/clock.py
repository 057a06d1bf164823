"""Time as the state, the lease and the AuditEvents write it: UTC, FHIR dateTime strings.

Kept apart so that modules needing a timestamp (writer, audit, lock, recorder) do not import
the state's format to get one.
"""

from __future__ import annotations

from datetime import datetime, timezone


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
