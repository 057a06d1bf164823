"""The refused entries a migration was allowed to leave behind (its failure budget), on the server.

A migration applied "with N failures" keeps their `Type/id`, status and grouped message (never a
resource body) in one record of its own next to the state: a `Basic` with
`code = http://fhir.migration.system/record|migration-failures`, `subject` = the state, and one
`failure` extension per entry. `fhirshowmigrations` and the admin page count them from the
applied record; `fhirmigrate --retry-failed NAME` reads this record to run the migration again
over exactly those resources, and replaces it with what still fails (or deletes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fhir.client import FhirConnection
from .redaction import printable
from .state import RECORD_SYSTEM
from .writes import Failure

FAILURES_CODE = "migration-failures"
FAILURES_IDENTIFIER = "http://fhir.migration.system/failures"
FAILURE_EXTENSION = "http://fhir.migration.system/StructureDefinition/migration-failure"


def _identifier(state_id: str, revision: str) -> str:
    return f"{state_id}/{revision}"


def _find(connection: FhirConnection, state_id: str, revision: str) -> dict[str, Any] | None:
    reply = connection.get("Basic", {"identifier": f"{FAILURES_IDENTIFIER}|{_identifier(state_id, revision)}"})
    for entry in (reply.body or {}).get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Basic":
            return resource
    return None


def write(connection: FhirConnection, state_id: str, state_resource_id: str | None, revision: str,
          failures: Sequence[Failure]) -> None:
    """Replace the migration's failure record with `failures` (none: the record goes)."""
    existing = _find(connection, state_id, revision)
    if not failures:
        if existing is not None:
            connection.request("DELETE", f"Basic/{existing['id']}")
        return
    body: dict[str, Any] = {
        "resourceType": "Basic",
        "identifier": [{"system": FAILURES_IDENTIFIER, "value": _identifier(state_id, revision)}],
        "code": {"coding": [{"system": RECORD_SYSTEM, "code": FAILURES_CODE}],
                 "text": "Entries a FHIR data migration left refused"},
        "extension": [{"url": FAILURE_EXTENSION, "extension": [
            {"url": "resource", "valueString": f.ref}, {"url": "status", "valueString": f.status},
            {"url": "message", "valueString": f.message or "-"}]} for f in failures],
    }
    if state_resource_id:
        body["subject"] = {"reference": f"Basic/{state_resource_id}"}
    if existing is None:
        connection.request("POST", "Basic", json=body, headers={
            "If-None-Exist": f"identifier={FAILURES_IDENTIFIER}|{_identifier(state_id, revision)}"})
    else:
        version = (existing.get("meta") or {}).get("versionId")
        connection.request("PUT", f"Basic/{existing['id']}", json=dict(body, id=existing["id"]),
                           headers={"If-Match": f'W/"{version}"'} if version else {})


def read(connection: FhirConnection, state_id: str, revision: str) -> list[Failure]:
    """The failures recorded for `revision` (server data: parsed defensively)."""
    record = _find(connection, state_id, revision)
    found: list[Failure] = []
    for ext in (record or {}).get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != FAILURE_EXTENSION:
            continue
        parts = {p.get("url"): p.get("valueString") for p in ext.get("extension") or [] if isinstance(p, dict)}
        ref = parts.get("resource")
        if isinstance(ref, str) and ref.count("/") == 1:
            found.append(Failure(printable(ref, 140), printable(str(parts.get("status") or ""), 20),
                                 printable(str(parts.get("message") or ""), 300)))
    return found
