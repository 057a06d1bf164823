"""Decide what to run, take the lock, run it, record it: one migration at a time.

The plan is computed from one read of the state. When nothing is pending that is the only
request made. Otherwise the lock is taken and the plan computed again from the state as it is
now (another replica may have migrated while this one waited). Each migration runs, then is
recorded with a fenced write; a migration that raises stops the run at once and is not
recorded. Re-running continues from there.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from .audit import Actor, AuditTrail, error_text
from .config import Settings
from .context import MigrationContext
from .errors import (
    ChecksumMismatchError,
    IrreversibleMigrationError,
    LockError,
    MigrationFailedError,
    RevisionError,
    RunTimeExceededError,
    VersionConflictError,
)
from .fhir.client import FhirConnection
from .graph import RevisionGraph
from .interrupts import signals_interrupt
from .loader import MigrationLoader
from .lock import MigrationLock
from .recorder import AppliedMigration, LockInfo, MigrationState, StateRecorder, isoformat, utcnow
from .redaction import scrub
from .report import Reporter
from .script import MigrationScript

Confirm = Callable[[str], bool]
logger = logging.getLogger("django_fhir_migrations")


@dataclass
class Outcome:
    """What a command did; `exit_code` is what the front end exits with."""

    done: list[MigrationScript] = field(default_factory=list)
    pending: list[MigrationScript] = field(default_factory=list)
    exit_code: int = 0


class MigrationExecutor:
    def __init__(self, settings: Settings, loader: MigrationLoader, connection: FhirConnection,
                 *, reporter: Reporter, actor: Actor, stdout: IO[str] | None = None):
        self.settings = settings
        self.loader = loader
        self.connection = connection
        self.reporter = reporter
        self.actor = actor
        self.stdout = stdout or reporter.stream
        self.recorder = StateRecorder(connection, settings.state_id)
        self.audit = AuditTrail(connection, actor, enabled=settings.audit_events)

    # --- upgrade -------------------------------------------------------------------------

    def migrate(self, target: str | None = None, *, plan_only: bool = False, fake: bool = False,
                dry_run: bool = False, check: bool = False, lock_timeout: float | None = None,
                ignore_checksums: bool = False) -> Outcome:
        graph = self.loader.valid_graph()
        target_rev = self._target(graph, target)
        state = self.recorder.read()
        applied = state.applied_revisions(graph)
        self._check_drift(graph, state, applied, fatal=not (ignore_checksums or plan_only or check))
        plan = graph.forwards_plan(applied, target_rev)
        if not plan:
            self.reporter.info("No migrations to apply.")
            return Outcome()
        self._warn_out_of_order(graph, applied, plan)
        if check:
            self._show_plan("Unapplied migrations:", plan, "upgrade")
            return Outcome(pending=plan, exit_code=1)
        if plan_only:
            self._show_plan("Planned operations:", plan, "upgrade")
            return Outcome(pending=plan)
        if dry_run:
            return self._dry_run(plan, "upgrade")

        with signals_interrupt():
            lock = self._lock(state, lock_timeout)
            try:
                # Re-plan from the state as it is now: another replica may have migrated meanwhile.
                state = lock.state
                applied = state.applied_revisions(graph)
                plan = graph.forwards_plan(applied, target_rev)
                if not plan:
                    self.reporter.info("No migrations to apply (another process applied them).")
                    return Outcome()
                self.reporter.heading(
                    f"{'Faking' if fake else 'Applying'} {len(plan)} migration(s) on state "
                    f"{self.settings.state_id!r}:"
                )
                done = []
                for script in plan:
                    self._run_one(graph, lock, script, "upgrade", fake=fake)
                    done.append(script)
                return Outcome(done=done)
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
        state = self.recorder.read()
        plan = self._backwards(graph, state, target, steps)
        if not plan:
            self.reporter.info("No migrations to revert.")
            return Outcome()
        irreversible = [s for s in plan if s.irreversible]
        if irreversible and not fake:
            raise IrreversibleMigrationError(irreversible[0])
        if plan_only:
            self._show_plan("Planned operations:", plan, "downgrade")
            return Outcome(pending=plan)
        if dry_run:
            return self._dry_run(plan, "downgrade")

        with signals_interrupt():
            lock = self._lock(state, lock_timeout)
            try:
                fresh_plan = self._backwards(graph, lock.state, target, steps)
                if [s.revision for s in fresh_plan] != [s.revision for s in plan]:
                    # Reverting "one step" twice because two people asked at once would lose data.
                    raise LockError(
                        "The migration state changed while this process waited for the lock; "
                        "nothing was reverted. Check `fhirshowmigrations` and run the downgrade again."
                    )
                self.reporter.heading(
                    f"{'Unfaking' if fake else 'Reverting'} {len(plan)} migration(s) on state "
                    f"{self.settings.state_id!r}:"
                )
                for script in plan:
                    self._run_one(graph, lock, script, "downgrade", fake=fake)
                return Outcome(done=plan)
            finally:
                lock.release()

    def _backwards(self, graph: RevisionGraph, state: MigrationState, target: str | None,
                   steps: int | None) -> list[MigrationScript]:
        applied = state.applied_revisions(graph)
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
            lock = self._lock(state, lock_timeout)
            try:
                state = lock.update(lambda s: s.with_applied([], None))
                self.audit.record("reset", state=state, detail="head set to None")
            finally:
                lock.release()
        self.reporter.success(
            f"Migration state {self.settings.state_id!r} reset: no migration is recorded as applied."
        )
        return Outcome()

    def break_lock(self, confirm: Confirm | None) -> Outcome:
        """Remove a lease on purpose (its holder died and you will not wait for expiry)."""
        state = self.recorder.read()
        if state.lock is None:
            self.reporter.info(f"No process holds the migration lock on state {self.settings.state_id!r}.")
            return Outcome()
        held: LockInfo = state.lock
        expired = " (its lease has expired)" if state.lock_expired() else " (its lease is still being renewed)"
        question = (f"The migration lock on state {self.settings.state_id!r} is held by "
                    f"{held.describe()}{expired}. Break it? If that process is still running, "
                    "it will stop before recording anything more.")
        if confirm is not None and not confirm(question):
            self.reporter.info("Lock left in place.")
            return Outcome(exit_code=1)
        for _ in range(5):
            if state.lock is None or state.lock.token != held.token:
                raise LockError("The lock changed hands while breaking it; nothing was changed. "
                                "Look again with fhirshowmigrations.")
            try:
                state = self.recorder.write(state.with_lock(None))
                break
            except VersionConflictError:
                state = self.recorder.reread(state)
        else:
            raise LockError("The lock holder kept renewing while breaking it; try again.")
        self.audit.record("lock-broken", state=state, detail=f"lock of {held.describe()}")
        self.reporter.success(f"Broke the migration lock held by {held.describe()}.")
        return Outcome()

    # --- pieces --------------------------------------------------------------------------

    def _target(self, graph: RevisionGraph, target: str | None) -> str | None:
        if target in (None, "head", "heads"):
            return None
        return graph.resolve(target).revision

    def _lock(self, state: MigrationState, lock_timeout: float | None) -> MigrationLock:
        timeout = self.settings.lock_timeout if lock_timeout is None else lock_timeout
        lock = MigrationLock(
            self.recorder, ttl=self.settings.lock_ttl, command=self.actor.command,
            user=self.actor.user,
            on_wait=lambda held: self.reporter.warning(
                f"Waiting up to {timeout:.0f}s for the migration lock held by {held.describe()}..."
            ),
        )
        lock.acquire(state, timeout)
        return lock

    def _run_one(self, graph: RevisionGraph, lock: MigrationLock, script: MigrationScript,
                 direction: str, *, fake: bool) -> None:
        verb = {"upgrade": "Applying", "downgrade": "Reverting"}[direction]
        label = f"  {verb} {script.label}/{script.name} ({script.short})..."
        self.reporter.info(label)
        lock.check()
        started = time.monotonic()
        if not fake:
            ctx = MigrationContext(self.connection, self.settings, script=script,
                                   direction=direction, stdout=self.stdout)
            try:
                self._run_script(lock, script, direction, ctx)
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: audited, then re-raised
                self.audit.record("failed", script=script, state=lock.state, error=exc)
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a script is a failure too
                self.audit.record("failed", script=script, state=lock.state, error=exc)
                raise self._failed(script, direction, exc) from exc
        duration = time.monotonic() - started
        if direction == "upgrade":
            entry = AppliedMigration(
                revision=script.revision, name=script.name, applied_at=isoformat(utcnow()),
                duration_ms=int(duration * 1000), checksum=script.checksum,
                applied_by=self.actor.describe(), fake=fake,
            )
            state = lock.update(_recording_applied(graph, entry))
            event = "faked" if fake else "applied"
        else:
            state = lock.update(_recording_reverted(graph, script.revision))
            event = "unfaked" if fake else "reverted"
        self.audit.record(event, script=script, state=state, duration=duration)
        self.reporter.success(f"    {'FAKED' if fake else 'OK'} ({duration:.2f}s)")

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
                lock.on_overrun = _thread.interrupt_main
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
            text = f"SystemExit({exc.code!r}): the script called sys.exit(); a migration must return"
        else:
            text = scrub(error_text(exc))
        return MigrationFailedError(script, direction, exc, text=text)

    def _dry_run(self, plan: list[MigrationScript], direction: str) -> Outcome:
        self.reporter.heading(
            f"Dry run: {len(plan)} migration(s), writes are printed and not sent, nothing is recorded:"
        )
        session = self.connection.session
        for script in plan:
            self.reporter.info(f"  {direction} {script.label}/{script.name} ({script.short})")
            ctx = MigrationContext(self.connection, self.settings, dry_run=True, script=script,
                                   direction=direction, stdout=self.stdout)
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
            self.reporter.info(f"    {len(ctx.dry_run_writes)} write(s) intercepted")
        return Outcome(pending=plan)

    def _show_plan(self, title: str, plan: list[MigrationScript], direction: str) -> None:
        self.reporter.heading(title)
        for script in plan:
            doc = f": {script.doc}" if script.doc else ""
            self.reporter.info(f"  {direction} {script.label}/{script.name} ({script.revision}){doc}")

    def _check_drift(self, graph: RevisionGraph, state: MigrationState, applied: set[str],
                     *, fatal: bool) -> None:
        drifted = drifted_scripts(graph, state, applied)
        if not drifted:
            return
        error = ChecksumMismatchError(drifted)
        # Logged either way: drift is worth a WARNING in the logs even when it stops the run.
        logger.warning("%s", error)
        if fatal:
            raise error
        self.reporter.warning(f"Warning: {error}")

    def _warn_out_of_order(self, graph: RevisionGraph, applied: set[str],
                           plan: list[MigrationScript]) -> None:
        late = {s.revision for s in graph.out_of_order(applied)}
        for script in plan:
            if script.revision in late:
                self.reporter.warning(
                    f"Warning: {script.name} ({script.revision}) sits below migrations that are "
                    "already applied; it will be applied now, out of order."
                )


def drifted_scripts(graph: RevisionGraph, state: MigrationState, applied: set[str]
                    ) -> list[MigrationScript]:
    changed = {
        entry.revision for entry in state.applied
        if entry.revision in applied and entry.checksum and entry.revision in graph
        and graph.script(entry.revision).checksum != entry.checksum
    }
    return graph.in_order(changed)


def _recording_applied(graph: RevisionGraph, entry: AppliedMigration):
    def mutate(state: MigrationState) -> MigrationState:
        entries = state.applied_entries(graph)
        if all(e.revision != entry.revision for e in entries):
            entries.append(entry)
        return state.with_applied(entries, graph.top(e.revision for e in entries))

    return mutate


def _recording_reverted(graph: RevisionGraph, revision: str):
    def mutate(state: MigrationState) -> MigrationState:
        entries = [e for e in state.applied_entries(graph) if e.revision != revision]
        return state.with_applied(entries, graph.top(e.revision for e in entries))

    return mutate


__all__ = ["MigrationExecutor", "Outcome", "drifted_scripts"]
