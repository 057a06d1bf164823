"""Decide what to run, take the lock, run it, record it: one migration at a time.

The plan is computed from one read of the state. When nothing is pending that is the only
request made. Otherwise the lock is taken and the plan computed again from the state as it is
now (another replica may have migrated while this one waited). Each migration runs, then is
recorded with a fenced write; a migration that raises stops the run at once and is not
recorded. Re-running continues from there.

State writes are shared where they can be (each is a request, and a run of many small
migrations is mostly requests): the write that takes the lease also records the first
migration's attempt, each migration's record also opens the next one's attempt, the last
record is the write that releases the lease, and each record carries its AuditEvent in the same
transaction. An AuditEvent the server will not take in that transaction is sent on its own
after the record, as before: the audit never decides whether a migration is recorded.

The executor reports through events (events.py), never prose: front ends render them.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import IO

from . import events as ev
from . import failures as failures_record
from .adoption import latest_application
from .applied import History, recording_applied, recording_reverted
from .attempt import Attempt, FirstOpening, Opening
from .audit import Actor, AuditTrail, error_text
from .clock import isoformat, seconds_since, utcnow
from .config import Settings
from .context import MigrationContext
from .control import StopRequested, request_stop, wait_for_stop
from .errors import (
    ChecksumMismatchError,
    FhirMigrationError,
    FhirServerError,
    IrreversibleMigrationError,
    LockError,
    MigrationFailedError,
    RevisionError,
    RunTimeExceededError,
    ServerUnreachableError,
    VerificationError,
    VersionConflictError,
)
from .events import Confirm, Direction, EventStream
from .fhir.client import FhirConnection
from .graph import RevisionGraph
from .interrupts import signals_interrupt
from .loader import MigrationLoader
from .lock import MigrationLock, Mutation, lease_condition
from .recorder import StateRecorder
from .redaction import scrub
from .script import MigrationScript
from .state import STATE_SYSTEM, AppliedMigration, ControlRequest, LockInfo, MigrationState
from .throttle import Throttle
from .undo import undo
from .writes import Failure

logger = logging.getLogger("django_fhir_migrations")


class RunStopped(Exception):
    """The run stopped at an operator's request (pause: exit 0; cancel: 1)."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


@dataclass
class Outcome:
    """What a command did; `exit_code` is what the front end exits with."""

    done: list[MigrationScript] = field(default_factory=list)
    pending: list[MigrationScript] = field(default_factory=list)
    exit_code: int = 0


class MigrationExecutor:
    """Plans and runs upgrades, downgrades, resets and lock breaks on one state.

    Built by `Project` with the loader (the scripts), the connection (the server) and the actor
    (who is acting, for records and AuditEvents); reports through `events`.
    """

    def __init__(self, settings: Settings, loader: MigrationLoader, connection: FhirConnection,
                 *, events: EventStream, actor: Actor, stdout: IO[str] | None = None):
        self.settings = settings
        self.stdout = stdout
        self.loader = loader
        self.connection = connection
        self.events = events
        self.actor = actor
        self.recorder = StateRecorder(connection, settings.state_id)
        self.audit = AuditTrail(connection, actor, enabled=settings.audit_events)
        self.audit_with_record = True  # until the server refuses an AuditEvent in that transaction
        # One per run: the server's normal latency, learnt by the first sends, holds for all.
        self.throttle = Throttle(max_rate=settings.max_rate, adaptive=settings.adaptive_backoff,
                                 workers=settings.workers,
                                 notify=lambda text: events.emit(ev.Throttle(text)))
        connection.observers.append(self.throttle.on_response)

    # --- upgrade -------------------------------------------------------------------------

    def migrate(self, target: str | None = None, *, plan_only: bool = False, fake: bool = False,
                dry_run: bool = False, check: bool = False, lock_timeout: float | None = None,
                ignore_checksums: bool = False) -> Outcome:
        graph = self.loader.valid_graph()
        count = _relative(target, "+", "migrate")
        target_rev = None if count is not None else self._target(graph, target)
        history = History(self.recorder.read(), graph)
        self._check_drift(history, fatal=not (ignore_checksums or plan_only or check))
        plan = history.forwards_plan(target_rev)[:count]
        if not plan:
            below = target_rev is not None and target_rev in history.applied and any(
                r not in graph.ancestors(target_rev) for r in history.applied)
            self.events.emit(ev.NothingToDo(reason="below_head" if below else "",
                                            script=graph.script(target_rev) if below and target_rev else None))
            return Outcome()
        self._warn_out_of_order(history, plan)
        if check:
            self.events.emit(ev.Plan(tuple(plan), check=True))
            return Outcome(pending=plan, exit_code=1)
        if plan_only:
            self.events.emit(ev.Plan(tuple(plan)))
            return Outcome(pending=plan)
        if dry_run:
            return self._dry_run(plan, "upgrade")

        if not fake:
            self._require_signing_key()

        def planned(state: MigrationState) -> list[MigrationScript]:
            return History(state, graph).forwards_plan(target_rev)[:count]

        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            opening = None if fake else FirstOpening(planned, "upgrade")
            try:
                lock.acquire(history.state, self._timeout(lock_timeout), opening=opening)
                # Re-plan from the state as it is now: another replica may have migrated meanwhile.
                plan = planned(lock.held)
                if not plan:
                    self.events.emit(ev.NothingToDo(reason="another_process"))
                    return Outcome()
                return self._run_all(graph, lock, plan, "upgrade", fake,
                                     opened=opening.opening if opening else None)
            finally:
                lock.release()

    # --- downgrade -----------------------------------------------------------------------

    def downgrade(self, target: str | None = None, *, steps: int | None = None,
                  plan_only: bool = False, fake: bool = False, dry_run: bool = False,
                  lock_timeout: float | None = None) -> Outcome:
        graph = self.loader.valid_graph()
        if steps is not None and steps < 1:
            raise RevisionError(f"--steps must be at least 1, got {steps}.")
        if target is not None and steps is not None:
            raise RevisionError("Give either a target or --steps, not both.")
        relative = _relative(target, "-", "downgrade")
        if relative is not None:
            target, steps = None, relative
        state = self.recorder.read()
        plan = self._backwards(History(state, graph), target, steps)
        if not plan:
            self.events.emit(ev.NothingToDo(direction="downgrade"))
            return Outcome()
        irreversible = [s for s in plan if s.irreversible]
        if irreversible and not fake:
            raise IrreversibleMigrationError(irreversible[0])
        edited = [s for s in History(state, graph).drifted() if s in plan]
        if edited and not fake:
            # Its downgrade runs as the file is now, not as it was when it was applied.
            self.events.emit(ev.ChecksumWarning(tuple(edited), direction="downgrade"))
        if plan_only:
            self.events.emit(ev.Plan(tuple(plan), direction="downgrade"))
            return Outcome(pending=plan)
        if dry_run:
            return self._dry_run(plan, "downgrade", state)

        if not fake:
            self._require_signing_key()

        def planned(state: MigrationState) -> list[MigrationScript]:
            return self._backwards(History(state, graph), target, steps)

        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            opening = None if fake else FirstOpening(planned, "downgrade")
            try:
                lock.acquire(state, self._timeout(lock_timeout), opening=opening)
                fresh_plan = planned(lock.held)
                if [s.revision for s in fresh_plan] != [s.revision for s in plan]:
                    # Reverting "one step" twice because two people asked at once would lose data.
                    raise LockError(
                        "The migration state changed while this process waited for the lock; "
                        "nothing was reverted.",
                        "Check `{showmigrations}` and run the downgrade again.",
                    )
                return self._run_all(graph, lock, plan, "downgrade", fake,
                                     opened=opening.opening if opening else None)
            finally:
                lock.release()

    def _backwards(self, history: History, target: str | None, steps: int | None
                   ) -> list[MigrationScript]:
        graph, applied = history.graph, history.applied
        if target in ("zero", "base"):
            return graph.backwards_plan(applied, steps=len(applied))
        if target is None:
            return graph.backwards_plan(applied, steps=steps or 1)
        script = graph.resolve(target)
        if script.revision not in applied:
            raise RevisionError(
                f"Cannot downgrade to {script.name} ({script.revision}): it is not applied. "
                "Downgrade targets are the migration to keep as the new head, or 'zero'."
            )
        return graph.backwards_plan(applied, target=script.revision)

    # --- reset and break-lock ------------------------------------------------------------

    def reset(self, *, lock_timeout: float | None = None) -> Outcome:
        """Forget the state (head := None, no applied list). Runs no migration."""
        state = self.recorder.read()
        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            try:
                lock.acquire(state, self._timeout(lock_timeout))
                state = lock.update(lambda s: replace(s.with_applied([], None), attempts=[]))
                self.audit.record("reset", state=state, detail="head set to None")
            finally:
                lock.release()
        self.events.emit(ev.Reset(self.settings.state_id))
        return Outcome()

    def break_lock(self, confirm: Confirm | None) -> Outcome:
        """Remove a lease on purpose (its holder died and you will not wait for expiry)."""
        state = self.recorder.read()
        if state.lock is None:
            self.events.emit(ev.LockFree(self.settings.state_id))
            return Outcome()
        held: LockInfo = state.lock
        question = ev.BreakLockQuestion(self.settings.state_id, held.describe(), lease_condition(state))
        if confirm is not None and not confirm(question):
            self.events.emit(ev.LockKept(held.describe()))
            return Outcome(exit_code=1)
        for _ in range(5):
            if state.lock is None or state.lock.token != held.token:
                raise LockError("The lock changed hands while breaking it; nothing was changed.",
                                "Look again with {showmigrations}.")
            try:
                state = self.recorder.write(state.with_lock(None))
                break
            except VersionConflictError:
                state = self.recorder.reread(state)
        else:
            raise LockError("The lock holder kept renewing while breaking it; try again.")
        self.audit.record("lock-broken", state=state, detail=f"lock of {held.describe()}")
        self.events.emit(ev.LockBroken(held.describe()))
        return Outcome()

    def forget_bulk_job(self, confirm: Confirm | None, *, lock_timeout: float | None = None) -> Outcome:
        """Forget the bulk job an interrupted attempt started (or may have started): the next
        run starts a new one. For a human who checked that the first is not running."""
        state = self.recorder.read()
        jobs = [a for a in state.attempts if a.job]
        if not jobs:
            self.events.emit(ev.BulkJobForgotten())
            return Outcome()
        described = "; ".join(f"migration {a.revision}: {a.job}" for a in jobs)
        if confirm is not None and not confirm(ev.ForgetBulkJobQuestion(self.settings.state_id, described)):
            self.events.emit(ev.BulkJobKept(described))
            return Outcome(exit_code=1)
        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            try:
                lock.acquire(state, self._timeout(lock_timeout))
                state = lock.update(lambda s: replace(s, attempts=[
                    replace(a, job="", job_started="", job_call=0) for a in s.attempts]))
                self.audit.record("bulk-job-forgotten", state=state, detail=described)
            finally:
                lock.release()
        self.events.emit(ev.BulkJobForgotten(described))
        return Outcome()

    def accept_checksums(self, *, lock_timeout: float | None = None) -> Outcome:
        """Record the current checksum of every applied script edited since it ran (Flyway's
        `repair`): the edit is accepted as what the migration is; nothing runs."""
        graph = self.loader.valid_graph()
        state = self.recorder.read()
        if not History(state, graph).drifted():
            self.events.emit(ev.ChecksumsAccepted())
            return Outcome()
        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            try:
                lock.acquire(state, self._timeout(lock_timeout))
                drifted = History(lock.held, graph).drifted()
                if drifted:
                    checksums = {s.revision: s.checksum for s in drifted}
                    state = lock.update(lambda s: s.with_applied(
                        [replace(e, checksum=checksums.get(e.revision, e.checksum))
                         for e in History(s, graph).entries()], s.head))
                    for script in drifted:
                        self.audit.record("checksums-accepted", script=script, state=state,
                                          detail=f"checksum now {script.checksum}")
            finally:
                lock.release()
        self.events.emit(ev.ChecksumsAccepted(tuple(drifted)))
        return Outcome(done=drifted)

    # --- pieces --------------------------------------------------------------------------

    def _target(self, graph: RevisionGraph, target: str | None) -> str | None:
        if target in (None, "head", "heads"):
            return None
        return graph.resolve(target).revision

    def _timeout(self, lock_timeout: float | None) -> float:
        return self.settings.lock_timeout if lock_timeout is None else lock_timeout

    def _new_lock(self, lock_timeout: float | None) -> MigrationLock:
        """A lock not yet taken: the caller acquires it inside its try/finally, so that a signal
        arriving while the lease is being written still releases whatever was taken."""
        timeout = self._timeout(lock_timeout)
        return MigrationLock(
            self.recorder, ttl=self.settings.lock_ttl, command=self.actor.command,
            user=self.actor.user,
            on_wait=lambda held: self.events.emit(ev.LockWait(held.describe(), timeout)),
            on_takeover=self._took_over,
        )

    def _require_signing_key(self) -> None:
        """Before the lock is taken: a run that would write Provenance needs its key."""
        if self.settings.provenance:
            self.settings.signer  # noqa: B018 - raises ConfigurationError naming SIGNING_KEY

    def _took_over(self, held: LockInfo, reason: str, state: MigrationState) -> None:
        """The lease was taken from a holder that died (its pid is gone from this host) or whose
        lease expired: said and audited."""
        self.audit.record("lock-taken-over", state=state, detail=f"lock of {held.describe()} ({reason})")
        self.events.emit(ev.LockTakenOver(held.describe(), held.pid, reason))

    def _run_all(self, graph: RevisionGraph, lock: MigrationLock, plan: list[MigrationScript],
                 direction: Direction, fake: bool, opened: Opening | None = None) -> Outcome:
        """Run the plan; `opened`: the first migration's attempt, recorded with the lease."""
        # The throttle's probe: a search by identifier, as clinicians make (their reads by id
        # barely slow down while a migration runs; their searches do, measured).
        probe = {"identifier": f"{STATE_SYSTEM}|{self.settings.state_id}", "_count": "1"}
        self.throttle.probe = lambda: self.connection.get("Basic", params=probe)
        self.events.emit(ev.RunStart(direction, tuple(plan), self.settings.state_id, fake=fake))
        started = time.monotonic()
        done: list[MigrationScript] = []
        for index, script in enumerate(plan):
            following = plan[index + 1] if index + 1 < len(plan) else None
            try:
                opened = self._run_one(graph, lock, script, direction, fake=fake, opened=opened,
                                       following=following)
            except RunStopped as stopped:  # an operator's pause or cancel: the rest waits
                return Outcome(done=done, pending=plan[len(done):], exit_code=stopped.exit_code)
            done.append(script)
        self.events.emit(ev.RunDone(direction, tuple(done), time.monotonic() - started, fake=fake))
        return Outcome(done=done)

    def _run_one(self, graph: RevisionGraph, lock: MigrationLock, script: MigrationScript,
                 direction: Direction, *, fake: bool, retry: list[Failure] | None = None,
                 opened: Opening | None = None, following: MigrationScript | None = None) -> Opening | None:
        """Run one migration and record it. `retry`: `--retry-failed`, the upgrade again over
        exactly these resources of a migration applied with failures. `opened`: its attempt,
        recorded by the state write before it; `following`: the next migration of the plan
        (None: this is the last, and its record releases the lease). Returns the attempt its
        record opened for `following`."""
        self.events.emit(ev.ApplyStart(direction, script, fake=fake))
        lock.check()
        started = time.monotonic()
        attempts: tuple[str, ...] = ()
        recorded = False
        resumed_from: str | None = None
        if not fake:
            assert lock.state is not None
            attempt = Attempt(lock, script, direction, settings=self.settings,
                              connection=self.connection, actor=self.actor, events=self.events,
                              throttle=self.throttle, opened=opened)
            applied = lock.state.applied_record(script.revision)
            only: dict[str, set[str]] | None = None
            if retry is not None:
                only = {}
                for failure in retry:
                    resource_type, _, resource_id = failure.ref.partition("/")
                    only.setdefault(resource_type, set()).add(resource_id)
            ctx = MigrationContext(self.connection, self.settings, script=script,
                                   direction=direction, events=self.events, stdout=self.stdout,
                                   attempt=attempt, applied=applied, only=only)
            lock.renewal = attempt.recording
            if direction == "upgrade":
                self._refuse_while_cancelling(lock.held, script)
            try:
                if attempt.verify_only:
                    self.events.emit(ev.VerifyOnly(script))
                else:
                    self._run_script(lock, script, direction, ctx)
                if direction == "upgrade" and script.has_verify:
                    self._verify(lock, script, attempt, ctx)
            except StopRequested as stop:  # an operator asked (fhirmigrate --pause / --cancel)
                lock.renewal = None
                self._stop(graph, lock, script, attempt, stop.request)
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: audited, then re-raised
                self.connection.stopping.set()  # no more waiting out a server's back-off
                lock.renewal = None
                attempt.stopped(exc)
                self.audit.record("failed", script=script, state=lock.state, error=exc)
                self.events.emit(ev.ApplyFailed(direction, script, scrub(error_text(exc))))
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a script is a failure too
                lock.renewal = None
                attempt.stopped(exc)
                self.audit.record("failed", script=script, state=lock.state, error=exc)
                self.events.emit(ev.ApplyFailed(direction, script, scrub(error_text(exc))))
                if isinstance(exc, VerificationError):
                    raise
                raise self._failed(script, direction, exc) from exc
            lock.renewal = None
            attempts, recorded = attempt.ids, attempt.journal.mode.records
            failed = attempt.journal.failures
            resumed_from = attempt.started_at if attempt.previous else None
        elif direction == "upgrade":
            attempts = self._adopt(script)
            recorded, failed = bool(attempts), []
        duration = time.monotonic() - started
        detail = ""
        before: AppliedMigration | None = None
        if resumed_from:  # the applied record covers every attempt, not only this one's part
            duration = seconds_since(resumed_from, duration)
        if direction == "upgrade":
            before = lock.held.applied_record(script.revision) if retry is not None else None
            if failed or before is not None:  # the details first: the state never counts failures it lacks
                failures_record.write(self.connection, self.settings.state_id, lock.held.resource_id,
                                      script.revision, failed)
            entry = AppliedMigration(
                revision=script.revision, name=script.name, applied_at=isoformat(utcnow()),
                duration_ms=int(duration * 1000), checksum=script.checksum,
                applied_by=self.actor.describe(), fake=fake, attempts=attempts, provenance=recorded,
                failures=len(failed),
            )
            if before is not None:  # --retry-failed: the same application, continued
                entry = replace(before, checksum=script.checksum, failures=len(failed),
                                attempts=before.attempts + tuple(a for a in attempts if a not in before.attempts),
                                provenance=before.provenance and recorded)
                detail = (f"retried {len(retry or [])} failed resource(s): {len(failed)} still fail"
                          + (f"; its edited checksum {script.checksum} is accepted"
                             if before.checksum != script.checksum else ""))
            elif failed:
                detail = f"with {len(failed)} failure(s) within its budget"
            change = recording_applied(graph, entry)
            event = "faked" if fake else "applied"
        else:
            change = recording_reverted(graph, script.revision)
            event = "unfaked" if fake else "reverted"
        following_opening = Opening(following.revision, direction) if following and not fake else None
        self._record(lock, _then(change, following_opening), event, script, duration, detail=detail,
                     last=following is None)
        lock.parting = following_opening.revert if following_opening else None
        self.events.emit(ev.ApplySuccess(
            direction, script, duration, fake=fake, failures=len(failed) if direction == "upgrade" else 0,
            retried=len(retry or []) if before is not None else None,
            accepted_checksum=script.checksum if before is not None and before.checksum != script.checksum
            else ""))
        return following_opening

    def _record(self, lock: MigrationLock, change: Mutation, event: str, script: MigrationScript,
                duration: float, *, detail: str = "", last: bool) -> MigrationState:
        """Write `change` (a migration's record) with its AuditEvent in one transaction; `last`:
        the same write releases the lease. The record never depends on the AuditEvent: if the
        server refuses the transaction for anything but the state's version (it may keep no
        AuditEvents from clients), the record is written alone and the AuditEvent sent after it,
        and later records of this run do not try again."""
        pending = self.audit.prepare(event, script=script, state=lock.state, duration=duration,
                                     detail=detail)
        extra = [pending.entry()] if pending is not None and self.audit_with_record else []

        def write(entries: list[dict]) -> MigrationState:
            return lock.finish(change, extra=entries) if last else lock.update(change, extra=entries)

        try:
            state = write(extra)
        except FhirServerError as exc:
            if not extra or isinstance(exc, (ServerUnreachableError, VersionConflictError)):
                raise
            logger.info("The server refused the record of %s with its AuditEvent in one transaction "
                        "(%s): the record is written alone, the AuditEvent after it", script.name, exc)
            self.audit_with_record = False
            state = write([])
            if pending is not None and exc.status == 405:  # Method Not Allowed: AuditEvents, by policy
                self.audit.refuse(pending, str(exc))
            elif pending is not None and not lock.found_made:
                self.audit.send(pending)
            return state
        if pending is not None:
            if not extra:
                self.audit.send(pending)
            else:
                self.audit.committed(pending, lock.extra_answers[0] if lock.extra_answers else None)
        return state

    # --- pause and cancel (control.py) -------------------------------------------------------

    def _stop(self, graph: RevisionGraph, lock: MigrationLock, script: MigrationScript,
              attempt: Attempt, request: ControlRequest) -> None:
        """This run was asked to stop at a bundle boundary: pause (recorded, resumable) or
        cancel (what the application wrote is reverted; nothing is recorded as applied)."""
        written = attempt.written_before + attempt.journal.written
        if request.action == "pause" or attempt.direction != "upgrade":  # an undo is only paused
            attempt.pause(request)
            self.audit.record("paused", script=script, state=lock.state,
                              detail=f"at the request of {request.requested_by}, after {written} resource(s)")
            self.events.emit(ev.Paused(script, written, by=request.requested_by))
            raise RunStopped(0)
        reverted = self._revert_partial(graph, lock, script, attempt.ids, request.requested_by)
        self.events.emit(ev.Cancelled(request.requested_by, script, reverted))
        raise RunStopped(1)

    def _revert_partial(self, graph: RevisionGraph, lock: MigrationLock, script: MigrationScript,
                        upgrade_attempts: tuple[str, ...], by: str) -> int:
        """Revert what the attempts of an unfinished application wrote (a cancel), through the
        undo of a downgrade attempt that records them (`reverts`), so a cancel interrupted in
        turn is finished by the next `--cancel`."""
        assert lock.state is not None
        attempt = Attempt(lock, script, "downgrade", settings=self.settings, connection=self.connection,
                          actor=self.actor, events=self.events, reverts=upgrade_attempts,
                          throttle=self.throttle)
        unfinished = AppliedMigration(revision=script.revision, name=script.name,
                                      attempts=attempt.reverts, provenance=True)
        ctx = MigrationContext(self.connection, self.settings, script=script, direction="downgrade",
                               events=self.events, stdout=self.stdout, attempt=attempt,
                               applied=unfinished)
        # Recorded as cancelling before anything is reverted: a plain run must not resume it now.
        lock.update(lambda state: state.with_attempt(attempt.record(), script.revision).with_control(None))
        lock.renewal = attempt.recording
        try:
            reverted = undo(ctx) if attempt.reverts else 0
        except BaseException as exc:
            lock.renewal = None
            attempt.stopped(exc)
            self.audit.record("failed", script=script, state=lock.state, error=exc)
            if isinstance(exc, FhirMigrationError):
                raise
            raise self._failed(script, "cancel", exc) from exc
        lock.renewal = None
        state = lock.update(lambda state: state.with_attempt(None, script.revision))
        self.audit.record("cancelled", script=script, state=state,
                          detail=f"at the request of {by}: {reverted} resource(s) reverted")
        return reverted

    def _refuse_while_cancelling(self, state: MigrationState, script: MigrationScript) -> None:
        record = state.attempt_for(script.revision, "downgrade")
        if record is not None and record.reverts:
            raise LockError(f"{script.name} ({script.revision}) is being cancelled: an earlier cancel "
                            "stopped before it had reverted everything; nothing was run.",
                            "`{migrate} --cancel` finishes the cancel; then `{migrate}` applies it again.")

    def request_pause(self, *, wait: float | None = None) -> Outcome:
        """`fhirmigrate --pause`: ask the running migration to pause, and wait until it has."""
        state, request = request_stop(self.recorder, "pause", self.actor.describe())
        if request is None:
            self.events.emit(ev.NothingRunning(self.settings.state_id))
            return Outcome()
        assert state.lock is not None
        self.events.emit(ev.StopRequested("pause", state.lock.describe()))
        after = wait_for_stop(self.recorder, request, self._timeout(wait))
        self._report_stop(request, after)
        return Outcome()

    def cancel(self, confirm: Confirm | None, *, lock_timeout: float | None = None) -> Outcome:
        """`fhirmigrate --cancel`: stop the running migration (if one runs) and revert what the
        unfinished application wrote; nothing is recorded as applied."""
        graph = self.loader.valid_graph()
        state = self.recorder.read()
        running = state.lock is not None and not state.lock_expired()
        unfinished = [a for a in state.attempts if (a.direction == "upgrade" or a.reverts)
                      and a.revision in graph]
        if not running and not unfinished:
            self.events.emit(ev.NothingRunning(self.settings.state_id))
            return Outcome()
        names = tuple(graph.script(a.revision).name for a in unfinished)
        question = ev.CancelQuestion(self.settings.state_id, names)
        if confirm is not None and not confirm(question):
            self.events.emit(ev.CancelKept())
            return Outcome(exit_code=1)
        if running:
            state, request = request_stop(self.recorder, "cancel", self.actor.describe())
            if request is not None:
                assert state.lock is not None
                self.events.emit(ev.StopRequested("cancel", state.lock.describe()))
                after = wait_for_stop(self.recorder, request, self._timeout(lock_timeout))
                if after is None:
                    self._report_stop(request, None)
                    return Outcome(exit_code=3)
                state = after
        unfinished = [a for a in state.attempts if (a.direction == "upgrade" or a.reverts)
                      and a.revision in graph]
        if not unfinished:  # the running process reverted them itself
            self.events.emit(ev.Cancelled(self.actor.describe(), by_running_process=True))
            return Outcome()
        self._require_signing_key()
        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            try:
                lock.acquire(state, self._timeout(lock_timeout))
                for record in [a for a in lock.held.attempts if (a.direction == "upgrade" or a.reverts)
                               and a.revision in graph]:
                    script = graph.script(record.revision)
                    reverted = self._revert_partial(graph, lock, script, record.reverts or record.attempts,
                                                    self.actor.describe())
                    self.events.emit(ev.Cancelled(self.actor.describe(), script, reverted))
            finally:
                lock.release()
        return Outcome()

    def _report_stop(self, request: ControlRequest, state: MigrationState | None) -> None:
        if state is None:
            self.events.emit(ev.StopPending(request.action))
            return
        paused = [a for a in state.attempts if a.paused]
        if request.action == "pause" and paused:
            for record in paused:
                graph = self.loader.valid_graph()
                self.events.emit(ev.Paused(graph.script(record.revision) if record.revision in graph
                                           else None, record.written, by="", when=record.paused))
        elif request.action == "pause":
            self.events.emit(ev.StopPending("finished"))

    def retry_failed(self, target: str, *, lock_timeout: float | None = None) -> Outcome:
        """`fhirmigrate --retry-failed NAME`: run the migration's upgrade again over exactly the
        resources it was applied with as failures (its ctx.search yields only them), accepting
        the script as it is now; what still fails is recorded as its failures."""
        graph = self.loader.valid_graph()
        script = graph.resolve(target)
        entry = self.recorder.read().applied_record(script.revision)
        if entry is None:
            raise RevisionError(f"{script.name} ({script.revision}) is not applied, so it has no "
                                "failures to retry; `{migrate}` applies it.")
        if not entry.failures:
            raise RevisionError(f"{script.name} ({script.revision}) was applied without failures: "
                                "there is nothing to retry.")
        failed = failures_record.read(self.connection, self.settings.state_id, script.revision)
        if not failed:
            raise RevisionError(f"{script.name} ({script.revision}) is recorded with {entry.failures} "
                                "failure(s), but the record naming them is missing from the server.")
        self._require_signing_key()
        with signals_interrupt():
            lock = self._new_lock(lock_timeout)
            try:
                lock.acquire(self.recorder.read(), self._timeout(lock_timeout))
                self.events.emit(ev.RetryStart(script, len(failed), edited=entry.checksum != script.checksum))
                self._run_one(graph, lock, script, "upgrade", fake=False, retry=failed)
            finally:
                lock.release()
        return Outcome(done=[script])

    def _adopt(self, script: MigrationScript) -> tuple[str, ...]:
        """`--fake` after `fhirreset`: the writes of the latest application the server holds
        signed records of become this record's, so `ctx.undo()` can revert them again."""
        if not self.settings.provenance or not self.settings.signing_keys:
            return ()
        found = latest_application(self.connection, script.revision, self.settings.signer)
        self.events.emit(ev.Adopted(script, len(found.attempts), resources=found.resources,
                                    first=found.first, last=found.last, why=found.why))
        return found.attempts

    def _verify(self, lock: MigrationLock, script: MigrationScript, attempt: Attempt,
                ctx: MigrationContext) -> None:
        """verify(ctx) after upgrade(ctx), under the lock and MAX_RUN_TIME like the upgrade;
        the upgrade is recorded as done first, so a failed verify is all a rerun repeats."""
        if not attempt.verify_only:
            attempt.mark_upgraded(script.checksum)
        self.events.emit(ev.VerifyStart(script))
        try:
            self._run_script(lock, script, "verify", ctx)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - an assert, sys.exit(): the data did not verify
            raise VerificationError(script, exc, scrub(error_text(exc))) from exc

    def _run_script(self, lock: MigrationLock, script: MigrationScript, direction: str,
                    ctx: MigrationContext) -> None:
        """Run one script under MAX_RUN_TIME: requests stop at the deadline, the lease stops
        being renewed, and a script on the main thread is interrupted there."""
        limit = self.settings.max_run_time
        session = self.connection.session
        lock.start_run(limit)
        if limit:
            session.run_deadline = time.monotonic() + limit
            if threading.current_thread() is threading.main_thread():
                lock.on_overrun = interrupt_main_thread
        try:
            script.run(direction, ctx)
        except KeyboardInterrupt:
            if lock.overrun:  # our own interruption, not the user's
                raise RunTimeExceededError(limit or 0, f"{script.name}") from None
            raise
        finally:
            session.run_deadline = None
            lock.on_overrun = None
            lock.end_run()
        if lock.overrun:
            raise RunTimeExceededError(limit or 0, f"{script.name}")

    def _failed(self, script: MigrationScript, direction: str, exc: BaseException) -> MigrationFailedError:
        if isinstance(exc, SystemExit):
            text: str | None = f"SystemExit({exc.code!r}): the script called sys.exit(); a migration must return"
        elif isinstance(exc, FhirMigrationError):
            text = None  # its own text (scrubbed when made), and its remedy in the front door's words
        else:
            text = scrub(error_text(exc))
        return MigrationFailedError(script, direction, exc, text=text)

    def _dry_run(self, plan: list[MigrationScript], direction: Direction,
                 state: MigrationState | None = None) -> Outcome:
        self.events.emit(ev.DryRunStart(direction, tuple(plan)))
        session = self.connection.session
        for step, script in enumerate(plan):
            self.events.emit(ev.DryRunScript(direction, script))
            applied = state.applied_record(script.revision) if state is not None else None
            ctx = MigrationContext(self.connection, self.settings, dry_run=True, script=script,
                                   direction=direction, events=self.events, stdout=self.stdout,
                                   applied=applied)
            ctx.after_unrun_steps = step > 0
            # Writes made through ctx.server / fhirclient models, or the session itself, are
            # intercepted too: in a dry run no request that changes anything leaves the process.
            session.intercept = ctx.intercept_request
            try:
                script.run(direction, ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a script is a failure too
                raise self._failed(script, f"{direction} (dry run)", exc) from exc
            finally:
                session.intercept = None
            self.events.emit(ev.DryRunDone(direction, script, len(ctx.dry_run_writes)))
        return Outcome(pending=plan)

    def _check_drift(self, history: History, *, fatal: bool) -> None:
        drifted = history.drifted()
        if not drifted:
            return
        error = ChecksumMismatchError(drifted)
        # Logged either way: drift is worth a WARNING in the logs even when it stops the run.
        logger.warning("%s", error)
        if fatal:
            raise error
        self.events.emit(ev.ChecksumWarning(tuple(drifted)))

    def _warn_out_of_order(self, history: History, plan: list[MigrationScript]) -> None:
        late = {s.revision for s in history.out_of_order()}
        for script in plan:
            if script.revision in late:
                self.events.emit(ev.OutOfOrder(script))


def _then(change: Mutation, opening: Opening | None) -> Mutation:
    """`change`, then (when given) the opening of the next migration's attempt."""
    if opening is None:
        return change
    return lambda state: opening(change(state))


def _relative(target: str | None, sign: str, verb: str) -> int | None:
    """N for a relative target ('+N' upgrades N more, '-N' reverts N: Alembic's notation)."""
    if not target or target[0] not in "+-" or not target[1:].isdigit():
        return None
    if target[0] != sign:
        other = "downgrade" if verb == "migrate" else "migrate"
        example = "+1 applies the next migration" if sign == "+" else "-1 reverts the last one"
        raise RevisionError(f"{target!r} is a relative target for {other}, not {verb}: use "
                            f"{sign}N here ({example}).")
    number = int(target[1:])
    if number < 1:
        raise RevisionError(f"{target!r}: a relative target needs N of at least 1.")
    return number


def interrupt_main_thread() -> None:
    """Stop the script running on the main thread, even inside time.sleep() or a blocking read:
    a real SIGINT wakes such a call, where `_thread.interrupt_main()` only sets a flag."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler and hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
    else:
        _thread.interrupt_main()


__all__ = ["Confirm", "MigrationExecutor", "Outcome"]
