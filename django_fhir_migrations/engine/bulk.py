"""`ctx.bulk_patch`: one FHIRPath Patch applied to every match, by the server where it can.

Where the server offers a bulk patch job (HAPI FHIR 8.6+: the system operation
`$hapi.fhir.bulk-patch`, a Batch2 job; its CapabilityStatement lists it), the tool starts the
job, records its status URL in the state at once (a killed run re-attaches to the job instead
of starting a second one), polls it to the end (its progress reported as events), and then
records the Provenance of what it changed: every match the server wrote since the job started
(HAPI's versions are numbers, so the replaced version is the one before). That Provenance is
written after the job, not with it: the job is the server's own transaction work; a run killed
before the Provenance is complete re-attaches and completes it. Resources someone else wrote
during the job would be counted as the job's: run it when nobody else writes them.

Where the server has no such job, the same patch is sent as PATCH entries in batch bundles
(version-aware, each bundle with its Provenance): the same result, resume and undo.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .clock import isoformat, utcnow
from .errors import FhirServerError
from .fhir.client import FhirConnection, checked_type, resource_path
from .provenance import Target
from .redaction import printable

if TYPE_CHECKING:
    from .protocols import ScriptContext

OPERATION = "hapi.fhir.bulk-patch"
POLL_INTERVAL = 1.0
PROVENANCE_CHUNK = 100


class BulkJobError(FhirServerError):
    """The server's bulk job failed (its report says why)."""


def patch_parameters(operations: Any) -> dict[str, Any]:
    """A FHIRPath Patch `Parameters` from a Parameters resource or a list of operations
    (each a dict: type, path, and name/value/index/source/destination as the spec has them)."""
    if isinstance(operations, Mapping) and operations.get("resourceType") == "Parameters":
        return dict(operations)
    if not isinstance(operations, list) or not operations:
        raise TypeError("bulk_patch needs FHIRPath Patch operations: a Parameters resource, or a "
                        "list of dicts such as {'type': 'add', 'path': 'Patient', 'name': "
                        "'identifier', 'value': {'valueIdentifier': {...}}}")
    parameters = []
    for operation in operations:
        parts = []
        for name, value in operation.items():
            if name == "value":
                if not isinstance(value, Mapping) or len(value) != 1:
                    raise TypeError("a FHIRPath Patch value is one typed value, e.g. "
                                    "{'valueIdentifier': {...}} or {'valueString': 'x'}")
                parts.append({"name": "value", **value})
            elif name == "type":
                parts.append({"name": "type", "valueCode": value})
            elif name in ("index", "source", "destination"):
                parts.append({"name": name, "valueInteger": int(value)})
            else:
                parts.append({"name": name, "valueString": str(value)})
        parameters.append({"name": "operation", "part": parts})
    return {"resourceType": "Parameters", "parameter": parameters}


def offers_bulk_patch(connection: FhirConnection) -> bool:
    """Whether the server's CapabilityStatement lists $hapi.fhir.bulk-patch (read once)."""
    cached = getattr(connection, "_bulk_patch_offered", None)
    if cached is None:
        try:
            body = connection.get("metadata").body or {}
        except FhirServerError:
            body = {}
        names = {str(op.get("name", "")).lstrip("$") for rest in body.get("rest") or [] if isinstance(rest, dict)
                 for op in rest.get("operation") or [] if isinstance(op, dict)}
        cached = OPERATION in names
        connection._bulk_patch_offered = cached  # type: ignore[attr-defined]
    return cached


def bulk_patch(ctx: ScriptContext, resource_type: str, operations: Any, search: Mapping[str, Any]) -> int:
    checked_type(resource_type)
    patch = patch_parameters(operations)
    query = {k: v for k, v in search.items()}
    if ctx.dry_run:
        count = ctx.count(resource_type, **query)
        ctx.show_write("PATCH", f"{resource_type}?... ({count} matches)", patch)
        return count
    attempt = ctx.attempt
    if attempt is not None and ctx.journal.writer is not None and (attempt.job or offers_bulk_patch(ctx.connection)):
        return _server_job(ctx, resource_type, patch, query)
    return _patch_bundles(ctx, resource_type, patch, query)


def _patch_bundles(ctx: ScriptContext, resource_type: str, patch: dict[str, Any],
                   query: Mapping[str, Any]) -> int:
    with ctx.batch() as batch:
        for found in ctx.search(resource_type, as_dict=True, read_ahead=True, **query):
            batch.patch(resource_type, found["id"], patch,
                        version=(found.get("meta") or {}).get("versionId"))
    return batch.written


def _server_job(ctx: ScriptContext, resource_type: str, patch: dict[str, Any],
                query: Mapping[str, Any]) -> int:
    attempt = ctx.attempt
    assert attempt is not None
    search_url = f"{resource_path(resource_type)}?" + "&".join(f"{k}={v}" for k, v in query.items())
    if not attempt.job:
        reply = ctx.connection.request(
            "POST", f"${OPERATION}", headers={"Prefer": "respond-async"}, idempotent=False,
            json={"resourceType": "Parameters", "parameter": [
                {"name": "patch", "resource": patch}, {"name": "url", "valueString": search_url}]},
        )
        status_url = reply.headers.get("Content-Location") or ""
        if reply.status != 202 or not ctx.connection.same_origin(status_url):
            raise BulkJobError(f"The server did not start the bulk patch job (answered {reply.status}"
                               f"{', status at ' + printable(status_url, 200) if status_url else ''}).")
        attempt.record_job(status_url, _server_time(reply.headers.get("Date")))
    _wait(ctx, attempt.job)
    return _record_changes(ctx, resource_type, query, attempt.job_started)


def _wait(ctx: ScriptContext, status_url: str) -> None:
    started = time.monotonic()
    while True:
        reply = ctx.connection.request("GET", status_url, allow=(202,))
        if reply.status == 202:
            progress = printable(reply.headers.get("X-Progress") or "running", 200)
            ctx.events.emit("progress", script=ctx.script, detail=f"bulk patch: {progress}",
                            count=0, duration=time.monotonic() - started)
            time.sleep(POLL_INTERVAL)
            continue
        body = reply.body or {}
        entries = body.get("entry") or [{}]
        response = (entries[0] or {}).get("response") or {}
        status = str(response.get("status", ""))
        if not status.startswith("2"):
            report = "; ".join(printable(i.get("diagnostics") or "", 300)
                               for i in (response.get("outcome") or {}).get("issue") or [] if isinstance(i, dict))
            raise BulkJobError(f"The server's bulk patch job failed ({status or 'no status'}): "
                               f"{report or 'no report'}. Resources it patched before failing keep "
                               "the patch; their Provenance is written by the next run.")
        ctx.events.emit("progress", script=ctx.script, detail="bulk patch: done", count=0,
                        duration=time.monotonic() - started, final=True)
        return


def _record_changes(ctx: ScriptContext, resource_type: str, query: Mapping[str, Any],
                    since: str) -> int:
    """Provenance for every match the job wrote (not already recorded by an earlier attempt)."""
    changed = 0
    pending: list[Target] = []
    writer = ctx.journal.writer
    assert writer is not None
    params = dict(query, _lastUpdated=f"ge{since}", _elements="id")
    done = ctx.journal.written_before  # a re-attached run: what the earlier attempt recorded

    def flush() -> None:
        nonlocal changed
        skip = done(t.key for t in pending)
        targets = [t for t in pending if t.key not in skip]
        if targets:
            ctx.connection.request("POST", "Provenance", json=writer.provenance("UPDATE", targets))
            with ctx.journal._lock:
                ctx.journal.written += len(targets)
            changed += len(targets)
        pending.clear()

    for found in ctx.search(resource_type, as_dict=True, read_ahead=False, **params):
        version = str((found.get("meta") or {}).get("versionId") or "")
        if version.isdigit() and int(version) > 1:
            pending.append(Target(resource_type, found["id"], version, str(int(version) - 1)))
        if len(pending) >= PROVENANCE_CHUNK:
            flush()
    if pending:
        flush()
    return changed


def _server_time(date_header: str | None) -> str:
    try:
        return isoformat(parsedate_to_datetime(date_header)) if date_header else isoformat(utcnow())
    except (TypeError, ValueError):
        return isoformat(utcnow())


__all__ = ["bulk_patch", "offers_bulk_patch", "patch_parameters"]
