"""The audit trail: a log line for every action, and a FHIR R4 AuditEvent on the server.

AuditEvents record who (user, host, process), what (revision, script, state resource), when,
and the outcome with the error text. Writing one must never hide or replace the migration's own
outcome: a failed audit write is logged as a warning and swallowed. Error texts are checked
for credentials before they leave the process.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from .errors import FhirMigrationError
from .fhir.client import FhirConnection
from .recorder import MigrationState, isoformat, utcnow
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
        what = f"{script.name} ({script.revision})" if script else (detail or "")
        text = redact(str(error), self.secrets) if error is not None else ""
        if error is None:
            timing = f" in {duration:.2f}s" if duration is not None else ""
            logger.info("%s: %s%s by %s", EVENTS[event][0], what, timing, self.actor.describe())
        else:
            logger.error("%s: %s by %s: %s", EVENTS[event][0], what, self.actor.describe(), text)
        if not self.enabled:
            return
        body = self.build(event, script=script, state=state, error_text=text, detail=detail)
        try:
            reply = self.connection.request("POST", "AuditEvent", json=body, idempotent=False)
        except FhirMigrationError as exc:
            logger.warning("Could not write the AuditEvent for %s %s: %s", event, what,
                           redact(str(exc), self.secrets))
            return
        if reply.body and reply.body.get("id"):
            self.written.append(reply.body["id"])

    def build(self, event: str, *, script: MigrationScript | None, state: MigrationState | None,
              error_text: str = "", detail: str = "") -> dict[str, Any]:
        from .. import __version__

        display, action = EVENTS[event]
        failed = event == "failed"
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
            "recorded": isoformat(utcnow()),
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
        if error_text:
            event_body["outcomeDesc"] = error_text[:4000]
        return event_body
