"""One run of one migration's upgrade (or undo): its id, what it continues, its journal.

An attempt gets a fresh id, the tag of every Provenance its writes leave. Before its first
write it is recorded in the state (a `migration-attempt` extension, fenced by the lease like
any state write), so that if the process dies the next `fhirmigrate` finds it and continues:
the new attempt lists the interrupted ones as `previous` and its journal skips what they wrote.
That record costs no request of its own where the executor knows the migration in advance: an
`Opening` is written with the state write just before it runs (the lease taken for the run,
or the record of the migration before it), with an attempt id chosen up front; the attempt
then finds itself recorded. An opened attempt that never wrote is taken out of the state again
with the lease's release (`Opening.revert`), so a failure before any write leaves the state
as it found it.
While it runs, each lease renewal also records how many resources it has written (what
`fhirshowmigrations` shows as "partially applied"); if it fails, the error is recorded too.
When the migration is recorded as applied, its applied record keeps the ids of every attempt
that wrote (what `ctx.undo()` reverts) and the attempt record goes, in the same state write.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .audit import Actor, error_text
from .clock import isoformat, utcnow
from .config import Settings
from .control import CHECK_EVERY, StopRequested
from .events import EventStream, Resumed
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


@dataclass
class Opening:
    """The state change that records an attempt of `revision` before it runs (idempotent: a
    state that already holds it is returned unchanged), and `revert`, which takes it out again
    while it has written nothing. The record continues the revision's interrupted attempts, as
    `Attempt` would record itself. A revision with a record in the other direction (an
    unfinished cancel) is not opened: the attempt then records itself, after the executor's
    checks, as before."""

    revision: str
    direction: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    replaced: AttemptRecord | None = None  # the record it stands in for (the interrupted attempts')

    def __call__(self, state: MigrationState) -> MigrationState:
        current = state.attempt_for(self.revision, self.direction)
        if current is not None and current.current == self.id:
            return state
        if any(a.revision == self.revision and a.direction != self.direction for a in state.attempts):
            return state
        self.replaced = current
        now = isoformat(utcnow())
        return state.with_attempt(AttemptRecord(
            revision=self.revision, direction=self.direction,
            attempts=(current.attempts if current else ()) + (self.id,),
            started_at=current.started_at if current else now,
            current_started=now, current_base=current.written if current else 0,
            written=current.written if current else 0, updated_at=now,
            job=current.job if current else "", job_started=current.job_started if current else "",
            job_call=current.job_call if current else 0, jobs_done=current.jobs_done if current else (),
            upgraded=current.upgraded if current else "", reverts=current.reverts if current else (),
            total=current.total if current else None),
            self.revision)

    def revert(self, state: MigrationState) -> MigrationState:
        current = state.attempt_for(self.revision, self.direction)
        if current is None or current.current != self.id:
            return state
        return state.with_attempt(self.replaced, self.revision)


class FirstOpening:
    """An Opening for the first migration of a plan computed from the state it is applied to:
    what the lease's write carries (the plan under the lock is computed from that same state).
    `opening` is the one it made last (None when the plan was empty)."""

    def __init__(self, planner: Callable[[MigrationState], list[MigrationScript]], direction: str):
        self.planner = planner
        self.direction = direction
        self.opening: Opening | None = None

    def __call__(self, state: MigrationState) -> MigrationState:
        plan = self.planner(state)
        if not plan:
            self.opening = None
            return state
        if self.opening is None or self.opening.revision != plan[0].revision:
            self.opening = Opening(plan[0].revision, self.direction)
        return self.opening(state)

    def revert(self, state: MigrationState) -> MigrationState:
        return self.opening.revert(state) if self.opening is not None else state


class Attempt:
    def __init__(self, lock: MigrationLock, script: MigrationScript, direction: str, *,
                 settings: Settings, connection: FhirConnection, actor: Actor, events: EventStream,
                 reverts: tuple[str, ...] = (), throttle: Throttle | None = None,
                 opened: Opening | None = None):
        """`reverts`: a cancel, the upgrade attempts whose writes this (downgrade) attempt
        reverts; kept in its record, so that an interrupted cancel can be finished. `opened`:
        the Opening a state write made for it before it runs (see the module docstring)."""
        assert lock.state is not None
        self.lock = lock
        self.script = script
        self.direction = direction
        earlier = lock.state.attempt_for(script.revision, direction)
        # Recorded already by the state write before it (the lease, or the record of the
        # migration before it): its first write costs no request of its own.
        self.opened = (opened is not None and opened.revision == script.revision and earlier is not None
                       and earlier.current == opened.id)
        self.reverts = reverts or (earlier.reverts if earlier else ())
        self.paused = ""
        self.total: int | None = earlier.total if earlier else None  # from ctx.progress(total=)
        self._checked = time.monotonic()
        self._check_mutex = threading.Lock()
        if self.opened:
            assert opened is not None and earlier is not None
            self.id = opened.id
            self.previous: tuple[str, ...] = earlier.previous
            self.own_start = earlier.current_started or isoformat(utcnow())
        else:
            self.id = uuid.uuid4().hex
            self.previous = earlier.attempts if earlier else ()
            self.own_start = isoformat(utcnow())
        self.started_at = earlier.started_at if earlier else self.own_start
        self.written_before = earlier.written if earlier else 0
        self.job, self.job_started = (earlier.job, earlier.job_started) if earlier else ("", "")
        self.job_call = earlier.job_call if earlier else 0
        self.jobs_done = earlier.jobs_done if earlier else ()
        self.bulk_calls = 0  # ctx.bulk_patch calls of this attempt so far (a job names its call)
        # upgrade() finished earlier with this very script and only verify() failed: run that alone.
        self.upgraded = earlier.upgraded if earlier else ""
        self.verify_only = bool(self.upgraded) and self.upgraded == script.checksum
        writer = Writer(attempt=self.id, revision=script.revision, name=script.name,
                        person=actor.describe(), command=actor.command, signer=settings.signer,
                        direction=direction) if settings.provenance else None
        version = lock.state.version_id or ""
        self.journal = Journal(connection, writer, previous=self.previous if writer else (),
                               on_start=self._record_start, integer_versions=version.isdigit(),
                               on_boundary=self.checkpoint, throttle=throttle)
        if self.previous and writer is not None and not self.verify_only:
            # What the interrupted attempts wrote, from their own signed records: the count
            # said is what resume found, not what the last lease renewal managed to record.
            index = self.journal.index = ResumeIndex(connection, self.previous, writer.signer)
            events.emit(Resumed(script, index.found, ignored=tuple(index.ignored),
                                ignored_count=index.ignored_count))

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
            error=error, job=self.job, job_started=self.job_started, job_call=self.job_call,
            jobs_done=self.jobs_done, upgraded=self.upgraded,
            paused=self.paused, reverts=self.reverts, total=self.total)

    def recording(self, state: MigrationState) -> MigrationState:
        """The state with this attempt's progress in it (for lease renewals)."""
        if not self.started:
            return state
        return state.with_attempt(self.record(), self.script.revision)

    def record_job(self, status_url: str, started: str, call: int) -> None:
        """A server-side bulk job was started by the script's `call`-th ctx.bulk_patch: recorded
        before anything else happens, so a killed run re-attaches to it instead of starting a
        second one."""
        self.job, self.job_started, self.job_call = status_url, started, call if status_url else 0
        self.journal.start()
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def record_job_done(self, call: int, count: int) -> None:
        """The job of the `call`-th ctx.bulk_patch finished and its changes are recorded: a
        later attempt (the script runs again from the top) passes that call by, so the next
        call's job is started, and this one never twice."""
        self.jobs_done = self.jobs_done + (f"{call}:{count}",)
        self.job, self.job_started, self.job_call = "", "", 0
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def job_done(self, call: int) -> int | None:
        """How many resources the `call`-th ctx.bulk_patch's job changed, if it finished in an
        earlier attempt; None when it did not."""
        for done in self.jobs_done:
            number, count = done.split(":")
            if int(number) == call:
                return int(count)
        return None

    def owns_job(self, call: int) -> bool:
        """Whether the recorded job is the `call`-th ctx.bulk_patch's (a record from before
        calls were counted names none: the first call re-attaches, as it did then)."""
        return bool(self.job) and self.job_call in (call, 0 if call == 1 else -1)

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
        if self.opened:  # it is in the state already; it has written now, so it stays there
            self.lock.parting = None
            return
        self.lock.update(lambda state: state.with_attempt(self.record(), self.script.revision))

    def stopped(self, error: BaseException) -> None:
        """The script failed or was interrupted: record why, and how far it got, with the
        release of the lease that follows (best effort: the lease may be lost already; the
        renewals recorded the progress until then). An opened attempt that wrote nothing leaves
        the state as it was (the lock's `parting` set by the executor reverts the opening)."""
        if not self.started:
            return
        record = self.record(scrub(error_text(error))[:300])
        self.lock.parting = lambda state: state.with_attempt(record, self.script.revision)
