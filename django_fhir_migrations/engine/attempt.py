"""One run of one migration's upgrade (or undo): its id, what it continues, its journal.

An attempt gets a fresh id, the tag of every Provenance its writes leave. Before its first
write it is recorded in the state (a `migration-attempt` extension, fenced by the lease like
any state write), so that if the process dies the next `fhirmigrate` finds it and continues:
the new attempt lists the interrupted ones as `previous` and its journal skips what they wrote.
While it runs, each lease renewal also records how many resources it has written (what
`fhirshowmigrations` shows as "partially applied"); if it fails, the error is recorded too.
When the migration is recorded as applied, its applied record keeps the ids of every attempt
that wrote (what `ctx.undo()` reverts) and the attempt record goes, in the same state write.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING

from .audit import Actor, error_text
from .clock import isoformat, utcnow
from .config import Settings
from .control import CHECK_EVERY, StopRequested
from .errors import FhirMigrationError
from .events import EventStream
from .fhir.client import FhirConnection
from .journal import Journal
from .provenance import Writer
from .redaction import scrub
from .resume import ResumeIndex
from .script import MigrationScript
from .state import AttemptRecord, ControlRequest, MigrationState
from .throttle import Throttle

if TYPE_CHECKING:
    from .lock import MigrationLock


class Attempt:
    def __init__(self, lock: MigrationLock, script: MigrationScript, direction: str, *,
                 settings: Settings, connection: FhirConnection, actor: Actor, events: EventStream,
                 reverts: tuple[str, ...] = (), throttle: Throttle | None = None):
        """`reverts`: a cancel, the upgrade attempts whose writes this (downgrade) attempt
        reverts; kept in its record, so that an interrupted cancel can be finished."""
        assert lock.state is not None
        self.lock = lock
        self.script = script
        self.direction = direction
        earlier = lock.state.attempt_for(script.revision, direction)
        self.reverts = reverts or (earlier.reverts if earlier else ())
        self.paused = ""
        self.total: int | None = earlier.total if earlier else None  # from ctx.progress(total=)
        self._checked = time.monotonic()
        self._check_mutex = threading.Lock()
        self.previous: tuple[str, ...] = earlier.attempts if earlier else ()
        self.own_start = isoformat(utcnow())
        self.started_at = earlier.started_at if earlier else self.own_start
        self.written_before = earlier.written if earlier else 0
        self.job, self.job_started = (earlier.job, earlier.job_started) if earlier else ("", "")
        # upgrade() finished earlier with this very script and only verify() failed: run that alone.
        self.upgraded = earlier.upgraded if earlier else ""
        self.verify_only = bool(self.upgraded) and self.upgraded == script.checksum
        self.id = uuid.uuid4().hex
        writer = Writer(attempt=self.id, revision=script.revision, name=script.name,
                        person=actor.describe(), command=actor.command, signer=settings.signer,
                        direction=direction) if settings.provenance else None
        version = lock.state.version_id or ""
        self.journal = Journal(connection, writer, previous=self.previous if writer else (),
                               on_start=self._record_start, integer_versions=version.isdigit(),
                               on_boundary=self.checkpoint, throttle=throttle)
        if earlier and writer is not None and not self.verify_only:
            # What the interrupted attempts wrote, from their own signed records: the count
            # said is what resume found, not what the last lease renewal managed to record.
            index = self.journal.index = ResumeIndex(connection, self.previous, writer.signer)
            events.emit("resumed", direction=direction, script=script, count=index.found,
                        detail=_ignored(index))

    @property
    def started(self) -> bool:
        return self.journal.started

    @property
    def ids(self) -> tuple[str, ...]:
        """Every attempt of this application that wrote something (what undo reverts)."""
        return self.previous + ((self.id,) if self.started else ())

    def record(self, error: str = "") -> AttemptRecord:
        return AttemptRecord(
            revision=self.script.revision, direction=self.direction,
            attempts=self.previous + (self.id,), started_at=self.started_at,
            current_started=self.own_start, current_base=self.written_before,
            written=self.written_before + self.journal.written, updated_at=isoformat(utcnow()),
            error=error, job=self.job, job_started=self.job_started, upgraded=self.upgraded,
            paused=self.paused, reverts=self.reverts, total=self.total)

    def recording(self, state: MigrationState) -> MigrationState:
        """The state with this attempt's progress in it (for lease renewals)."""
        if not self.started:
            return state
        return state.with_attempt(self.record(), self.script.revision)

    def record_job(self, status_url: str, started: str) -> None:
        """A server-side bulk job was started: recorded before anything else happens, so a
        killed run re-attaches to it instead of starting a second one."""
        self.job, self.job_started = status_url, started
        self.journal.start()
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def checkpoint(self) -> None:
        """At a bundle boundary: at most every CHECK_EVERY seconds, write the progress (which
        renews the lease) and look at what comes back for an operator's stop request."""
        with self._check_mutex:
            now = time.monotonic()
            if now - self._checked < CHECK_EVERY:
                return
            self._checked = now
            state = self.lock.update(self.recording)
        control = state.control
        if control is not None and control.token == self.lock.token:
            raise StopRequested(control)

    def pause(self, request: ControlRequest) -> None:
        """Stopped on request: recorded as paused (with its count), the request answered."""
        self.paused = f"by {request.requested_by} at {request.requested_at}"
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision)
                         .with_control(None))

    def mark_upgraded(self, checksum: str) -> None:
        """upgrade() returned; verify() comes next. Recorded, so that when verify() fails a
        rerun runs verify() alone (unless the script changed since)."""
        self.upgraded = checksum
        self.journal.start()
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def _record_start(self) -> None:
        # Before the first write leaves: a resumed run must be able to find this attempt.
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def stopped(self, error: BaseException) -> None:
        """The script failed or was interrupted: record why, and how far it got (best effort:
        the lease may be lost already; the renewals recorded the progress until then)."""
        if not self.started:
            return
        text = scrub(error_text(error))[:300]
        try:
            self.lock.update(lambda state: state.with_attempt(self.record(text), self.script.revision))
        except FhirMigrationError:
            pass


def _ignored(index: ResumeIndex) -> str:
    """What resume would not trust, for the `resumed` event (empty when everything verified)."""
    if not index.ignored_count:
        return ""
    more = f" and {index.ignored_count - len(index.ignored)} more" if index.ignored_count > len(index.ignored) else ""
    return (f"{index.ignored_count} record(s) tagged with the interrupted attempt could not be "
            f"verified as this tool's and were ignored: {', '.join(index.ignored)}{more}")
