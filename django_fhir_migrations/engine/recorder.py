"""The only code that reads or writes the migration state on the FHIR server.

One FHIR R4 `Basic` per project, found by `identifier = http://fhir.migration.system|<STATE_ID>`,
modelled with fhirclient's `Basic`. As the seed tool wrote it, `code.coding[0]` holds the head
(`{system: http://our.migration.system, code: <revision or "None">}`); we keep writing that so
the old tool still reads the head. Our additions are extensions under one base URL
(`EXTENSION_BASE`): one `applied-migration` per applied revision, in the order applied, and
the `migration-lock` lease (see lock.py). Keeping state and lease in one resource means every
state write is fenced by the lease: a write made with a stale version is refused (412).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from fhirclient.models.basic import Basic
from fhirclient.models.fhirabstractbase import FHIRValidationError

from .clock import isoformat, parse_datetime, utcnow
from .errors import CorruptStateError
from .fhir.client import FhirConnection, Reply, checked_id, version_from_location
from .redaction import printable

STATE_SYSTEM = "http://fhir.migration.system"
HEAD_SYSTEM = "http://our.migration.system"
NO_HEAD = "None"
EXTENSION_BASE = "http://fhir.migration.system/StructureDefinition/"
APPLIED_EXTENSION = EXTENSION_BASE + "applied-migration"
LOCK_EXTENSION = EXTENSION_BASE + "migration-lock"
OUR_EXTENSIONS = (APPLIED_EXTENSION, LOCK_EXTENSION)


@dataclass(frozen=True)
class AppliedMigration:
    revision: str
    name: str = ""
    applied_at: str | None = None
    duration_ms: int | None = None
    checksum: str | None = None
    applied_by: str | None = None
    fake: bool = False

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
        )


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

    def describe(self) -> str:
        return (f"{self.user}@{self.host} (pid {self.pid}, {self.command or 'fhir migrations'}, "
                f"since {self.started_at})")

    def to_extension(self) -> dict[str, Any]:
        renewed = parse_datetime(self.renewed_at) or utcnow()
        expires = isoformat(datetime.fromtimestamp(renewed.timestamp() + self.ttl, timezone.utc))
        return {
            "url": LOCK_EXTENSION,
            "extension": [
                {"url": "token", "valueString": self.token},
                {"url": "host", "valueString": self.host},
                {"url": "pid", "valueInteger": self.pid},
                {"url": "user", "valueString": self.user},
                {"url": "command", "valueString": self.command or "fhir migrations"},
                {"url": "startedAt", "valueDateTime": self.started_at},
                {"url": "renewedAt", "valueDateTime": self.renewed_at},
                {"url": "ttlSeconds", "valueInteger": int(round(self.ttl))},
                {"url": "expiresAt", "valueDateTime": expires},
            ],
        }

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
        )


class _Values:
    """The sub-extensions of one of our extensions, read with type checks.

    Whatever the server holds is checked before it is trusted or printed: a wrong type, a
    non-finite number or an unreadable date raises ValueError (the caller turns it into a
    CorruptStateError naming the state), and texts lose control characters (a holder string
    with ANSI escapes must not repaint the terminal of whoever runs showmigrations).
    """

    def __init__(self, ext: Any, what: str):
        self.what = what
        self.values: dict[str, Any] = {}
        subs = ext.get("extension") if isinstance(ext, dict) else None
        if not isinstance(subs, list):
            raise ValueError(f"a {what} extension has no sub-extensions")
        for sub in subs:
            if not isinstance(sub, dict) or not isinstance(sub.get("url"), str):
                raise ValueError(f"a {what} extension has a malformed part")
            for key, value in sub.items():
                if key.startswith("value"):
                    self.values[sub["url"]] = value

    def _get(self, name: str, kinds: tuple[type, ...], required: bool) -> Any:
        value = self.values.get(name)
        if value is None:
            if required:
                raise ValueError(f"the {self.what} extension has no {name}")
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ValueError(f"the {self.what} extension's {name} is {type(value).__name__} "
                             f"{printable(repr(value), 40)}, not {kinds[0].__name__}")
        return value

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, (str,), required)
        if value is None:
            return None
        cleaned = printable(value, 500)
        if required and not cleaned.strip():
            raise ValueError(f"the {self.what} extension has an empty {name}")
        return cleaned

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
    """One read of the state resource. `resource` is the fhirclient Basic it came from."""

    state_id: str
    resource: Basic | None = None
    version_id: str | None = None
    head: str | None = None
    applied: list[AppliedMigration] = field(default_factory=list)
    lock: LockInfo | None = None
    last_updated: datetime | None = None
    server_time: datetime | None = None  # the server's clock when this was read (Date header)

    @property
    def exists(self) -> bool:
        return self.resource is not None

    @property
    def resource_id(self) -> str | None:
        return self.resource.id if self.resource is not None else None

    def applied_record(self, revision: str) -> AppliedMigration | None:
        return next((a for a in self.applied if a.revision == revision), None)

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

    def to_json(self) -> dict[str, Any]:
        """The resource to send: whatever else the resource holds is kept as it was."""
        base = self.resource.as_json() if self.resource is not None else {"resourceType": "Basic"}
        data = copy.deepcopy(base)
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
        ours = [a.to_extension() for a in self.applied]
        if self.lock is not None:
            ours.append(self.lock.to_extension())
        if others or ours:
            data["extension"] = others + ours
        else:
            data.pop("extension", None)
        # Validate through fhirclient's model before anything is sent.
        return Basic(data).as_json()


class StateRecorder:
    def __init__(self, connection: FhirConnection, state_id: str):
        self.connection = connection
        self.state_id = state_id

    @property
    def search_params(self) -> dict[str, str]:
        return {"identifier": f"{STATE_SYSTEM}|{self.state_id}"}

    def read(self) -> MigrationState:
        """Find the state by its identifier (one request). A missing state is an empty one."""
        reply = self.connection.get("Basic", self.search_params)
        bundle = reply.body or {}
        if bundle.get("resourceType") != "Bundle":
            raise CorruptStateError(self.state_id, "the search for it did not return a Bundle")
        matches = [
            e.get("resource") for e in bundle.get("entry", [])
            if (e.get("search") or {}).get("mode", "match") == "match"
            and (e.get("resource") or {}).get("resourceType") == "Basic"
        ]
        if len(matches) > 1:
            ids = ", ".join(f"Basic/{m.get('id')}" for m in matches)
            raise CorruptStateError(
                self.state_id, f"more than one Basic resource carries its identifier ({ids})"
            )
        if not matches:
            return MigrationState(self.state_id, server_time=_server_time(reply))
        return self._parse(matches[0], reply)

    def reread(self, state: MigrationState) -> MigrationState:
        """Read by id: not subject to search indexing delays."""
        if not state.exists:
            return self.read()
        reply = self.connection.get(f"Basic/{state.resource_id}", allow=(404, 410))
        if reply.status in (404, 410):
            return MigrationState(self.state_id, server_time=_server_time(reply))
        return self._parse(reply.body or {}, reply)

    def create(self, state: MigrationState) -> tuple[MigrationState, bool]:
        """Conditional create: of many processes racing to create the state, one wins.

        Returns (state, created). When it already existed, the state returned is a fresh read.
        """
        body = state.to_json()
        reply = self.connection.request(
            "POST", "Basic", json=body,
            headers={"If-None-Exist": f"identifier={STATE_SYSTEM}|{self.state_id}",
                     "Prefer": "return=representation"},
        )
        if reply.status == 201:
            return self._written(state, body, reply), True
        return self.read(), False

    def write(self, state: MigrationState) -> MigrationState:
        """Version-aware update. Raises VersionConflictError if the state changed since read."""
        if not state.exists or not state.version_id:
            raise CorruptStateError(self.state_id, "it has no id or version to update against")
        body = state.to_json()
        body["id"] = state.resource_id
        reply = self.connection.request(
            "PUT", f"Basic/{state.resource_id}", json=body,
            headers={"If-Match": f'W/"{state.version_id}"', "Prefer": "return=representation"},
        )
        return self._written(state, body, reply)

    def refuses_stale_update(self, state: MigrationState) -> bool:
        """Whether the server refuses an update of the state whose If-Match is stale.

        The body is the state exactly as read, so a server that ignores If-Match only rewrites
        what it holds (when nobody wrote in between; if someone did, that server offers no
        protection against it anyway, which is what this finds out).
        """
        if not state.exists or not state.version_id:
            return True  # nothing to update yet: the first write is a conditional create
        body = state.to_json()
        body["id"] = state.resource_id
        reply = self.connection.request(
            "PUT", f"Basic/{state.resource_id}", json=body,
            headers={"If-Match": f'W/"{stale_version(state.version_id)}"'}, allow=(409, 412),
        )
        return reply.status in (409, 412)

    # --- parsing ---------------------------------------------------------------------------

    def _written(self, state: MigrationState, body: dict[str, Any], reply: Reply) -> MigrationState:
        if reply.body and reply.body.get("resourceType") == "Basic":
            return self._parse(reply.body, reply)
        resource_id, version = version_from_location(reply.location)
        body = dict(body, id=resource_id or body.get("id"),
                    meta={"versionId": reply.version_id or version})
        return self._parse(body, reply)

    def _parse(self, data: dict[str, Any], reply: Reply) -> MigrationState:
        location = f"Basic/{printable(data.get('id'), 64)}"
        try:
            checked_id("Basic", data.get("id"))
        except ValueError as exc:
            raise CorruptStateError(self.state_id, f"its id is unusable ({exc})", location) from None
        try:
            resource = Basic(data)
        except (FHIRValidationError, Exception) as exc:  # fhirclient raises bare Exception too
            raise CorruptStateError(
                self.state_id, f"it is not a valid FHIR Basic resource ({_first_line(exc)})", location
            ) from None
        head = None
        codings = (data.get("code") or {}).get("coding") or []
        if codings:
            code = codings[0].get("code")
            if not isinstance(code, str) or not code.strip():
                raise CorruptStateError(self.state_id, "code.coding[0] has no code", location)
            if code != printable(code, 200) or any(c.isspace() for c in code):
                raise CorruptStateError(
                    self.state_id, f"code.coding[0] ({printable(repr(code), 60)}) is not a revision id",
                    location)
            head = None if code == NO_HEAD else code
        else:
            raise CorruptStateError(self.state_id, "it has no code.coding[0] naming the head", location)
        applied: list[AppliedMigration] = []
        lock = None
        try:
            for ext in data.get("extension", []):
                if ext.get("url") == APPLIED_EXTENSION:
                    applied.append(AppliedMigration.from_extension(ext))
                elif ext.get("url") == LOCK_EXTENSION:
                    lock = LockInfo.from_extension(ext)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptStateError(self.state_id, str(exc), location) from None
        seen: set[str] = set()
        for entry in applied:
            if entry.revision in seen:
                raise CorruptStateError(
                    self.state_id, f"revision {entry.revision} is listed as applied twice", location
                )
            seen.add(entry.revision)
        meta = data.get("meta") or {}
        return MigrationState(
            state_id=self.state_id,
            resource=resource,
            version_id=reply.version_id if reply.body is data else meta.get("versionId"),
            head=head,
            applied=applied,
            lock=lock,
            last_updated=parse_datetime(meta.get("lastUpdated")),
            server_time=_server_time(reply),
        )


def stale_version(current: str) -> str:
    """A version id that is certainly not the current one: the previous integer, or "0"."""
    if current.isdigit() and int(current) > 1:
        return str(int(current) - 1)
    return "0" if current != "0" else "stale"


def _server_time(reply: Reply) -> datetime | None:
    value = reply.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return printable(text[0], 200) if text else type(exc).__name__
