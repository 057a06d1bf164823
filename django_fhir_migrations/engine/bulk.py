"""`ctx.bulk_patch`: one FHIRPath Patch applied to every match, as patch bundles or as the
server's own job.

By default the patch goes as PATCH entries in batch bundles (version-aware, each bundle with its
Provenance), the same way as `ctx.batch()`: measured against HAPI 8.8's job on the same server
(benchmarks/README.md, "bulk patch"), the bundles were as fast or faster at every size tried,
from 3,000 resources (the job at batchSize 1,000 about even) to 30,000 (the job 16 times
slower: its cost per resource grows with the size of the search), and they cost the server
less CPU. `server_job=True` asks for the job anyway (the server does the work; nothing has to
stay connected while it runs); a run that finds its interrupted attempt's job re-attaches to
it whatever it asks, so that no resource is patched twice.

Where the server offers a bulk patch job (HAPI FHIR 8.6+: the system operation
`$hapi.fhir.bulk-patch`, a Batch2 job; its CapabilityStatement lists it) and the job is asked
for, the tool starts the job, polls it to the end (its progress reported as events), and then records the Provenance of
what it changed: every match the server wrote since the job started (HAPI's versions are
numbers, so the replaced version is the one before). That Provenance is written after the job,
not with it: the job is the server's own transaction work; a run killed before the Provenance
is complete re-attaches and completes it. Resources someone else wrote during the job would be
counted as the job's: run it when nobody else writes them.

A job must never be started twice (FHIRPath Patch `add` is not idempotent), so the attempt
records its intent in the state *before* the request that starts the job ("pending"), then the
status URL the server answers, before judging it. The next run re-attaches to a recorded URL
(checked: BASE_URL's origin, under its base, an operation's poll URL), and refuses to start a
second job while the first is unknown (a pending intent whose answer was lost, a status URL it
cannot follow) until a human decides: `fhirmigrate --forget-bulk-job`, after confirmation.

The poll is bounded: it honours Retry-After, gives up past MAX_RUN_TIME (or JOB_DEADLINE), and
stops when the job reports no progress for JOB_STALL seconds (the lease is not renewed for a
job that is not moving).

Either way the result, resume and undo are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from .clock import http_date, isoformat, utcnow
from .errors import FhirMigrationError, FhirServerError, ServerUnreachableError
from .events import Progress
from .fhir.client import FhirConnection, checked_type, resource_path
from .fhir.paging import search_entries
from .fhir.retries import parse_retry_after
from .provenance import Target
from .redaction import printable

if TYPE_CHECKING:
    from .protocols import ScriptContext

OPERATION = "hapi.fhir.bulk-patch"
JOB_PENDING = "pending"  # the intent, recorded before the request that starts the job
POLL_INTERVAL = 1.0
MAX_POLL_INTERVAL = 60.0
JOB_DEADLINE = 24 * 3600.0  # seconds, when MAX_RUN_TIME is not set
JOB_STALL = 600.0  # seconds without a change in the job's reported progress
PROVENANCE_CHUNK = 100


class BulkJobError(FhirServerError):
    """The server's bulk job failed (its report says why)."""


class BulkJobUnavailableError(FhirMigrationError):
    """`server_job=True` where the job cannot be used."""

    def __init__(self, problem: str):
        super().__init__(f"ctx.bulk_patch(..., server_job=True): {problem}",
                         "Leave server_job out (or False): the patch then goes as patch bundles, "
                         "with the same Provenance, resume and undo.")


class BulkJobUnknownError(FhirMigrationError):
    """A bulk job may be running that this run cannot follow: a human decides."""

    def __init__(self, revision: str, job: str, problem: str):
        self.revision = revision
        self.job = job
        super().__init__(
            f"A bulk patch job of migration {revision} may still be running on the server: "
            f"{problem} Starting another could patch every resource twice, so nothing was sent.",
            "Look at the server's jobs (HAPI: its Batch2 job list). When none of this migration's "
            "is running, `{migrate} --forget-bulk-job` forgets it (it asks first), and the next "
            "`{migrate}` starts a new one.",
        )


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


def search_url(resource_type: str, query: Mapping[str, Any]) -> str:
    """The search the job runs, encoded exactly as ctx.search sends its parameters (a `+` or a
    `&` in a value is data, not syntax)."""
    return f"{resource_path(resource_type)}?{urlencode(query, doseq=True)}"


def job_url_problem(connection: FhirConnection, url: str) -> str:
    """Why `url` cannot be a job status URL of this server ("" when it can): on BASE_URL's
    origin, under its base path, an operation (`$...`) with no credentials or fragment."""
    if not url or url == JOB_PENDING:
        return "its status URL was never received (the answer to the request that starts it was lost)."
    parts = urlsplit(connection.url(url))
    if not connection.same_origin(connection.url(url)):
        return (f"its status URL {printable(url, 200)} is on another origin than "
                f"{connection.base_url} (a proxy that does not rewrite the server's address?).")
    base_path = urlsplit(connection.base_url).path
    if parts.username or parts.password or parts.fragment or not parts.path.startswith(base_path) \
            or not parts.path[len(base_path):].startswith("$"):
        return f"{printable(url, 200)} does not look like a bulk job status URL of {connection.base_url}."
    return ""


def bulk_patch(ctx: ScriptContext, resource_type: str, operations: Any, search: Mapping[str, Any],
               server_job: bool | None = None) -> int:
    """`server_job`: True, the server's job (refused where there is none, or without
    PROVENANCE); False or None (the default, chosen from the measurement above), patch bundles."""
    checked_type(resource_type)
    patch = patch_parameters(operations)
    query = dict(search)
    preview = ctx.journal.dry_run
    if preview is not None:  # one write of every match, reported without reading them
        count = ctx.count(resource_type, **query)
        preview.show_write("PATCH", f"{resource_type}?... ({count} matches)", patch, count=count)
        return count
    attempt = ctx.attempt
    call = 0
    if attempt is not None:
        attempt.bulk_calls += 1
        call = attempt.bulk_calls
        done = attempt.job_done(call)
        if done is not None:  # its job finished in an earlier attempt, and was recorded
            return done
        if attempt.owns_job(call):
            # An interrupted attempt started this call's job (or may have): follow it, never
            # patch twice.
            return _server_job(ctx, resource_type, patch, query, call)
    if server_job:
        if attempt is None or not ctx.journal.mode.records:
            raise BulkJobUnavailableError("the server's job needs PROVENANCE: what it changed is "
                                          "recorded as Provenance after it, and a killed run "
                                          "re-attaches to it from its attempt's record.")
        if not offers_bulk_patch(ctx.connection):
            raise BulkJobUnavailableError(f"the server's CapabilityStatement lists no ${OPERATION}.")
        return _server_job(ctx, resource_type, patch, query, call)
    return _patch_bundles(ctx, resource_type, patch, query)


def _patch_bundles(ctx: ScriptContext, resource_type: str, patch: dict[str, Any],
                   query: Mapping[str, Any]) -> int:
    with ctx.batch() as batch:
        for found in ctx.search(resource_type, as_dict=True, read_ahead=True, **query):
            batch.patch(resource_type, found["id"], patch,
                        version=(found.get("meta") or {}).get("versionId"))
    return batch.written


def _server_job(ctx: ScriptContext, resource_type: str, patch: dict[str, Any],
                query: Mapping[str, Any], call: int) -> int:
    attempt = ctx.attempt
    assert attempt is not None
    revision = ctx.revision or "?"
    if not attempt.job:
        _start_job(ctx, resource_type, patch, query, call)
    problem = job_url_problem(ctx.connection, attempt.job)
    if problem:
        raise BulkJobUnknownError(revision, attempt.job, problem)
    _wait(ctx, attempt.job, lambda: ctx.count(resource_type, params=dict(
        query, _lastUpdated=f"ge{attempt.job_started}")))
    changed = _record_changes(ctx, resource_type, query, attempt.job_started)
    attempt.record_job_done(call, changed)
    return changed


def _start_job(ctx: ScriptContext, resource_type: str, patch: dict[str, Any],
               query: Mapping[str, Any], call: int) -> None:
    attempt = ctx.attempt
    assert attempt is not None
    attempt.record_job(JOB_PENDING, isoformat(utcnow()), call)
    try:
        reply = ctx.connection.request(
            "POST", f"${OPERATION}", headers={"Prefer": "respond-async"}, idempotent=False,
            json={"resourceType": "Parameters", "parameter": [
                {"name": "patch", "resource": patch},
                {"name": "url", "valueString": search_url(resource_type, query)}]},
        )
    except ServerUnreachableError:
        raise  # the request may have started the job: "pending" stays, a human decides
    except FhirServerError as exc:
        if exc.status is not None and exc.status < 500:  # refused: no job was started
            attempt.record_job("", "", call)
        raise
    status_url = reply.headers.get("Content-Location") or ""
    started = http_date(reply.headers.get("Date")) or utcnow()
    # Recorded before it is judged: a URL we will not follow still tells a human where to look.
    attempt.record_job(status_url or JOB_PENDING, isoformat(started), call)
    if reply.status != 202:
        raise BulkJobError(f"The server answered {reply.status} to the request that starts the bulk "
                           "patch job, not 202 Accepted; whether a job runs is unknown.")


def _wait(ctx: ScriptContext, status_url: str, changed: Callable[[], int]) -> None:
    """Poll the job to its end. Its progress is what it changed so far (`changed`: HAPI's
    X-Progress only says "in progress"); no change for JOB_STALL seconds ends the run."""
    started = last_change = time.monotonic()
    limit = ctx.settings.max_run_time or JOB_DEADLINE
    last_count = -1
    interval = POLL_INTERVAL
    while True:
        reply = ctx.connection.request("GET", status_url, allow=(202,))
        now = time.monotonic()
        if reply.status != 202:
            break
        state = printable(reply.headers.get("X-Progress") or "running", 200)
        count = changed()
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > JOB_STALL:
            raise BulkJobError(f"The server's bulk patch job has changed nothing for {JOB_STALL:.0f} s "
                               f"('{state}'); the run stops here. Its status is at "
                               f"{printable(status_url, 200)}; the next run re-attaches.")
        if now - started > limit:
            raise BulkJobError(f"The server's bulk patch job did not finish within {limit:.0f} s; the "
                               f"run stops here. Its status is at {printable(status_url, 200)}; the "
                               "next run re-attaches.")
        ctx.events.emit(Progress("bulk patch", max(count, 0), duration=now - started, script=ctx.script))
        after = parse_retry_after(reply.headers.get("Retry-After"))
        time.sleep(min(MAX_POLL_INTERVAL, after if after is not None else interval))
        interval = min(MAX_POLL_INTERVAL, interval * 1.5)
    body = reply.body or {}
    entries = body.get("entry") or [{}]
    first = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
    response = first.get("response") or {}
    status = str(response.get("status", ""))
    if not status.startswith("2"):
        outcome = response.get("outcome") or {}
        report = "; ".join(printable(i.get("diagnostics") or "", 300)
                           for i in outcome.get("issue") or [] if isinstance(i, dict))
        raise BulkJobError(f"The server's bulk patch job failed ({printable(status, 60) or 'no status'}): "
                           f"{report or 'no report'}. Resources it patched before failing keep "
                           "the patch; their Provenance is written by the next run.")
    ctx.events.emit(Progress("bulk patch", max(changed(), 0), duration=time.monotonic() - started,
                             final=True, script=ctx.script))


def _record_changes(ctx: ScriptContext, resource_type: str, query: Mapping[str, Any],
                    since: str) -> int:
    """Provenance for every match the job wrote (not already recorded by an earlier attempt)."""
    changed = 0
    pending: list[Target] = []
    params = dict(query, _lastUpdated=f"ge{since}", _elements="id")

    def flush() -> None:
        nonlocal changed
        # A re-attached run: what an earlier attempt recorded at these very versions (an
        # earlier job of the same migration left the same resources at lower ones).
        skip = ctx.journal.written_at({t.ref: t.version or "" for t in pending})
        targets = [t for t in pending if t.ref not in skip]
        if targets:
            ctx.journal.record("UPDATE", targets, count=True)
            changed += len(targets)
        pending.clear()

    # Not ctx.search: on a resumed run it leaves out every resource an interrupted attempt
    # wrote, which includes all that an earlier job of this migration patched.
    params.setdefault("_count", ctx.settings.page_size)
    entries = search_entries(ctx.connection, resource_path(resource_type), params, read_ahead=False)
    for entry in entries:
        found = entry.get("resource")
        if (entry.get("search") or {}).get("mode", "match") != "match" or not isinstance(found, dict):
            continue
        version = str((found.get("meta") or {}).get("versionId") or "")
        if version.isdigit() and int(version) > 1:
            pending.append(Target(resource_type, found["id"], version, str(int(version) - 1)))
        if len(pending) >= PROVENANCE_CHUNK:
            flush()
    if pending:
        flush()
    return changed


__all__ = ["BulkJobError", "BulkJobUnavailableError", "BulkJobUnknownError", "bulk_patch", "offers_bulk_patch",
           "patch_parameters", "search_url"]
