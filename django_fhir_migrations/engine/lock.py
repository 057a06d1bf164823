"""A lease on the state resource, so one process at a time migrates a given state.

The lease is an extension of the state resource itself (holder, started-at, ttl). Taking,
renewing and releasing it are version-aware writes; so is every state change made while holding
it. Expiry is judged on the server's clock only (the resource's `meta.lastUpdated` against the
`Date` header), so hosts with skewed clocks agree. A background thread renews the lease while a
long migration runs.

Fencing: a write refused with 412 is never retried blindly. The holder re-reads the resource;
if the lease there is no longer its own token, it has lost the lease and stops without recording
anything. Only when the lease is still its own (the refused write raced its own earlier write
whose answer was lost on the network) is the change re-applied to the fresh copy.

All of this rests on the server refusing a write whose If-Match names a stale version. Some
servers (or gateways in front of them) ignore If-Match; so before it first relies on it, the
lock proves it: one update of the state with a stale If-Match must be refused (409/412).
Otherwise it refuses to migrate (`VersionCheckNotEnforcedError`).

A holder that died (kill -9, a crashed host) stops renewing, and its lease expires after the
TTL. On the holder's own host that wait is needless: the lease records the host name, the boot
id and the pid namespace, and a process that shares all three and finds the holder's pid gone
takes the lease over at once (and says so: `on_takeover`). A pid that was reused by another
process looks alive, which only means waiting for the expiry, as before.

A migration may be given a run deadline (MAX_RUN_TIME): past it, the lease is no longer
renewed (another process may take it over once it expires), nothing more is recorded, and
`on_overrun` is called so the executor can stop the script.

Fewer requests: the write that takes the lease can carry the opening record of the run's first
migration (`acquire(opening=...)`), the last state change of a run is made by the write that
releases the lease (`finish`), and what the release must also undo or record (an opened attempt
that wrote nothing, a failed attempt's error) rides on it (`parting`). A write may carry other
entries in the same transaction (`update(extra=...)`: the AuditEvent of the migration it
records), committed with the state or not at all. When a write's answer is lost and its repeat
is refused, the state is read again: if it already holds the change (and, for a release, no
longer our lease), the earlier write landed, with whatever rode on it, and nothing is sent again.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .clock import isoformat, utcnow
from .errors import (
    FhirServerError,
    LeaseLostError,
    LockTimeoutError,
    RunTimeExceededError,
    VersionCheckNotEnforcedError,
    VersionConflictError,
)
from .recorder import StateRecorder
from .state import LockInfo, MigrationState

logger = logging.getLogger("django_fhir_migrations")

Mutation = Callable[[MigrationState], MigrationState]


class Opening(Protocol):
    """A state change written with the lease, and how to take it out again (attempt.py)."""

    def __call__(self, state: MigrationState) -> MigrationState: ...
    def revert(self, state: MigrationState) -> MigrationState: ...


def _unchanged(state: MigrationState) -> MigrationState:
    return state


def made(mutation: Mutation, state: MigrationState) -> bool:
    """Whether `state` already holds what `mutation` changes (head, applied list, attempts):
    mutations are idempotent, so applying one to a state that has it changes nothing."""
    after = mutation(state)
    return (after.head, after.applied, after.attempts) == (state.head, state.applied, state.attempts)


def current_user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


# --- a dead holder on this host -------------------------------------------------------------

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
PID_NAMESPACE_LINK = "/proc/self/ns/pid"


def boot_id() -> str:
    """This boot of this machine (Linux); "" where it cannot be read."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """Which pids this process sees ("pid:[4026531836]"): two containers with the same host name
    do not see each other's processes; "" where it cannot be read."""
    try:
        return os.readlink(PID_NAMESPACE_LINK)
    except OSError:
        return ""


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as running)."""
    if pid <= 0:
        return True  # no pid recorded: nothing can be concluded
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def holder_is_gone(lock: LockInfo) -> bool:
    """The lease was taken on this host, in this boot and pid namespace, and its process no
    longer exists: nobody can renew it any more."""
    here = (socket.gethostname(), boot_id(), pid_namespace())
    if not all(here) or (lock.host, lock.boot_id, lock.pid_namespace) != here:
        return False
    return lock.pid != os.getpid() and not pid_running(lock.pid)


def lease_condition(state: MigrationState) -> str:
    """The truth about a lease someone else holds, for a prompt or a message: its holder's
    process is gone from this host, it expired, or when it was last renewed."""
    lock = state.lock
    if lock is None:
        return "nobody holds it"
    if holder_is_gone(lock):
        return f"its process (pid {lock.pid}) is no longer running on this host"
    silent, ttl = state.lease_silence(), lock.ttl
    if state.lock_expired():
        return f"its lease expired: not renewed for {silent:.0f}s (it lasts {ttl:.0f}s)"
    if silent > ttl / 3 + 5:
        return (f"its lease has not been renewed for {silent:.0f}s (it is renewed every "
                f"{ttl / 3:.0f}s and expires after {ttl:.0f}s), so its holder has probably stopped")
    return f"its lease was renewed {silent:.0f}s ago, so its holder is probably still running"


class MigrationLock:
    """The lease on one state resource, held by this process for one command run.

    `acquire` takes it (waiting up to a timeout), `update` makes every state change as a fenced
    write that also renews it, a background thread renews it every TTL/3, `release` removes it.
    `check()` raises once the lease is lost (or the run deadline passed).
    """

    poll_interval = 1.0

    def __init__(self, recorder: StateRecorder, *, ttl: float, command: str = "",
                 user: str | None = None, on_wait: Callable[[LockInfo], None] | None = None,
                 on_takeover: Callable[[LockInfo, str, MigrationState], None] | None = None):
        self.recorder = recorder
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.command = command
        self.user = user or current_user()
        self.on_wait = on_wait
        self.on_takeover = on_takeover  # (holder, "holder_gone" | "expired", state), once taken
        self._taking_over: tuple[LockInfo, str] | None = None
        self.state: MigrationState | None = None
        self.lost: str | None = None  # why, once the lease is lost
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.started_at = isoformat(utcnow())
        self.version_check_proven = False
        self.run_deadline: float | None = None  # time.monotonic(); see start_run
        self.run_limit: float = 0.0
        self.overrun = False
        self.on_overrun: Callable[[], None] | None = None
        self.renewal: Mutation | None = None  # what a renewal writes besides the lease (progress)
        self.parting: Mutation | None = None  # what the release writes besides removing the lease
        self.extra_answers: list[Mapping[str, Any]] = []  # the answers to update(extra=...)
        self.found_made = False  # the last update found its change made by an earlier write of ours
        self._taking = False  # a lease write was sent whose outcome this object may not know

    @property
    def holder(self) -> str:
        return f"{self.user}@{socket.gethostname()} (pid {os.getpid()})"

    def _info(self) -> LockInfo:
        return LockInfo(
            token=self.token, host=socket.gethostname(), pid=os.getpid(), user=self.user,
            started_at=self.started_at, ttl=self.ttl, renewed_at=isoformat(utcnow()),
            command=self.command, boot_id=boot_id(), pid_namespace=pid_namespace(),
        )

    # --- taking the lease ----------------------------------------------------------------

    def acquire(self, state: MigrationState, timeout: float, *, opening: Opening | None = None
                ) -> MigrationState:
        """Take the lease, waiting up to `timeout` seconds. Returns the state as now written.

        `opening`: a change written with the lease (the first migration's attempt record),
        applied to the state as it is when the lease is written; the release reverts it unless
        `parting` is changed meanwhile."""
        deadline = time.monotonic() + timeout
        self._timeout = timeout
        announced: str | None = None
        opened: Mutation = opening if opening is not None else _unchanged
        self.parting = opening.revert if opening is not None else None
        while True:
            if not state.exists:
                self._taking = True
                try:
                    created, won = self.recorder.create(opened(state).with_lock(self._info()))
                except VersionConflictError:
                    # Another process is creating the state right now (HAPI answers 409 to the
                    # loser of two simultaneous conditional creates): look again shortly.
                    self._pause(deadline, state)
                    state = self.recorder.read()
                    continue
                if won:
                    self.state = created
                    self._prove_version_check(created)
                    return self._hold(created)
                state = created
                continue
            if state.lock is not None and state.lock.token == self.token:
                # Our own write landed although its answer was lost (and the retry was refused).
                self.state = state
                self._prove_version_check(state)
                return self._hold(state)
            if self._free_or_abandoned(state) or state.lock is None:
                if state.lock is not None and state.lock_expired():
                    logger.warning("Taking over the expired migration lock of %s on state %r",
                                   state.lock.describe(), state.state_id)
                self._prove_version_check(state)
                self._taking = True
                try:
                    written = self.recorder.write(opened(state).with_lock(self._info()), base=state)
                except VersionConflictError:
                    state = self.recorder.reread(state)  # lost the race: the winner holds it now
                    continue
                return self._hold(written)
            if time.monotonic() >= deadline:
                raise LockTimeoutError(state.state_id, state.lock.describe(), timeout)
            if announced != state.lock.token:
                announced = state.lock.token
                logger.info("Waiting for the migration lock on state %r held by %s",
                            state.state_id, state.lock.describe())
                if self.on_wait:
                    self.on_wait(state.lock)
            self._pause(deadline, state)
            state = self.recorder.reread(state)

    def _free_or_abandoned(self, state: MigrationState) -> bool:
        """Nobody holds the lease, it expired, or its holder's process is gone from this host;
        remembers a takeover to announce once the lease is ours."""
        lock = state.lock
        self._taking_over = None
        if lock is None:
            return True
        if state.lock_expired():
            self._taking_over = (lock, "expired")
        elif holder_is_gone(lock):
            logger.warning("The migration lock on state %r is held by %s, whose process is no "
                           "longer running on this host: taking it over", state.state_id,
                           lock.describe())
            self._taking_over = (lock, "holder_gone")
        return self._taking_over is not None

    def _prove_version_check(self, state: MigrationState) -> None:
        """Once per lock: the server must refuse a state update with a stale If-Match."""
        if self.version_check_proven:
            return
        if not self.recorder.refuses_stale_update(state):
            if self.state is not None:  # we created the state with our lease: take it off again
                self.lost = "released"
                try:
                    self.recorder.write((self.parting or _unchanged)(self.state).with_lock(None),
                                        base=self.state)
                except FhirServerError:
                    pass
            raise VersionCheckNotEnforcedError(state.state_id, state.describe_location(),
                                               self.recorder.connection.base_url)
        self.version_check_proven = True

    def _pause(self, deadline: float, state: MigrationState) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holder = state.lock.describe() if state.lock else "another process creating the state"
            raise LockTimeoutError(state.state_id, holder, self._timeout)
        time.sleep(max(0.05, min(remaining, self.poll_interval * (0.5 + random.random()))))

    def _hold(self, state: MigrationState) -> MigrationState:
        self.state = state
        logger.debug("Took the migration lock on state %r as %s", state.state_id, self.holder)
        taken, self._taking_over = self._taking_over, None
        if taken is not None and self.on_takeover is not None:
            self.on_takeover(taken[0], taken[1], state)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="fhir-migrations-lease",
                                         daemon=True)
        self._renewer.start()
        return state

    # --- fenced writes -------------------------------------------------------------------

    def update(self, mutation: Mutation, *, release: bool = False,
               extra: Sequence[Mapping[str, Any]] = ()) -> MigrationState:
        """Apply `mutation` to the state and write it, only while the lease is ours.

        Every write also renews the lease (or, with `release`, removes it). `extra`: more
        transaction entries committed with it (their answers in `extra_answers`).
        """
        with self._mutex:
            if not release:
                self.check()
            elif self.lost:
                raise LeaseLostError(self.recorder.state_id, self.lost)
            assert self.state is not None
            self.extra_answers, self.found_made = [], False
            for _ in range(5):
                lease = None if release else self._info()
                candidate = mutation(self.state).with_lock(lease)
                try:
                    self.state, self.extra_answers = self.recorder.write_with(candidate, extra, base=self.state)
                    return self.state
                except VersionConflictError:
                    fresh = self.recorder.reread(self.state)
                    mine = fresh.lock is not None and fresh.lock.token == self.token
                    # Without extra entries, the change is simply applied again (idempotent).
                    landed = not mine if release else mine and bool(extra)
                    if landed and made(mutation, fresh):
                        # An earlier write of ours landed (its answer was lost, the repeat was
                        # refused): the change is made, with whatever was sent with it, and
                        # (for a release) the lease is gone. Nothing is sent again.
                        self.state, self.found_made = fresh, True
                        return fresh
                    if not mine:
                        holder = fresh.lock.describe() if fresh.lock else "nobody"
                        self._lose(f"the lease is now held by {holder}")
                    self.state = fresh  # our own earlier write landed; apply the change again
            self._lose("the state kept changing under this process")
            raise AssertionError("unreachable")

    def finish(self, mutation: Mutation, *, extra: Sequence[Mapping[str, Any]] = ()) -> MigrationState:
        """The run's last state change, written by the release of the lease (one request for
        both). Raises as `update` does: the change is not made unless this returns."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.recorder.connection.timeout + 5)
        state = self.update(self._leaving(mutation), release=True, extra=extra)
        self.lost, self.parting = "released", None
        return state

    def _leaving(self, change: Mutation) -> Mutation:
        """`change`, made by the write that releases the lease: a stop request meant for this
        run has done its work (or came too late), so it goes too."""

        def mutate(state: MigrationState) -> MigrationState:
            state = change(state)
            if state.control is not None and state.control.token == self.token:
                state = state.with_control(None)
            return state

        return mutate

    @property
    def held(self) -> MigrationState:
        """The state as this process last wrote or read it while holding the lease."""
        if self.state is None:
            raise LeaseLostError(self.recorder.state_id, "the lease was never taken")
        return self.state

    def check(self) -> None:
        if self.lost:
            raise LeaseLostError(self.recorder.state_id, self.lost)
        if self.overrun:
            raise RunTimeExceededError(self.run_limit)

    def start_run(self, limit: float | None) -> None:
        """A migration starts: past `limit` seconds, stop renewing and call on_overrun."""
        self.overrun = False
        self.run_limit = limit or 0.0
        self.run_deadline = time.monotonic() + limit if limit else None

    def end_run(self) -> None:
        self.run_deadline = None

    def _lose(self, why: str) -> None:
        self.lost = why
        self._stop.set()
        logger.error("Lost the migration lock on state %r: %s", self.recorder.state_id, why)
        raise LeaseLostError(self.recorder.state_id, why)

    # --- renewal and release ---------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(1.0, self.ttl / 3)
        while not self._stop.wait(self._next_wait(interval)):
            if self.run_deadline is not None and time.monotonic() >= self.run_deadline:
                self._overran()
                continue
            try:
                self.update(self.renewal or (lambda state: state))
                logger.debug("Renewed the migration lock on state %r", self.recorder.state_id)
            except LeaseLostError:
                return
            except RunTimeExceededError:
                # The session refused the renewal: the deadline passed between our check above
                # and the request. Stop the run all the same.
                self._overran()
                return
            except FhirServerError as exc:  # try again next tick; the lease outlives one miss
                logger.warning("Could not renew the migration lock: %s", exc)

    def _next_wait(self, interval: float) -> float:
        if self.run_deadline is None or self.overrun:
            return interval
        return max(0.05, min(interval, self.run_deadline - time.monotonic()))

    def _overran(self) -> None:
        if self.overrun:
            return
        self.overrun = True
        logger.error("The migration ran longer than MAX_RUN_TIME (%gs): the lease on state %r is no "
                     "longer renewed", self.run_limit, self.recorder.state_id)
        if self.on_overrun is not None:
            self.on_overrun()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.recorder.connection.timeout + 5)
        if self.state is None and self._taking and not self.lost:
            self._release_unknown()
            return
        if self.lost or self.state is None:
            return
        try:
            self.update(self._leaving(self.parting or _unchanged), release=True)
        except (LeaseLostError, FhirServerError) as exc:
            logger.warning("Could not release the migration lock (it will expire): %s", exc)
        finally:
            self.lost = self.lost or "released"

    def _release_unknown(self) -> None:
        """Interrupted while taking the lease (a signal between the server storing it and this
        object knowing): take it off if the server holds it for us, rather than leave it for
        its TTL."""
        self.lost = "released"
        try:
            state = self.recorder.read()
            for _ in range(3):
                if state.lock is None or state.lock.token != self.token:
                    return
                try:
                    self.recorder.write(state.with_lock(None))
                    return
                except VersionConflictError:
                    state = self.recorder.reread(state)
        except FhirServerError as exc:
            logger.warning("Could not release the migration lock (it will expire): %s", exc)

    def __enter__(self) -> MigrationLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
