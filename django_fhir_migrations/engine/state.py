"""The migration state's format: what one read of it holds, and its FHIR JSON both ways.

The state is one FHIR R4 `Basic` per project, found by `identifier =
http://fhir.migration.system|<STATE_ID>`. As the seed tool wrote it, `code.coding[0]` holds the
head (`{system: http://our.migration.system, code: <revision or "None">}`); we keep writing that
so the old tool still reads the head. Our additions are extensions under `EXTENSION_BASE`:

* `migration-lock`: the lease (lock.py);
* `migration-attempt`: one per migration whose application (or undo) started and has not
  finished: its attempt ids (the Provenance tags of the writes made so far), how many
  resources they wrote, and why the last attempt stopped. `fhirmigrate` resumes from it.
* `migration-control`: an operator's request to the running migration (`fhirmigrate --pause`,
  `--cancel`, the admin page's buttons): the action, the lease it is meant for, who asked and
  when. The holder sees it at its next bundle boundary (at most every CHECK_EVERY seconds) and
  stops itself; nothing is ever stopped from outside;
* `applied-count`: how many migrations are applied;
* `applied-migration`: one per applied migration, in the order applied (revision, name, when,
  how long, checksum, by whom, fake, attempt ids), as long as there are at most INLINE_LIMIT.

A longer history would make every state write re-send all of it (a write per migration, so
applying a long history would be quadratic). Beyond INLINE_LIMIT applied migrations, each
applied migration is a record of its own instead, written once when it is applied (and
deleted when it is reverted), in the same transaction as the state update that moves the head:
a `Basic` with `code = http://fhir.migration.system/record|applied-migration`, `subject` = the
state, and the same `applied-migration` extension. So a state write stays bounded, and every
record write is still fenced by the state's If-Match. The recorder moves entries between the
two forms (in one transaction) when the count crosses the limit.

Everything read here is server data: parsed with type checks (a wrong type is a
CorruptStateError naming the field), texts made printable. recorder.py does the I/O: it finds
the state and its records, and hands them to `parse_state` and `with_records`.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from fhirclient.models.basic import Basic
from fhirclient.models.fhirabstractbase import FHIRValidationError

from .clock import isoformat, parse_datetime, utcnow
from .errors import CorruptStateError
from .fhir.client import checked_id
from .redaction import printable

STATE_SYSTEM = "http://fhir.migration.system"
HEAD_SYSTEM = "http://our.migration.system"
NO_HEAD = "None"
EXTENSION_BASE = "http://fhir.migration.system/StructureDefinition/"
APPLIED_EXTENSION = EXTENSION_BASE + "applied-migration"
LOCK_EXTENSION = EXTENSION_BASE + "migration-lock"
ATTEMPT_EXTENSION = EXTENSION_BASE + "migration-attempt"
COUNT_EXTENSION = EXTENSION_BASE + "applied-count"
CONTROL_EXTENSION = EXTENSION_BASE + "migration-control"
OUR_EXTENSIONS = (APPLIED_EXTENSION, LOCK_EXTENSION, ATTEMPT_EXTENSION, COUNT_EXTENSION, CONTROL_EXTENSION)
CONTROL_ACTIONS = ("pause", "cancel")
RECORD_SYSTEM = "http://fhir.migration.system/record"
RECORD_CODE = "applied-migration"
RECORD_IDENTIFIER = "http://fhir.migration.system/applied"
INLINE_LIMIT = 100  # applied entries kept in the state itself; beyond, one record each


@dataclass(frozen=True)
class AppliedMigration:
    revision: str
    name: str = ""
    applied_at: str | None = None
    duration_ms: int | None = None
    checksum: str | None = None
    applied_by: str | None = None
    fake: bool = False
    attempts: tuple[str, ...] = ()  # the Provenance tags of its writes: what ctx.undo() reverts
    provenance: bool = False  # applied with its writes recorded as Provenance (undo can work)
    failures: int = 0  # refused entries left within its failure budget (failures.py holds them)

    def to_extension(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"url": "revision", "valueString": self.revision}]
        if self.name:
            parts.append({"url": "name", "valueString": self.name})
        if self.applied_at:
            parts.append({"url": "appliedAt", "valueDateTime": self.applied_at})
        if self.duration_ms is not None:
            parts.append({"url": "durationMs", "valueInteger": int(self.duration_ms)})
        if self.checksum:
            parts.append({"url": "checksum", "valueString": self.checksum})
        if self.applied_by:
            parts.append({"url": "appliedBy", "valueString": self.applied_by})
        if self.fake:
            parts.append({"url": "fake", "valueBoolean": True})
        if self.provenance:
            parts.append({"url": "provenance", "valueBoolean": True})
        if self.failures:
            parts.append({"url": "failures", "valueInteger": int(self.failures)})
        parts += [{"url": "attempt", "valueString": a} for a in self.attempts]
        return {"url": APPLIED_EXTENSION, "extension": parts}

    @classmethod
    def from_extension(cls, ext: dict[str, Any]) -> AppliedMigration:
        values = _Values(ext, "applied-migration")
        revision = values.text("revision", required=True)
        if any(c.isspace() for c in revision or ""):
            raise ValueError(f"an applied-migration extension has the revision {revision!r}")
        return cls(
            revision=revision or "",
            name=values.text("name") or "",
            applied_at=values.moment("appliedAt"),
            duration_ms=values.integer("durationMs", minimum=0),
            checksum=values.text("checksum"),
            applied_by=values.text("appliedBy"),
            fake=values.boolean("fake"),
            attempts=values.texts("attempt"),
            provenance=values.boolean("provenance"),
            failures=values.integer("failures", minimum=0) or 0,
        )

    def record_identifier(self, state_id: str) -> str:
        return f"{state_id}/{self.revision}"

    def to_record(self, state_id: str, state_resource_id: str) -> dict[str, Any]:
        """The record resource: written once when the migration is applied."""
        return {
            "resourceType": "Basic",
            "identifier": [{"system": RECORD_IDENTIFIER, "value": self.record_identifier(state_id)}],
            "code": {"coding": [{"system": RECORD_SYSTEM, "code": RECORD_CODE}],
                     "text": "Applied FHIR data migration"},
            "subject": {"reference": f"Basic/{state_resource_id}"},
            "extension": [self.to_extension()],
        }


@dataclass(frozen=True)
class LockInfo:
    token: str
    host: str
    pid: int
    user: str
    started_at: str
    ttl: float
    renewed_at: str
    command: str = ""
    # Where the holder runs, beyond its host name: a process on the same host (same boot, same
    # pid namespace) can tell that the holder's pid is gone and take over at once (lock.py).
    boot_id: str = ""
    pid_namespace: str = ""

    def describe(self) -> str:
        return (f"{self.user}@{self.host} (pid {self.pid}, {self.command or 'fhir migrations'}, "
                f"since {self.started_at})")

    def to_extension(self) -> dict[str, Any]:
        renewed = parse_datetime(self.renewed_at) or utcnow()
        expires = isoformat(datetime.fromtimestamp(renewed.timestamp() + self.ttl, timezone.utc))
        parts: list[dict[str, Any]] = [
            {"url": "token", "valueString": self.token},
            {"url": "host", "valueString": self.host},
            {"url": "pid", "valueInteger": self.pid},
            {"url": "user", "valueString": self.user},
            {"url": "command", "valueString": self.command or "fhir migrations"},
            {"url": "startedAt", "valueDateTime": self.started_at},
            {"url": "renewedAt", "valueDateTime": self.renewed_at},
            {"url": "ttlSeconds", "valueInteger": int(round(self.ttl))},
            {"url": "expiresAt", "valueDateTime": expires},
        ]
        if self.boot_id:
            parts.append({"url": "bootId", "valueString": self.boot_id})
        if self.pid_namespace:
            parts.append({"url": "pidNamespace", "valueString": self.pid_namespace})
        return {"url": LOCK_EXTENSION, "extension": parts}

    @classmethod
    def from_extension(cls, ext: dict[str, Any]) -> LockInfo:
        values = _Values(ext, "migration-lock")
        ttl = values.number("ttlSeconds", minimum=1)
        return cls(
            token=values.text("token", required=True) or "",
            host=values.text("host") or "?",
            pid=values.integer("pid", minimum=0) or 0,
            user=values.text("user") or "?",
            started_at=values.moment("startedAt") or "?",
            ttl=60.0 if ttl is None else ttl,
            renewed_at=values.moment("renewedAt") or values.moment("startedAt") or "",
            command=values.text("command") or "",
            boot_id=values.text("bootId") or "",
            pid_namespace=values.text("pidNamespace") or "",
        )


@dataclass(frozen=True)
class ControlRequest:
    """An operator asked the run holding lease `token` to pause or cancel (see the module doc)."""

    action: str  # "pause" or "cancel"
    token: str  # the lease (lock token) of the run it is meant for
    requested_by: str
    requested_at: str

    def to_extension(self) -> dict[str, Any]:
        return {"url": CONTROL_EXTENSION, "extension": [
            {"url": "action", "valueCode": self.action}, {"url": "token", "valueString": self.token},
            {"url": "requestedBy", "valueString": self.requested_by},
            {"url": "requestedAt", "valueDateTime": self.requested_at}]}

    @classmethod
    def from_extension(cls, ext: dict[str, Any]) -> ControlRequest:
        values = _Values(ext, "migration-control")
        action = values.code("action")
        if action not in CONTROL_ACTIONS:
            raise ValueError(f"the migration-control extension's action is {action!r}")
        return cls(action=action, token=values.text("token", required=True) or "",
                   requested_by=values.text("requestedBy") or "?",
                   requested_at=values.moment("requestedAt") or "")


@dataclass(frozen=True)
class AttemptRecord:
    """A migration's application (direction "upgrade") or undo ("downgrade") that started and
    has not finished: the next run resumes it."""

    revision: str
    direction: str
    attempts: tuple[str, ...]  # oldest first; the last is the one running or interrupted
    started_at: str
    written: int = 0
    updated_at: str | None = None
    error: str = ""
    job: str = ""  # a server-side bulk job it started (its status URL), to re-attach to
    job_started: str = ""  # when the server started it (its clock)
    job_call: int = 0  # which ctx.bulk_patch call of the script started it (1 = the first; 0: unknown)
    jobs_done: tuple[str, ...] = ()  # "call:count" of each server job that finished and was recorded
    upgraded: str = ""  # upgrade() completed with the script of this checksum; verify() did not pass
    paused: str = ""  # stopped on request (fhirmigrate --pause): by whom, when
    total: int | None = None  # how many resources the script said it would go through (progress)
    current_started: str = ""  # when the latest attempt began, and how many were written before it:
    current_base: int = 0  # its own rate excludes the time the application was paused or dead
    reverts: tuple[str, ...] = ()  # a cancel: the upgrade attempts whose writes this one reverts

    @property
    def current(self) -> str:
        return self.attempts[-1]

    def rate(self) -> float | None:
        """Resources per second of the latest attempt (a pause or a crash before it is not
        counted as slowness), else since the application started."""
        start = parse_datetime(self.current_started or self.started_at)
        end = parse_datetime(self.updated_at)
        done = self.written - (self.current_base if self.current_started else 0)
        if start is None or end is None or end <= start or done <= 0:
            return None
        return done / (end - start).total_seconds()

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far, when the script said how many there are."""
        rate = self.rate()
        if rate is None or self.total is None or self.total <= self.written:
            return None
        return (self.total - self.written) / rate

    @property
    def previous(self) -> tuple[str, ...]:
        return self.attempts[:-1]

    def describe(self) -> str:
        verb = "applied" if self.direction == "upgrade" else "reverted"
        since = f", last seen {self.updated_at}" if self.updated_at else ""
        why = f"; it stopped with: {self.error}" if self.error else ""
        if self.upgraded:
            return (f"upgraded ({self.written:,} resource(s) written) but its verify() did not pass"
                    f"{why}")
        if self.reverts:
            return (f"being cancelled: {self.written:,} resource(s) reverted so far{since}; "
                    "`--cancel` again finishes it")
        if self.paused:
            return f"paused {self.paused}: {self.written:,} resource(s) written{since}"
        return (f"partially {verb}: {self.written:,} resource(s) written by {len(self.attempts)} "
                f"attempt(s){since}{why}")

    def to_extension(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [
            {"url": "revision", "valueString": self.revision},
            {"url": "direction", "valueString": self.direction},
            *({"url": "attempt", "valueString": a} for a in self.attempts),
            {"url": "startedAt", "valueDateTime": self.started_at},
            {"url": "written", "valueInteger": int(self.written)},
        ]
        if self.updated_at:
            parts.append({"url": "updatedAt", "valueDateTime": self.updated_at})
        if self.error:
            parts.append({"url": "error", "valueString": self.error[:500]})
        if self.job:
            parts.append({"url": "job", "valueString": self.job})
            parts.append({"url": "jobStarted", "valueDateTime": self.job_started})
            if self.job_call:
                parts.append({"url": "jobCall", "valueInteger": int(self.job_call)})
        parts += [{"url": "jobDone", "valueString": done} for done in self.jobs_done]
        if self.upgraded:
            parts.append({"url": "upgraded", "valueString": self.upgraded})
        if self.paused:
            parts.append({"url": "paused", "valueString": self.paused})
        if self.total is not None:
            parts.append({"url": "total", "valueInteger": int(self.total)})
        if self.current_started:
            parts.append({"url": "currentStarted", "valueDateTime": self.current_started})
            parts.append({"url": "currentBase", "valueInteger": int(self.current_base)})
        parts += [{"url": "reverts", "valueString": a} for a in self.reverts]
        return {"url": ATTEMPT_EXTENSION, "extension": parts}

    @classmethod
    def from_extension(cls, ext: dict[str, Any]) -> AttemptRecord:
        values = _Values(ext, "migration-attempt")
        direction = values.text("direction", required=True)
        if direction not in ("upgrade", "downgrade"):
            raise ValueError(f"the migration-attempt extension's direction is {direction!r}")
        attempts = values.texts("attempt")
        if not attempts:
            raise ValueError("the migration-attempt extension names no attempt")
        return cls(
            revision=values.text("revision", required=True) or "",
            direction=direction,
            attempts=attempts,
            started_at=values.moment("startedAt") or "",
            written=values.integer("written", minimum=0) or 0,
            updated_at=values.moment("updatedAt"),
            error=values.text("error") or "",
            job=values.text("job") or "",
            job_started=values.moment("jobStarted") or "",
            job_call=values.integer("jobCall", minimum=0) or 0,
            jobs_done=_jobs_done(values.texts("jobDone")),
            upgraded=values.text("upgraded") or "",
            paused=values.text("paused") or "",
            total=values.integer("total", minimum=0),
            current_started=values.moment("currentStarted") or "",
            current_base=values.integer("currentBase", minimum=0) or 0,
            reverts=values.texts("reverts"),
        )


def _jobs_done(entries: tuple[str, ...]) -> tuple[str, ...]:
    for entry in entries:
        if not re.fullmatch(r"[0-9]{1,6}:[0-9]{1,12}", entry):
            raise ValueError("a jobDone of the migration-attempt extension is not call:count")
    return entries


class _Values:
    """The sub-extensions of one of our extensions, read with type checks.

    Whatever the server holds is checked before it is trusted or printed: a wrong type, a
    non-finite number or an unreadable date raises ValueError (the caller turns it into a
    CorruptStateError naming the state), and texts lose control characters (a holder string
    with ANSI escapes must not repaint the terminal of whoever runs showmigrations).
    """

    def __init__(self, ext: Any, what: str):
        self.what = what
        self.values: dict[str, list[Any]] = {}
        subs = ext.get("extension") if isinstance(ext, dict) else None
        if not isinstance(subs, list):
            raise ValueError(f"a {what} extension has no sub-extensions")
        for sub in subs:
            if not isinstance(sub, dict) or not isinstance(sub.get("url"), str):
                raise ValueError(f"a {what} extension has a malformed part")
            for key, value in sub.items():
                if key.startswith("value"):
                    self.values.setdefault(sub["url"], []).append(value)

    def _check(self, name: str, value: Any, kinds: tuple[type, ...]) -> Any:
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ValueError(f"the {self.what} extension's {name} is {type(value).__name__} "
                             f"{printable(repr(value), 40)}, not {kinds[0].__name__}")
        return value

    def _get(self, name: str, kinds: tuple[type, ...], required: bool) -> Any:
        values = self.values.get(name)
        if not values:
            if required:
                raise ValueError(f"the {self.what} extension has no {name}")
            return None
        return self._check(name, values[-1], kinds)

    def code(self, name: str) -> str | None:
        value = self._get(name, (str,), False)
        return printable(value, 40) if value is not None else None

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, (str,), required)
        if value is None:
            return None
        cleaned = printable(value, 500)
        if required and not cleaned.strip():
            raise ValueError(f"the {self.what} extension has an empty {name}")
        return cleaned

    def texts(self, name: str) -> tuple[str, ...]:
        return tuple(printable(self._check(name, v, (str,)), 100) for v in self.values.get(name, []))

    def integer(self, name: str, *, minimum: int) -> int | None:
        value = self._get(name, (int,), False)
        if value is not None and value < minimum:
            raise ValueError(f"the {self.what} extension's {name} is {value}, below {minimum}")
        return value

    def number(self, name: str, *, minimum: float) -> float | None:
        value = self._get(name, (int, float), False)
        if value is None:
            return None
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"the {self.what} extension's {name} is {value!r}, not a finite "
                             f"number of at least {minimum:g}")
        return float(value)

    def boolean(self, name: str) -> bool:
        return bool(self._get(name, (bool,), False))

    def moment(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and parse_datetime(value) is None:
            raise ValueError(f"the {self.what} extension's {name} is not a date-time "
                             f"({printable(repr(value), 40)})")
        return value


@dataclass
class MigrationState:
    """One read of the state resource (and its records). `resource` is the fhirclient Basic it
    came from; `records` maps each applied revision stored as a record to the record's id."""

    state_id: str
    resource: Basic | None = None
    version_id: str | None = None
    head: str | None = None
    applied: list[AppliedMigration] = field(default_factory=list)
    lock: LockInfo | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    control: ControlRequest | None = None
    records: dict[str, str] = field(default_factory=dict)
    inline: bool = False  # applied entries were read from the state's own extensions
    last_updated: datetime | None = None
    server_time: datetime | None = None  # the server's clock when this was read (Date header)

    @property
    def exists(self) -> bool:
        return self.resource is not None

    @property
    def resource_id(self) -> str | None:
        return self.resource.id if self.resource is not None else None

    def applied_record(self, revision: str) -> AppliedMigration | None:
        return self._by_revision.get(revision)

    @cached_property
    def _by_revision(self) -> dict[str, AppliedMigration]:
        # `applied` is replaced (dataclasses.replace), never changed in place: safe to cache.
        return {a.revision: a for a in self.applied}

    def attempt_for(self, revision: str, direction: str | None = None) -> AttemptRecord | None:
        return next((a for a in self.attempts if a.revision == revision
                     and (direction is None or a.direction == direction)), None)

    def lease_silence(self) -> float:
        """Seconds since the lease was last written, on the server's clock."""
        now = self.server_time or utcnow()
        renewed = parse_datetime(self.lock.renewed_at) if self.lock is not None else None
        last = self.last_updated or renewed or now
        return max(0.0, (now - last).total_seconds())

    def lock_expired(self) -> bool:
        """Judged on the server's clock alone (last write vs. Date header): no host skew."""
        if self.lock is None:
            return True
        now = self.server_time or utcnow()
        last = self.last_updated or parse_datetime(self.lock.renewed_at) or now
        return (now - last).total_seconds() > self.lock.ttl

    def describe_location(self) -> str:
        if self.resource_id:
            return f"Basic/{self.resource_id}"
        return f"Basic?identifier={STATE_SYSTEM}|{self.state_id}"

    # --- changes (return a new state; the recorder writes it) -----------------------------

    def with_applied(self, applied: list[AppliedMigration], head: str | None) -> MigrationState:
        return replace(self, applied=list(applied), head=head)

    def with_lock(self, lock: LockInfo | None) -> MigrationState:
        return replace(self, lock=lock)

    def with_control(self, control: ControlRequest | None) -> MigrationState:
        return replace(self, control=control)

    def with_attempt(self, record: AttemptRecord | None, revision: str) -> MigrationState:
        """This revision's attempt record replaced by `record` (None: removed)."""
        others = [a for a in self.attempts if a.revision != revision]
        return replace(self, attempts=others + ([record] if record is not None else []))

    @property
    def applied_inline(self) -> bool:
        """Whether this state's applied entries are written into the state itself."""
        return len(self.applied) <= INLINE_LIMIT

    def to_json(self) -> dict[str, Any]:
        """The state resource to send: whatever else it holds is kept as it was."""
        base = self.resource.as_json() if self.resource is not None else {"resourceType": "Basic"}
        data: dict[str, Any] = copy.deepcopy(base)
        data.pop("meta", None)
        identifiers = data.get("identifier") or []
        if not any(i.get("system") == STATE_SYSTEM and i.get("value") == self.state_id
                   for i in identifiers):
            identifiers.append({"system": STATE_SYSTEM, "value": self.state_id})
        data["identifier"] = identifiers
        code = data.get("code") or {}
        codings = list(code.get("coding") or [])
        head_coding = {"system": HEAD_SYSTEM, "code": self.head or NO_HEAD}
        if codings:
            codings[0] = head_coding
        else:
            codings = [head_coding]
        code["coding"] = codings
        code.setdefault("text", "FHIR data migration state")
        data["code"] = code
        others = [e for e in data.get("extension", []) if e.get("url") not in OUR_EXTENSIONS]
        ours: list[dict[str, Any]] = []
        if self.applied:
            ours.append({"url": COUNT_EXTENSION, "valueInteger": len(self.applied)})
        if self.applied_inline:
            ours += [a.to_extension() for a in self.applied]
        ours += [a.to_extension() for a in self.attempts]
        if self.lock is not None:
            ours.append(self.lock.to_extension())
        if self.control is not None:
            ours.append(self.control.to_extension())
        if others or ours:
            data["extension"] = others + ours
        else:
            data.pop("extension", None)
        # Validate through fhirclient's model before anything is sent.
        return Basic(data).as_json()



# --- reading it back (server data) ----------------------------------------------------------------


def parse_state(state_id: str, data: dict[str, Any], *, version_id: str | None,
                server_time: datetime | None) -> MigrationState:
    """The state from its Basic resource (server data: every field checked, CorruptStateError
    naming the one that is wrong); `version_id` as the server reported it, `server_time` from
    its Date header. Records of its own come after, through `with_records`."""
    location = f"Basic/{printable(data.get('id'), 64)}"
    try:
        checked_id("Basic", data.get("id"))
    except ValueError as exc:
        raise CorruptStateError(state_id, f"its id is unusable ({exc})", location) from None
    try:
        resource = Basic(data)
    except (FHIRValidationError, Exception) as exc:  # fhirclient raises bare Exception too
        raise CorruptStateError(
            state_id, f"it is not a valid FHIR Basic resource ({_first_line(exc)})", location
        ) from None
    head = None
    codings = (data.get("code") or {}).get("coding") or []
    if codings:
        code = codings[0].get("code")
        if not isinstance(code, str) or not code.strip():
            raise CorruptStateError(state_id, "code.coding[0] has no code", location)
        if code != printable(code, 200) or any(c.isspace() for c in code):
            raise CorruptStateError(
                state_id, f"code.coding[0] ({printable(repr(code), 60)}) is not a revision id",
                location)
        head = None if code == NO_HEAD else code
    else:
        raise CorruptStateError(state_id, "it has no code.coding[0] naming the head", location)
    applied: list[AppliedMigration] = []
    attempts: list[AttemptRecord] = []
    lock = None
    control = None
    try:
        for ext in data.get("extension", []):
            if ext.get("url") == APPLIED_EXTENSION:
                applied.append(AppliedMigration.from_extension(ext))
            elif ext.get("url") == LOCK_EXTENSION:
                lock = LockInfo.from_extension(ext)
            elif ext.get("url") == ATTEMPT_EXTENSION:
                attempts.append(AttemptRecord.from_extension(ext))
            elif ext.get("url") == CONTROL_EXTENSION:
                control = ControlRequest.from_extension(ext)
        applied_count(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise CorruptStateError(state_id, str(exc), location) from None
    seen: set[str] = set()
    for entry in applied:
        if entry.revision in seen:
            raise CorruptStateError(
                state_id, f"revision {entry.revision} is listed as applied twice", location
            )
        seen.add(entry.revision)
    meta = data.get("meta") or {}
    return MigrationState(
        state_id=state_id,
        resource=resource,
        version_id=version_id,
        head=head,
        applied=applied,
        lock=lock,
        attempts=attempts,
        control=control,
        inline=bool(applied),
        last_updated=parse_datetime(meta.get("lastUpdated")),
        server_time=server_time,
    )


def with_records(state: MigrationState, records: list[dict[str, Any]], expected: int | None
                 ) -> MigrationState:
    """`state` with the applied migrations its records hold (`expected`: its applied-count)."""
    state_id = state.state_id
    location = state.describe_location()
    applied = list(state.applied)  # inline (written before records existed)
    ids: dict[str, str] = {}
    for record in records:
        try:
            entry = next(AppliedMigration.from_extension(ext) for ext in record.get("extension") or []
                         if isinstance(ext, dict) and ext.get("url") == APPLIED_EXTENSION)
            record_id = checked_id("Basic", record.get("id"))
        except (StopIteration, ValueError, TypeError) as exc:
            raise CorruptStateError(
                state_id, f"its applied record Basic/{printable(record.get('id'), 64)} "
                f"cannot be read ({exc or 'no applied-migration extension'})", location) from None
        if entry.revision in ids or any(a.revision == entry.revision for a in applied):
            raise CorruptStateError(
                state_id, f"revision {entry.revision} is listed as applied twice", location)
        ids[entry.revision] = record_id
        applied.append(entry)
    if expected is not None and len(applied) != expected:
        raise CorruptStateError(
            state_id, f"it counts {expected} applied migration(s) but {len(applied)} of them "
            "were found", location)
    applied.sort(key=lambda a: (a.applied_at or "", a.revision) if a.revision in ids else ("", ""))
    return replace(state, applied=applied, records=ids)


def is_state(resource: dict[str, Any], state_id: str) -> bool:
    return any(isinstance(i, dict) and i.get("system") == STATE_SYSTEM and i.get("value") == state_id
               for i in resource.get("identifier") or [])


def is_record(resource: dict[str, Any], state_resource_id: str) -> bool:
    if resource.get("resourceType") != "Basic":
        return False
    codings = (resource.get("code") or {}).get("coding") or []
    subject = (resource.get("subject") or {}).get("reference") or ""
    return (any(isinstance(c, dict) and c.get("system") == RECORD_SYSTEM and c.get("code") == RECORD_CODE
                for c in codings)
            and subject.split("/_history")[0] == f"Basic/{state_resource_id}")


def applied_count(data: dict[str, Any]) -> int | None:
    for ext in data.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == COUNT_EXTENSION:
            value = ext.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"the applied-count extension is {printable(repr(value), 40)}")
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return printable(text[0], 200) if text else type(exc).__name__


__all__ = [
    "APPLIED_EXTENSION", "ATTEMPT_EXTENSION", "AppliedMigration", "AttemptRecord", "ControlRequest", "LockInfo",
    "MigrationState", "RECORD_CODE", "RECORD_SYSTEM", "STATE_SYSTEM", "parse_state", "with_records",
]
