"""Django signals for what happens to a migration, sent in the process where it happens.

The engine reports events and knows nothing of Django (events.py); `SignalSender` is one more
listener on those events, added by every Django front door (the fhir* commands, the admin's
actions, the background task), which turns six of them into these signals:

    migration_started    a migration's upgrade or downgrade begins
    migration_applied    an upgrade was recorded as applied
    migration_reverted   a downgrade was recorded as reverted
    migration_failed     an upgrade or downgrade raised (or was interrupted) and was not recorded
    migration_paused     a running migration stopped at an operator's request (`--pause`)
    migration_cancelled  what an unfinished application wrote was reverted (`--cancel`)

Every signal is sent with `sender=SignalSender` and these keyword arguments (a receiver
takes `**kwargs`, as Django asks, so new ones can be added):

    revision, name, label   the migration (revision id, name, app label or folder)
    state_id, base_url      which state, on which FHIR server
    direction               "upgrade" or "downgrade"
    fake                    recorded without running (--fake)
    duration                seconds it ran (applied, reverted), else None
    count                   applied: refused entries within its failure budget; paused:
                            resources written so far; cancelled: resources reverted; else 0
    error                   failed: the error text (scrubbed of credentials), else ""
    by                      paused, cancelled: who asked; else who ran it

Receivers run synchronously, inside the migrating process, between two steps of the run: keep
them short (a webhook with a timeout of a few seconds), or hand the work to a queue. A
receiver that raises is logged and skipped; it never stops a migration. Signals are sent only
in Django processes: a run started with the `fhir-migrations` CLI or Flask sends none.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from .engine.config import Settings
from .engine.events import ApplyFailed, ApplyStart, ApplySuccess, Cancelled, Event, Paused, StopRequested
from .engine.lock import current_user
from .engine.redaction import ScrubbingFilter, scrub
from .engine.script import MigrationScript

logger = logging.getLogger("django_fhir_migrations")

# send_robust logs a failing receiver's traceback there (Django 5+): scrubbed, as our own logs.
_dispatch_logger = logging.getLogger("django.dispatch")
if not any(isinstance(f, ScrubbingFilter) for f in _dispatch_logger.filters):
    _dispatch_logger.addFilter(ScrubbingFilter())

migration_started = Signal()
migration_applied = Signal()
migration_reverted = Signal()
migration_failed = Signal()
migration_paused = Signal()
migration_cancelled = Signal()


class SignalSender:
    """An event listener that sends the signals above; one per Project (it remembers whether
    this process only asked another one to stop)."""

    def __init__(self, settings: Settings, *, by: str = ""):
        self.state_id = settings.state_id
        self.base_url = settings.base_url or ""
        self.by = by or settings.applied_by or current_user()
        self.asked_another = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, StopRequested):
            # From here on this process reports what the *running* one did (and signalled, if
            # it is a Django process): sending the same signal twice would post twice.
            self.asked_another = True
        elif isinstance(event, ApplyStart):
            self.send(migration_started, event.script, direction=event.direction, fake=event.fake)
        elif isinstance(event, ApplySuccess):
            upgrade = event.direction == "upgrade"
            self.send(migration_applied if upgrade else migration_reverted, event.script,
                      direction=event.direction, fake=event.fake, duration=event.duration,
                      count=event.failures if upgrade else 0)
        elif isinstance(event, ApplyFailed):
            self.send(migration_failed, event.script, direction=event.direction, error=event.error)
        elif isinstance(event, Paused) and not self.asked_another:
            self.send(migration_paused, event.script, count=event.count, by=event.by or event.when)
        elif isinstance(event, Cancelled) and not event.by_running_process and event.script is not None:
            # By the running process: it sent the signal there.
            self.send(migration_cancelled, event.script, count=event.count, by=event.by)

    def send(self, signal: Signal, script: MigrationScript | None, **extra: Any) -> None:
        arguments: dict[str, Any] = {
            "revision": script.revision if script else "",
            "name": script.name if script else "",
            "label": script.label if script else "",
            "state_id": self.state_id,
            "base_url": self.base_url,
            "direction": "upgrade",
            "fake": False,
            "duration": None,
            "count": 0,
            "error": "",
            "by": self.by,
        }
        arguments.update(extra)
        for _receiver, result in signal.send_robust(sender=SignalSender, **arguments):
            if isinstance(result, Exception):
                logger.error("A receiver of %s failed (%s: %s); the migration goes on.",
                             _name(signal), type(result).__name__, scrub(str(result)))


def _name(signal: Signal) -> str:
    return next((name for name, value in globals().items() if value is signal), "a signal")


__all__ = [
    "SignalSender", "migration_applied", "migration_cancelled", "migration_failed", "migration_paused",
    "migration_reverted", "migration_started",
]
