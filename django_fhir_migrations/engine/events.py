"""What the engine reports while it works: events, not sentences.

The engine never prints. It emits an `Event` (as Django's executor calls
`progress_callback("apply_start", migration, fake)`), and whoever listens turns it into what
they need: the console reporter into the lines a person reads (console.py), the admin page into
a message, a test into assertions, a JSON log into records. A listener must not raise; one
that does is logged and skipped, so a broken display never stops a migration.

Actions and the fields they fill:

    nothing_to_do     direction, detail ("", "another_process", "below_head")
    plan              direction, scripts, detail ("plan" | "check")
    run_start         direction, scripts, fake
    apply_start       direction, script, fake
    apply_success     direction, script, fake, duration, count (failures it was applied with),
                      detail (with failures / a retry's outcome)
    run_done          direction, scripts (done), fake, duration
    dry_run_start     direction, scripts
    dry_run_script    direction, script
    dry_run_done      direction, script, count (writes intercepted)
    write_intercepted script, method, resource_type, resource_id ("" for a create), count (how
                      many resources: 1, or a bulk patch's matches), detail (method, URL and
                      which fields change; never a resource body)
    bundle_intercepted script, detail (batch | transaction), count (its entries); its entries
                      follow as write_intercepted (a bundle is not a write of its own)
    progress          script, detail (label), count (None: work with no count, e.g. a server's
                      bulk job), total, duration (seconds so far), final
    checksum_warning  scripts (edited since applied), detail (the full warning)
    out_of_order      script
    lock_wait         detail (holder), duration (seconds it will wait)
    lock_free         -                 lock_kept   detail (holder)
    lock_broken       detail (holder)   reset       -
    lock_taken_over   detail (holder), count (its pid), reason ("holder_gone": its process is no
                      longer running on this host; "expired": its lease was not renewed in time)
    script_created    detail (path), script_revision, parents
    resumed           script, count (resources the interrupted attempts wrote, as resume
                      found them), detail (records it would not trust, if any)
    records_ignored   script, count, detail (undo: records or targets it would not trust)
    adopted           script, count (attempts), detail (--fake adopting an earlier application)
    bulk_job_forgotten detail (the jobs forgotten; "" when there was none)
    bulk_job_kept     detail
    verify_start      script            verify_only  script (upgrade done earlier; verify again)
    apply_failed      direction, script, detail (the error, scrubbed)
    throttle          detail ("server slow: 2 workers → 1 worker"; "server well again: ...")
    stop_requested    detail ("pause|holder" or "cancel|holder")
    stop_pending      detail (the action not done yet, or "finished": the run ended first)
    paused            script, count (resources written), detail (who asked)
    cancelled         script, count (resources reverted; -1: the running process did it), detail
    nothing_running   detail (state id)          cancel_kept  -
    bundle_failures   script, count, detail (refused entries within the failure budget, grouped)
    retry_start       script, count (failed resources), detail ("edited": its checksum is accepted)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .script import MigrationScript

logger = logging.getLogger("django_fhir_migrations")

Direction = Literal["upgrade", "downgrade"]


@dataclass(frozen=True)
class Event:
    action: str
    direction: Direction = "upgrade"
    script: MigrationScript | None = None
    scripts: tuple[MigrationScript, ...] = ()
    fake: bool = False
    duration: float | None = None
    count: int | None = 0  # None: what was done has no count (a server's bulk job)
    total: int | None = None
    detail: str = ""
    final: bool = False
    script_revision: str = ""
    parents: tuple[str, ...] = field(default=())
    method: str = ""  # an intercepted write's HTTP method
    resource_type: str = ""  # and the resource it writes (no id for a create)
    resource_id: str = ""
    reason: str = ""  # why, as a code (lock_taken_over)


Listener = Callable[[Event], None]


class EventStream:
    """The listeners of one command run; `emit` builds the event and hands it to each."""

    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners: list[Listener] = list(listeners or [])

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, action: str, **fields: object) -> None:
        event = Event(action, **fields)  # type: ignore[arg-type]
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a display must never stop a migration
                logger.exception("An event listener failed on %r", action)


__all__ = ["Direction", "Event", "EventStream", "Listener"]
