"""The audit trail: a log line for every action, and a FHIR R4 AuditEvent on the server.

AuditEvents record who (user, host, process), what (revision, script, state resource), when,
and the outcome with the error text. Writing one must never hide or replace the migration's own
outcome: a failed audit write is logged as a warning and swallowed. Error texts are checked
for credentials before they leave the process.

Log levels of the `django_fhir_migrations` logger: INFO for each migration done (with its
duration) and each reset or lock break, WARNING for an AuditEvent that could not be written,
ERROR for a migration that failed.

`recent_events` reads the trail back (newest first) for the admin status page. Some servers
keep no AuditEvents from clients (Helios refuses every one, 405, by policy; its
CapabilityStatement offers no `create` for AuditEvent): `read_history` then says so and falls
back to what the state itself records (applied migrations: when, by whom, how long, in how many
attempts; interrupted attempts), rather than "nothing recorded".
"""

from __future__ import annotations

import html
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .clock import isoformat, parse_datetime, utcnow
from .errors import FhirMigrationError, FhirServerError
from .fhir.client import FhirConnection
from .redaction import printable, scrub
from .script import MigrationScript
from .state import AttemptRecord, MigrationState
from .version import __version__

logger = logging.getLogger("django_fhir_migrations")

EVENT_SYSTEM = "http://fhir.migration.system/CodeSystem/migration-event"
EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
# subtype code -> (display, AuditEvent.action)
EVENTS = {
    "applied": ("Migration applied", "E"),
    "reverted": ("Migration reverted", "E"),
    "faked": ("Migration recorded as applied without running", "U"),
    "unfaked": ("Migration recorded as reverted without running", "U"),
    "failed": ("Migration failed", "E"),
    "reset": ("Migration state reset", "U"),
    "lock-broken": ("Migration lock broken", "U"),
    "lock-taken-over": ("Migration lock taken over from a holder that stopped", "U"),
    "checksums-accepted": ("Checksums of edited migrations accepted", "U"),
    "bulk-job-forgotten": ("Bulk job of an interrupted migration forgotten", "U"),
    "paused": ("Migration paused on request", "E"),
    "cancelled": ("Migration cancelled on request, its writes reverted", "E"),
}
SUCCESS, SERIOUS_FAILURE = "0", "8"

@dataclass
class Actor:
    """Who is acting: kept together so every AuditEvent and state entry says the same."""

    user: str
    host: str
    pid: int
    command: str
    source: str  # the application (project) name

    @classmethod
    def current(cls, user: str, command: str, source: str) -> Actor:
        return cls(user=user, host=socket.gethostname(), pid=os.getpid(), command=command,
                   source=source)

    def describe(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid})"


@dataclass(frozen=True)
class PendingEvent:
    """An AuditEvent built and not sent yet: `entry()` commits it in a transaction."""

    event: str
    what: str
    body: dict[str, Any]

    def entry(self) -> dict[str, Any]:
        return {"resource": self.body, "request": {"method": "POST", "url": "AuditEvent"}}


class AuditTrail:
    def __init__(self, connection: FhirConnection | None, actor: Actor, *, enabled: bool = True):
        self.connection = connection
        self.actor = actor
        self.enabled = enabled and connection is not None
        self.written: list[str] = []  # ids of AuditEvents written by this process
        self.refused = ""  # why the server refuses AuditEvents (a 405): not asked again this run

    def record(self, event: str, *, script: MigrationScript | None = None,
               state: MigrationState | None = None, error: BaseException | str | None = None,
               duration: float | None = None, detail: str = "") -> None:
        """Log the event and, if enabled, write its AuditEvent. Never raises."""
        pending = self.prepare(event, script=script, state=state, error=error, duration=duration,
                               detail=detail)
        if pending is not None:
            self.send(pending)

    def prepare(self, event: str, *, script: MigrationScript | None = None,
                state: MigrationState | None = None, error: BaseException | str | None = None,
                duration: float | None = None, detail: str = "") -> PendingEvent | None:
        """Log the event; return its AuditEvent, to be sent (None when disabled). Never raises.

        Split from `send` so the executor can commit an AuditEvent in the same transaction as
        the state write that records the migration (one request, not two), and `send` it on its
        own only if that transaction was refused."""
        what = f"{script.name} ({script.revision})" if script else (detail or "")
        text = scrub(error_text(error)) if error is not None else ""
        if error is None:
            timing = f" in {duration:.2f}s" if duration is not None else ""
            logger.info("%s: %s%s by %s", EVENTS[event][0], what, timing, self.actor.describe())
        else:
            logger.error("%s: %s by %s: %s", EVENTS[event][0], what, self.actor.describe(), text)
        if not self.enabled:
            return None
        if self.refused:  # said once, at the first refusal; the log line above is the record
            logger.debug("Not written as an AuditEvent (the server refuses them): %s %s", event, what)
            return None
        try:
            body = self.build(event, script=script, state=state, error_text=text, detail=detail,
                              duration=duration)
        except Exception as exc:  # noqa: BLE001 - the audit must not mask the migration's outcome
            logger.warning("Could not write the AuditEvent for %s %s: %s", event, what,
                           scrub(f"{type(exc).__name__}: {exc}"))
            return None
        return PendingEvent(event, what, body)

    def send(self, pending: PendingEvent) -> None:
        """POST the AuditEvent on its own. Never raises: a refusal is logged as a warning."""
        assert self.connection is not None  # enabled only with a connection
        try:
            reply = self.connection.request("POST", "AuditEvent", json=pending.body, idempotent=False)
        except Exception as exc:  # noqa: BLE001 - the audit must not mask the migration's outcome
            reason = str(exc) if isinstance(exc, FhirMigrationError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, FhirServerError) and exc.status == 405:
                self.refuse(pending, reason)
                return
            logger.warning("Could not write the AuditEvent for %s %s: %s", pending.event, pending.what,
                           scrub(reason))
            return
        if reply.body and reply.body.get("id"):
            self.written.append(reply.body["id"])

    def refuse(self, pending: PendingEvent, reason: str) -> None:
        """The server answered 405 Method Not Allowed to an AuditEvent (alone or in the
        transaction of a record): a policy (Helios keeps no AuditEvents from clients), not a
        passing fault. Said once; later events of this run are only logged."""
        self.refused = scrub(reason)
        logger.warning("Could not write the AuditEvent for %s %s: the server refuses AuditEvents from "
                       "clients (%s); the log and the state (fhirhistory) are the record of this run",
                       pending.event, pending.what, self.refused)

    def committed(self, pending: PendingEvent, answer: Mapping[str, Any] | None) -> None:
        """The answer to `pending.entry()` sent in a transaction (None: it landed with an
        earlier write whose answer was lost)."""
        response = (answer or {}).get("response") or {}
        status = str(response.get("status", ""))
        if answer is not None and not status.startswith("2"):  # a server that does not roll back
            logger.warning("Could not write the AuditEvent for %s %s: the server answered %s",
                           pending.event, pending.what, printable(status, 60) or "no status")
            return
        resource_id = str(response.get("location") or "").split("/_history")[0].rsplit("/", 1)[-1]
        if resource_id:
            self.written.append(resource_id)

    def build(self, event: str, *, script: MigrationScript | None, state: MigrationState | None,
              error_text: str = "", detail: str = "", duration: float | None = None
              ) -> dict[str, Any]:
        """The AuditEvent resource (FHIR R4; passes the server's `$validate`)."""
        display, action = EVENTS[event]
        failed = event == "failed"
        recorded = utcnow()
        entity: dict[str, Any] = {
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                     "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                     "code": "13", "display": "Security Resource"},
            "name": f"FHIR migration state {state.state_id if state else ''}".strip(),
            "detail": [],
        }
        if state is not None and state.resource_id:
            entity["what"] = {"reference": f"Basic/{state.resource_id}"}
        if script is not None:
            entity["description"] = f"{script.name} ({script.revision})"
            entity["detail"] += [
                {"type": "revision", "valueString": script.revision},
                {"type": "script", "valueString": f"{script.label}/{script.path.name}"},
                {"type": "checksum", "valueString": script.checksum},
            ]
        if detail:
            entity["detail"].append({"type": "detail", "valueString": detail})
        if not entity["detail"]:
            del entity["detail"]
        event_body: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": EVENT_TYPE,
            "subtype": [{"system": EVENT_SYSTEM, "code": event, "display": display}],
            "action": action,
            "recorded": isoformat(recorded),
            "outcome": SERIOUS_FAILURE if failed else SUCCESS,
            "agent": [
                {
                    "type": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                        "code": "humanuser", "display": "human user"}]},
                    "who": {"display": self.actor.user},
                    "altId": self.actor.user,
                    "name": self.actor.describe(),
                    "requestor": True,
                    "network": {"address": self.actor.host, "type": "1"},
                },
                {
                    "type": {"coding": [{
                        "system": "http://dicom.nema.org/resources/ontology/DCM",
                        "code": "110150", "display": "Application"}]},
                    "who": {"display": f"{self.actor.command} (pid {self.actor.pid})"},
                    "name": f"django-fhir-migrations {__version__}",
                    "requestor": False,
                    "network": {"address": self.actor.host, "type": "1"},
                },
            ],
            "source": {
                "site": self.actor.host,
                "observer": {"display": f"{self.actor.source} via django-fhir-migrations {__version__}"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                          "code": "4", "display": "Application Server"}],
            },
            "entity": [entity],
        }
        if duration is not None:
            event_body["period"] = {"start": isoformat(recorded - timedelta(seconds=duration)),
                                    "end": isoformat(recorded)}
        if error_text:
            event_body["outcomeDesc"] = error_text[:4000]
        summary = f"{display}: {entity.get('description') or detail or entity['name']}"
        summary += f" by {self.actor.describe()}"
        if error_text:
            summary += f": {error_text[:500]}"
        # A narrative keeps the resource readable in any FHIR browser (and satisfies dom-6).
        event_body["text"] = {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{html.escape(summary)}</div>',
        }
        return event_body


def error_text(error: BaseException | str) -> str:
    """'ValueError: bad row 12' for an exception (the type is half the story), else the text."""
    if isinstance(error, BaseException):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return str(error)


# --- reading the trail back ----------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    """One AuditEvent of ours, flattened for display."""

    id: str
    event: str  # the subtype code: applied, reverted, faked, unfaked, failed, reset, lock-broken
    label: str
    recorded: datetime | None
    success: bool
    error: str
    who: str
    revision: str
    script: str
    detail: str
    duration: float | None = None  # seconds, from the AuditEvent's period

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> AuditRecord:
        """Read back defensively: it is server data (types checked, texts made printable)."""
        subtype = next((c for c in _dicts(resource.get("subtype")) if c.get("system") == EVENT_SYSTEM), {})
        code = _text(subtype.get("code"), 40) or "?"
        agents = _dicts(resource.get("agent"))
        requestor = next((a for a in agents if a.get("requestor") is True), agents[0] if agents else {})
        who: dict[str, Any] = requestor["who"] if isinstance(requestor.get("who"), dict) else {}
        entity = (_dicts(resource.get("entity")) or [{}])[0]
        details = {d.get("type"): _text(d.get("valueString"), 300) for d in _dicts(entity.get("detail"))}
        recorded = resource.get("recorded")
        period: dict[str, Any] = resource["period"] if isinstance(resource.get("period"), dict) else {}
        start, end = (parse_datetime(period.get(k)) if isinstance(period.get(k), str) else None
                      for k in ("start", "end"))
        return cls(
            id=_text(resource.get("id"), 64),
            event=code,
            label=_text(subtype.get("display"), 100) or EVENTS.get(code, (code, ""))[0],
            recorded=parse_datetime(recorded) if isinstance(recorded, str) else None,
            success=resource.get("outcome", SUCCESS) == SUCCESS,
            error=_text(resource.get("outcomeDesc"), 1000),
            who=_text(requestor.get("name"), 200) or _text(who.get("display"), 200),
            revision=details.get("revision", ""),
            script=details.get("script", ""),
            detail=details.get("detail", ""),
            duration=(end - start).total_seconds() if start and end else None,
        )


def attempt_record(attempt: AttemptRecord, script: MigrationScript | None, *, running: bool,
                   who: str = "") -> AuditRecord:
    """An unfinished attempt of the state (`migration-attempt`), as a line of the history: a
    run killed outright (kill -9, a lost host) wrote no AuditEvent, but its attempt says what it
    did; "running" while a live lease still holds the state."""
    started = parse_datetime(attempt.started_at)
    seen = parse_datetime(attempt.updated_at) if attempt.updated_at else None
    verb = "applying" if attempt.direction == "upgrade" else "reverting"
    return AuditRecord(
        id="", event="running" if running else "interrupted",
        label=f"Migration {'running' if running else 'interrupted'}",
        recorded=seen or started, success=False, error=attempt.error, who=who,
        revision=attempt.revision,
        script=f"{script.label}/{script.path.name}" if script is not None else "",
        detail=(f"{verb}: {len(attempt.attempts)} attempt(s), {attempt.written:,} resource(s) written "
                "when it last reported"),
        duration=(seen - started).total_seconds() if started and seen else None,
    )


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: Any, limit: int) -> str:
    return printable(value, limit) if isinstance(value, str) else ""


def recent_events(connection: FhirConnection, state: MigrationState, count: int = 20
                  ) -> list[AuditRecord]:
    """The newest `count` AuditEvents written about this state resource, newest first.

    Found by the entity reference to the state's Basic, restricted to our subtype system, so
    AuditEvents that other software writes about the same resource are not shown as ours.
    """
    if not state.resource_id or count < 1:
        return []
    reply = connection.get("AuditEvent", {
        "entity": f"Basic/{state.resource_id}",
        "subtype": f"{EVENT_SYSTEM}|",
        "_sort": "-date",
        "_count": str(count),
    })
    bundle = reply.body or {}
    resources = [
        e.get("resource") or {} for e in bundle.get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
    ]
    return [AuditRecord.from_resource(r) for r in resources
            if r.get("resourceType") == "AuditEvent"][:count]


# --- when the server keeps no AuditEvents: the state's own record -----------------------------


@dataclass(frozen=True)
class HistoryReport:
    """What `fhirhistory` and the admin page show: AuditEvents, or (`from_state`) the state's own
    record, with `reason` saying why the AuditEvents are not the source."""

    records: list[AuditRecord] = field(default_factory=list)
    from_state: bool = False
    reason: str = ""


def audit_refusal(connection: FhirConnection) -> str:
    """Why the server will not keep a client's AuditEvents, from its CapabilityStatement: '' when
    it offers `create` for AuditEvent, or when the statement cannot be read or says nothing."""
    try:
        statement = connection.get("metadata").body or {}
    except FhirMigrationError:
        return ""
    for rest in _dicts(statement.get("rest")):
        if rest.get("mode", "server") != "server":
            continue
        resources = _dicts(rest.get("resource"))
        audit = next((r for r in resources if r.get("type") == "AuditEvent"), None)
        if audit is None:
            return "its CapabilityStatement does not list AuditEvent" if resources else ""
        interactions = {i.get("code") for i in _dicts(audit.get("interaction"))}
        if interactions and "create" not in interactions:
            return "its CapabilityStatement offers no create for AuditEvent"
        return ""
    return ""


def state_events(state: MigrationState, count: int,
                 scripts: Mapping[str, MigrationScript] | None = None) -> list[AuditRecord]:
    """The state's own record of what was applied, as history lines, newest first: each applied
    (or faked) migration, when, by whom, how long and in how many attempts. (Unfinished attempts
    are `attempt_record`s.) `scripts` names them as the AuditEvents do (`app/file.py`)."""
    records = []
    for applied in state.applied:
        attempts = len(applied.attempts)
        script = (scripts or {}).get(applied.revision)
        records.append(AuditRecord(
            id="", event="faked" if applied.fake else "applied",
            label=EVENTS["faked" if applied.fake else "applied"][0],
            recorded=parse_datetime(applied.applied_at), success=True, error="",
            who=_text(applied.applied_by, 200), revision=applied.revision,
            script=f"{script.label}/{script.path.name}" if script is not None else _text(applied.name, 200),
            detail=f"in {attempts} attempts" if attempts > 1 else "",
            duration=applied.duration_ms / 1000 if applied.duration_ms is not None else None,
        ))
    return newest_first(records)[:count]


def newest_first(records: list[AuditRecord]) -> list[AuditRecord]:
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(records, key=lambda r: r.recorded or oldest, reverse=True)


def read_history(connection: FhirConnection, state: MigrationState, count: int, *,
                 audit_enabled: bool = True, unfinished: Sequence[AuditRecord] = (),
                 scripts: Mapping[str, MigrationScript] | None = None) -> HistoryReport:
    """This state's AuditEvents and its `unfinished` attempts, newest first. Without AuditEvents,
    what the state records as applied instead, and why (the server refuses AuditEvents,
    AUDIT_EVENTS is off, or none are found)."""
    events = recent_events(connection, state, count)
    if events:
        return HistoryReport(newest_first(events + list(unfinished))[:count])
    records = newest_first(state_events(state, count, scripts) + list(unfinished))[:count]
    refusal = audit_refusal(connection) if state.exists else ""
    if refusal:
        reason = f"The server keeps no AuditEvents from clients ({refusal}; it refuses them when written)."
    elif not records:
        reason = ""  # nothing happened yet: nothing to explain
    elif not audit_enabled:
        reason = "AUDIT_EVENTS is off, so no AuditEvents were written."
    else:
        reason = "No AuditEvents of this state were found on the server."
    return HistoryReport(records, from_state=True, reason=reason)
