"""The audit trail: a log line for every action, and a FHIR R4 AuditEvent on the server.

AuditEvents record who (user, host, process), what (revision, script, state resource), when,
and the outcome with the error text. Writing one must never hide or replace the migration's own
outcome: a failed audit write is logged as a warning and swallowed. Error texts are checked
for credentials before they leave the process.

Log levels of the `django_fhir_migrations` logger: INFO for each migration done (with its
duration) and each reset or lock break, WARNING for an AuditEvent that could not be written,
ERROR for a migration that failed.

`recent_events` reads the trail back (newest first) for the admin status page.
"""

from __future__ import annotations

import html
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import FhirMigrationError
from .fhir.client import FhirConnection
from .recorder import MigrationState, isoformat, parse_datetime, utcnow
from .script import MigrationScript

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
}
SUCCESS, SERIOUS_FAILURE = "0", "8"

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)((?:password|passwd|secret|token|client_assertion|access_token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',&]+"),
    re.compile(r"(?i)(//[^/\s:@]+:)[^@\s/]+(@)"),
]


def _masked(match: re.Match[str]) -> str:
    groups = match.re.groups
    if groups == 0:
        return "***"
    return match.group(1) + "***" + (match.group(2) if groups > 1 else "")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove credentials from free text (error messages go to logs and the server)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_masked, text)
    return text


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


class AuditTrail:
    def __init__(self, connection: FhirConnection | None, actor: Actor, *, enabled: bool = True,
                 secrets: tuple[str, ...] = ()):
        self.connection = connection
        self.actor = actor
        self.enabled = enabled and connection is not None
        self.secrets = secrets
        self.written: list[str] = []  # ids of AuditEvents written by this process

    def record(self, event: str, *, script: MigrationScript | None = None,
               state: MigrationState | None = None, error: BaseException | str | None = None,
               duration: float | None = None, detail: str = "") -> None:
        """Log the event and, if enabled, write its AuditEvent. Never raises."""
        what = f"{script.name} ({script.revision})" if script else (detail or "")
        text = redact(error_text(error), self._secrets()) if error is not None else ""
        if error is None:
            timing = f" in {duration:.2f}s" if duration is not None else ""
            logger.info("%s: %s%s by %s", EVENTS[event][0], what, timing, self.actor.describe())
        else:
            logger.error("%s: %s by %s: %s", EVENTS[event][0], what, self.actor.describe(), text)
        if not self.enabled:
            return
        try:
            body = self.build(event, script=script, state=state, error_text=text, detail=detail,
                              duration=duration)
            reply = self.connection.request("POST", "AuditEvent", json=body, idempotent=False)
        except Exception as exc:  # noqa: BLE001 - the audit must not mask the migration's outcome
            reason = str(exc) if isinstance(exc, FhirMigrationError) else f"{type(exc).__name__}: {exc}"
            logger.warning("Could not write the AuditEvent for %s %s: %s", event, what,
                           redact(reason, self._secrets()))
            return
        if reply.body and reply.body.get("id"):
            self.written.append(reply.body["id"])

    def scrub(self, text: str) -> str:
        """`text` without any credential this process knows of (configured or issued)."""
        return redact(text, self._secrets())

    def _secrets(self) -> tuple[str, ...]:
        """The configured secrets plus the auth's live ones (e.g. SMART access tokens)."""
        auth = getattr(getattr(self.connection, "session", None), "auth", None)
        live = auth.secrets() if hasattr(auth, "secrets") else ()
        return self.secrets + tuple(live)

    def build(self, event: str, *, script: MigrationScript | None, state: MigrationState | None,
              error_text: str = "", detail: str = "", duration: float | None = None
              ) -> dict[str, Any]:
        """The AuditEvent resource (FHIR R4; passes the server's `$validate`)."""
        from .. import __version__

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

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> AuditRecord:
        subtype = next((c for c in resource.get("subtype") or [] if c.get("system") == EVENT_SYSTEM), {})
        code = subtype.get("code") or "?"
        agents = resource.get("agent") or []
        requestor = next((a for a in agents if a.get("requestor")), agents[0] if agents else {})
        entity = (resource.get("entity") or [{}])[0]
        details = {d.get("type"): d.get("valueString", "") for d in entity.get("detail") or []}
        return cls(
            id=str(resource.get("id") or ""),
            event=code,
            label=subtype.get("display") or EVENTS.get(code, (code, ""))[0],
            recorded=parse_datetime(resource.get("recorded")),
            success=resource.get("outcome", SUCCESS) == SUCCESS,
            error=resource.get("outcomeDesc") or "",
            who=requestor.get("name") or (requestor.get("who") or {}).get("display") or "",
            revision=details.get("revision", ""),
            script=details.get("script", ""),
            detail=details.get("detail", ""),
        )


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
