"""What the engine reports while it works: events that carry facts, never sentences.

The engine never prints. It emits an event (as Django's executor calls
`progress_callback("apply_start", migration, fake)`), and whoever listens turns it into what
they need: the console into the lines a person reads, in the words of the front door in use
(console.py), the admin page into a message, the signals into Django signals, a test into
assertions, a JSON log into records. A listener must not raise; one that does is logged and
skipped, so a broken display never stops a migration.

One frozen dataclass per action: its `action` (a `Literal`, the name listeners dispatch on) and
its facts, typed. `EVENTS` lists them all (a test checks the Console renders every one). The
questions the engine asks before breaking something (`Question`) are facts too: the front door
words them and answers yes or no.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

if TYPE_CHECKING:
    from .script import MigrationScript

logger = logging.getLogger("django_fhir_migrations")

Direction = Literal["upgrade", "downgrade"]
Scripts = tuple["MigrationScript", ...]


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NothingToDo:
    """Nothing to apply or revert; `reason`: "another_process" (it applied them while this one
    waited for the lock), "below_head" (`script`, the target, is below the head) or ""."""

    action: ClassVar[Literal["nothing_to_do"]] = "nothing_to_do"
    direction: Direction = "upgrade"
    reason: Literal["", "another_process", "below_head"] = ""
    script: MigrationScript | None = None


@dataclass(frozen=True)
class Plan:
    """What would run (--plan), or what is unapplied (`check`: --check)."""

    action: ClassVar[Literal["plan"]] = "plan"
    scripts: Scripts
    direction: Direction = "upgrade"
    check: bool = False


@dataclass(frozen=True)
class ChecksumWarning:
    """Applied scripts edited since they ran: an upgrade proceeds anyway (--ignore-checksums,
    --plan, --check), or a downgrade runs them as they are now."""

    action: ClassVar[Literal["checksum_warning"]] = "checksum_warning"
    scripts: Scripts
    direction: Direction = "upgrade"


@dataclass(frozen=True)
class OutOfOrder:
    """`script` sits below applied migrations and will be applied now."""

    action: ClassVar[Literal["out_of_order"]] = "out_of_order"
    script: MigrationScript


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStart:
    action: ClassVar[Literal["run_start"]] = "run_start"
    direction: Direction
    scripts: Scripts
    state_id: str
    fake: bool = False


@dataclass(frozen=True)
class ApplyStart:
    action: ClassVar[Literal["apply_start"]] = "apply_start"
    direction: Direction
    script: MigrationScript
    fake: bool = False


@dataclass(frozen=True)
class ApplySuccess:
    """One migration applied (or reverted): `failures` refused entries it was applied with;
    `retried`: --retry-failed ran it over that many failed resources (`accepted_checksum`: the
    edited script's checksum it accepted, if edited)."""

    action: ClassVar[Literal["apply_success"]] = "apply_success"
    direction: Direction
    script: MigrationScript
    duration: float
    fake: bool = False
    failures: int = 0
    retried: int | None = None
    accepted_checksum: str = ""


@dataclass(frozen=True)
class ApplyFailed:
    """The migration raised; `error` its text, scrubbed. The error itself is raised to the
    front door, which reports it once."""

    action: ClassVar[Literal["apply_failed"]] = "apply_failed"
    direction: Direction
    script: MigrationScript
    error: str


@dataclass(frozen=True)
class RunDone:
    action: ClassVar[Literal["run_done"]] = "run_done"
    direction: Direction
    scripts: Scripts  # the ones done
    duration: float
    fake: bool = False


@dataclass(frozen=True)
class VerifyStart:
    action: ClassVar[Literal["verify_start"]] = "verify_start"
    script: MigrationScript


@dataclass(frozen=True)
class VerifyOnly:
    """upgrade() already ran with this script (an earlier attempt); verify() runs again."""

    action: ClassVar[Literal["verify_only"]] = "verify_only"
    script: MigrationScript


@dataclass(frozen=True)
class Resumed:
    """An interrupted attempt continues: `count` resources it wrote are skipped; `ignored`
    records tagged with it could not be verified as this tool's (`ignored_count` in all)."""

    action: ClassVar[Literal["resumed"]] = "resumed"
    script: MigrationScript
    count: int
    ignored: tuple[str, ...] = ()
    ignored_count: int = 0


@dataclass(frozen=True)
class Adopted:
    """--fake after a reset: the signed records of `attempts` earlier attempts (`resources`
    resources, recorded from `first` to `last`) become this record's; none found: `why`."""

    action: ClassVar[Literal["adopted"]] = "adopted"
    script: MigrationScript
    attempts: int
    resources: int = 0
    first: str = ""
    last: str = ""
    why: str = ""


@dataclass(frozen=True)
class RetryStart:
    """--retry-failed: `count` failed resources run again; `edited`: the script changed since."""

    action: ClassVar[Literal["retry_start"]] = "retry_start"
    script: MigrationScript
    count: int
    edited: bool = False


@dataclass(frozen=True)
class BundleFailures:
    """Refused entries within the failure budget (`budget`, as said: "5 failures"): the
    migration goes on. `groups`: (status, count, message, examples as Type/id) per kind."""

    action: ClassVar[Literal["bundle_failures"]] = "bundle_failures"
    script: MigrationScript | None
    count: int
    budget: str
    groups: tuple[tuple[str, int, str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class RecordsIgnored:
    """undo ignored `count` records or targets it cannot prove this tool wrote (`labels`: the
    first few)."""

    action: ClassVar[Literal["records_ignored"]] = "records_ignored"
    script: MigrationScript | None
    count: int
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """How far a loop got: `count` done (None: work with no count, e.g. a server's bulk job)
    of `total`, `duration` seconds so far; `final` at the end."""

    action: ClassVar[Literal["progress"]] = "progress"
    label: str
    count: int | None = 0
    total: int | None = None
    duration: float = 0.0
    final: bool = False
    script: MigrationScript | None = None


@dataclass(frozen=True)
class Throttle:
    """The adaptive back-off changed pace: `change` says from what to what."""

    action: ClassVar[Literal["throttle"]] = "throttle"
    change: str


# --- dry runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunStart:
    action: ClassVar[Literal["dry_run_start"]] = "dry_run_start"
    direction: Direction
    scripts: Scripts


@dataclass(frozen=True)
class DryRunScript:
    action: ClassVar[Literal["dry_run_script"]] = "dry_run_script"
    direction: Direction
    script: MigrationScript


@dataclass(frozen=True)
class DryRunDone:
    action: ClassVar[Literal["dry_run_done"]] = "dry_run_done"
    direction: Direction
    script: MigrationScript
    count: int  # writes intercepted


@dataclass(frozen=True)
class WriteIntercepted:
    """A write a dry run did not send: `count` resources (1, or a bulk patch's matches);
    `request`: method, URL and which fields change (never a resource's data)."""

    action: ClassVar[Literal["write_intercepted"]] = "write_intercepted"
    script: MigrationScript | None
    method: str
    resource_type: str
    resource_id: str  # "" for a create
    request: str
    count: int = 1


@dataclass(frozen=True)
class BundleIntercepted:
    """A bundle a dry run did not send; its entries follow as WriteIntercepted."""

    action: ClassVar[Literal["bundle_intercepted"]] = "bundle_intercepted"
    script: MigrationScript | None
    kind: str  # batch | transaction
    count: int


# --- the lock, pause and cancel ------------------------------------------------------------


@dataclass(frozen=True)
class LockWait:
    action: ClassVar[Literal["lock_wait"]] = "lock_wait"
    holder: str
    timeout: float


@dataclass(frozen=True)
class LockTakenOver:
    """`reason`: "holder_gone" (its process, `pid`, no longer runs on this host) or "expired"."""

    action: ClassVar[Literal["lock_taken_over"]] = "lock_taken_over"
    holder: str
    pid: int
    reason: str


@dataclass(frozen=True)
class LockFree:
    action: ClassVar[Literal["lock_free"]] = "lock_free"
    state_id: str


@dataclass(frozen=True)
class LockKept:
    action: ClassVar[Literal["lock_kept"]] = "lock_kept"
    holder: str


@dataclass(frozen=True)
class LockBroken:
    action: ClassVar[Literal["lock_broken"]] = "lock_broken"
    holder: str


@dataclass(frozen=True)
class StopRequested:
    action: ClassVar[Literal["stop_requested"]] = "stop_requested"
    stop: Literal["pause", "cancel"]
    holder: str


@dataclass(frozen=True)
class StopPending:
    """The running migration has not stopped yet (`stop` pending), or it finished first."""

    action: ClassVar[Literal["stop_pending"]] = "stop_pending"
    stop: str  # "pause", "cancel" or "finished"


@dataclass(frozen=True)
class Paused:
    """`by`: who asked; `when`: when it paused, if known (the pausing process does not say)."""

    action: ClassVar[Literal["paused"]] = "paused"
    script: MigrationScript | None
    count: int  # resources written
    by: str
    when: str = ""


@dataclass(frozen=True)
class Cancelled:
    """`count` resources reverted; `by_running_process`: the running process reverted them
    itself (and reported the count there)."""

    action: ClassVar[Literal["cancelled"]] = "cancelled"
    by: str
    script: MigrationScript | None = None
    count: int = 0
    by_running_process: bool = False


@dataclass(frozen=True)
class CancelKept:
    action: ClassVar[Literal["cancel_kept"]] = "cancel_kept"


@dataclass(frozen=True)
class NothingRunning:
    action: ClassVar[Literal["nothing_running"]] = "nothing_running"
    state_id: str


# --- state changes without running a migration ---------------------------------------------


@dataclass(frozen=True)
class Reset:
    action: ClassVar[Literal["reset"]] = "reset"
    state_id: str


@dataclass(frozen=True)
class ChecksumsAccepted:
    action: ClassVar[Literal["checksums_accepted"]] = "checksums_accepted"
    scripts: Scripts = ()


@dataclass(frozen=True)
class BulkJobForgotten:
    """`jobs`: the jobs forgotten, described ("" when there was none)."""

    action: ClassVar[Literal["bulk_job_forgotten"]] = "bulk_job_forgotten"
    jobs: str = ""


@dataclass(frozen=True)
class BulkJobKept:
    action: ClassVar[Literal["bulk_job_kept"]] = "bulk_job_kept"
    jobs: str


@dataclass(frozen=True)
class ScriptCreated:
    action: ClassVar[Literal["script_created"]] = "script_created"
    path: str
    revision: str
    parents: tuple[str, ...] = ()


Event = (NothingToDo | Plan | ChecksumWarning | OutOfOrder | RunStart | ApplyStart |
    ApplySuccess | ApplyFailed | RunDone | VerifyStart | VerifyOnly | Resumed | Adopted |
    RetryStart | BundleFailures | RecordsIgnored | Progress | Throttle | DryRunStart |
    DryRunScript | DryRunDone | WriteIntercepted | BundleIntercepted | LockWait |
    LockTakenOver | LockFree | LockKept | LockBroken | StopRequested | StopPending | Paused |
    Cancelled | CancelKept | NothingRunning | Reset | ChecksumsAccepted | BulkJobForgotten |
    BulkJobKept | ScriptCreated)
EVENTS: tuple[type[Event], ...] = get_args(Event)


# --- questions: the engine asks before it breaks something; the front door words them ------


@dataclass(frozen=True)
class BreakLockQuestion:
    """Break the lock `holder` holds on `state_id`? `condition`: the truth about its lease."""

    state_id: str
    holder: str
    condition: str


@dataclass(frozen=True)
class CancelQuestion:
    """Stop `names` (or the running migration) and revert what its application wrote?"""

    state_id: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class ForgetBulkJobQuestion:
    state_id: str
    jobs: str


@dataclass(frozen=True)
class ResetQuestion:
    state_id: str
    base_url: str


Question = BreakLockQuestion | CancelQuestion | ForgetBulkJobQuestion | ResetQuestion
QUESTIONS: tuple[type[Question], ...] = get_args(Question)
Confirm = Callable[[Question], bool]  # True: go ahead


Listener = Callable[[Event], None]


class EventStream:
    """The listeners of one command run; `emit` hands each event to each of them."""

    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners: list[Listener] = list(listeners or [])

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a display must never stop a migration
                logger.exception("An event listener failed on %r", event.action)
