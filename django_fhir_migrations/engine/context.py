"""`ctx`, what `upgrade(ctx)` and `downgrade(ctx)` get: the right way to change data, made easy.

It carries the SMART on FHIR client (`ctx.client`, `ctx.server`) and helpers: `search` that
follows `link[next]` page by page (constant memory), `count`, `read`, version-aware `update`,
`create`/`delete`/`patch`, conditional create/update/delete, `batch()`/`transaction()` bundles,
`undo()`, `bulk_patch()`, a logger, a progress bar and `dry_run`.

Every write is built here as a `Write` (writes.py) and handed to the attempt's journal
(journal.py), which sends it the way the attempt was started: with Provenance, resumable after a
crash and undoable by `ctx.undo()`; as plain requests with PROVENANCE off; or, with
`--dry-run`, not at all: each write is reported instead (dryrun.py: method, URL and which fields
change, never the data). Nothing here asks which.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, TypeVar

import requests
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from .bulk import bulk_patch
from .bundles import BundleWriter
from .config import Settings
from .dryrun import DryRun, printer
from .events import EventStream, Progress
from .fhir.client import FhirConnection, checked_type, query_string, resource_path
from .fhir.paging import FRESH, search_entries
from .journal import Journal, Mode
from .state import AppliedMigration
from .undo import undo
from .writes import Write, identifier_key, update_of

if TYPE_CHECKING:
    from .attempt import Attempt

T = TypeVar("T")
PROGRESS_INTERVAL = 0.25  # seconds between progress events (a bar redraws no faster)

script_logger = logging.getLogger("django_fhir_migrations.scripts")


class MigrationContext:
    """What a migration script works with; one per script run (see the module docstring).

    Built by the executor with the attempt's `journal`; a ctx built on its own (tests, a
    notebook) writes without Provenance (or, `dry_run=True`, prints its writes to `stdout`).
    """

    def __init__(self, connection: FhirConnection, settings: Settings, *, dry_run: bool = False,
                 script: Any = None, direction: str = "upgrade", events: EventStream | None = None,
                 stdout: IO[str] | None = None, attempt: Attempt | None = None,
                 applied: AppliedMigration | None = None,
                 only: Mapping[str, Collection[str]] | None = None):
        if dry_run and attempt is not None:
            raise ValueError("a dry run has no attempt: it records nothing")
        self.connection = connection
        self.settings = settings
        self.script = script
        self.direction = direction
        self.stdout = stdout or sys.stdout
        # A ctx made on its own has no front end listening: it prints its intercepted writes.
        self.events = events or EventStream([printer(self.stdout)])
        self.attempt = attempt
        self.journal = attempt.journal if attempt is not None else Journal(
            connection, dry_run=DryRun(self.events, script, connection.base_url) if dry_run else None)
        self.applied = applied  # in a downgrade, the application ctx.undo() reverts
        # A dry run's later step: the steps before it were not really run, so ctx.undo() does
        # not judge what they would have restored as changed since (the real run restores first).
        self.after_unrun_steps = False
        # --retry-failed: ctx.search yields only these resources (type -> ids), nothing else.
        self.only = {t: sorted(ids) for t, ids in only.items()} if only is not None else None
        self.log = script_logger

    # --- the SMART on FHIR client --------------------------------------------------------

    @property
    def client(self):
        """fhirclient's FHIRClient, on the tool's session (same auth, deadlines, dry run)."""
        return self.connection.client

    @property
    def server(self):
        """fhirclient's FHIRServer: `Patient.read(id, ctx.server)`, `model.create(ctx.server)`.
        Writes made this way are intercepted by --dry-run but have no Provenance and cannot
        be resumed or undone: prefer ctx's own methods."""
        return self.connection.server

    @property
    def dry_run(self) -> bool:
        """Whether this is a dry run (`--dry-run`): writes are reported, none is sent."""
        return self.journal.mode is Mode.DRY_RUN

    @property
    def dry_run_writes(self) -> list[tuple[str, str]]:
        """(method, path) of every write a dry run reported."""
        return self.journal.dry_run.writes if self.journal.dry_run is not None else []

    @property
    def revision(self) -> str | None:
        """The running script's revision."""
        return self.script.revision if self.script is not None else None

    # --- reading -------------------------------------------------------------------------

    def search(self, resource_type: str, *, as_dict: bool = False, read_ahead: bool = True,
               params: Mapping[str, Any] | None = None, **search: Any) -> Iterator[Any]:
        """Every resource of `resource_type` matching the search, across all pages.

        Pages are fetched by following `link[next]`, never by offset arithmetic, so memory
        holds a few pages whatever the number of matches: the caller's, and up to 3 that a
        background thread reads ahead while the caller writes (read_ahead=False: one page,
        read when needed). Yields fhirclient models, or dicts with as_dict=True. Only resources
        that matched are yielded (included resources are skipped). `params={...}` for names
        that are not Python identifiers (`_has:...`). When this run resumes an interrupted
        one, resources that run already wrote are not yielded: the script does not transform
        them twice.
        """
        query = dict(params or {})
        query.update(search)
        query.setdefault("_count", self.settings.page_size)
        if self.only is not None:  # the script's own search, over the failed resources alone
            ids = self.only.get(resource_type, [])
            for start in range(0, len(ids), 100):
                yield from self._search(resource_type, dict(query, _id=",".join(ids[start:start + 100])),
                                        as_dict, read_ahead)
            return
        yield from self._search(resource_type, query, as_dict, read_ahead)

    def _search(self, resource_type: str, query: dict[str, Any], as_dict: bool, read_ahead: bool
                ) -> Iterator[Any]:
        entries = search_entries(self.connection, resource_path(resource_type), query,
                                 read_ahead=read_ahead)
        try:
            for resource in self._unwritten(entries, int(query["_count"])):
                self._remember(resource)
                yield resource if as_dict else self.to_model(resource)
        finally:
            entries.close()  # a caller that stopped early: stop the reader thread now

    def _unwritten(self, entries: Iterator[dict[str, Any]], chunk: int) -> Iterator[dict[str, Any]]:
        """The matched resources, less those an interrupted attempt wrote (one lookup per page)."""
        page: list[dict[str, Any]] = []
        for entry in entries:
            if (entry.get("search") or {}).get("mode", "match") != "match":
                continue
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            if not self.journal.resuming:
                yield resource
                continue
            page.append(resource)
            if len(page) >= chunk:
                yield from self._drop_written(page)
                page = []
        if page:
            yield from self._drop_written(page)

    def _drop_written(self, page: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        done = self.journal.written_before(f"{r.get('resourceType')}/{r.get('id')}" for r in page)
        for resource in page:
            if f"{resource.get('resourceType')}/{resource.get('id')}" not in done:
                yield resource

    def count(self, resource_type: str, *, params: Mapping[str, Any] | None = None,
              **search: Any) -> int:
        """How many resources match (`_summary=count`: no resource is transferred)."""
        query = dict(params or {})
        query.update(search)
        query["_summary"] = "count"
        reply = self.connection.get(resource_path(resource_type), query, headers=FRESH)
        total = (reply.body or {}).get("total", 0)
        return total if isinstance(total, int) and not isinstance(total, bool) else 0

    def read(self, resource_type: str, resource_id: str, *, as_dict: bool = False,
             missing_ok: bool = False) -> Any:
        """One resource by id (a fhirclient model, or a dict with as_dict=True);
        `missing_ok=True` returns None for a resource that does not exist (404) or was
        deleted (410)."""
        reply = self.connection.get(resource_path(resource_type, resource_id),
                                    allow=(404, 410) if missing_ok else ())
        if reply.status in (404, 410):
            return None
        return self._result(reply.body or {}, as_dict)

    # --- writing: one call, one write --------------------------------------------------------

    def create(self, resource: Any, *, key: str | Mapping[str, str] | None = None,
               full_url: str | None = None) -> Any:
        """Create `resource`, at most once.

        `key` is its idempotency key: a search (`{"identifier": "system|value"}` or
        `"name=value&..."`) that finds the resource once it exists. Default: the resource's
        first identifier with a system and a value. A resource the key already finds is not
        created again (and is returned as found), so a resumed or repeated run never
        duplicates. Without PROVENANCE a create with no key is a plain POST. `full_url`
        (`urn:uuid:...`): what later writes of this migration may reference it by before it
        exists (`{"reference": "urn:uuid:..."}`); see `transaction()`.
        """
        return self._one(self.create_write(resource, key=key, full_url=full_url), resource)

    def conditional_create(self, resource: Any, query: str | Mapping[str, str]) -> Any:
        """Create unless a resource matches `query` (If-None-Exist); `create(resource, key=query)`."""
        return self.create(resource, key=query)

    def update(self, resource: Any, *, check_version: bool = True) -> Any:
        """PUT the resource. Version-aware by default: refused (412, raised as
        VersionConflictError) if someone changed it since it was read (If-Match from
        meta.versionId); `check_version=False` overwrites whatever is there."""
        return self._one(self.update_write(resource, check_version=check_version), resource)

    def conditional_update(self, resource: Any, query: str | Mapping[str, str]) -> Any:
        """Update the resource `query` finds, or create it if none does (FHIR's conditional
        update). More than one match is an error. With PROVENANCE the match is looked up first
        and written by id (version-aware), so it has a Provenance like any update."""
        writes = self.conditional_update_writes(resource, query)
        return self._one(writes[0], resource)

    def patch(self, resource_type: str, resource_id: str, operations: Any, *,
              version: str | None = None) -> Any:
        """Patch one resource: a JSON Patch (RFC 6902, a list of operations) or a FHIRPath
        Patch (a `Parameters` resource). With `version`, only if it is still at that version
        (If-Match). Returns the patched resource as the server answered it."""
        return self._one(self.patch_write(resource_type, resource_id, operations, version=version), None)

    def delete(self, resource_or_type: Any, resource_id: str | None = None) -> None:
        """Delete a resource: `ctx.delete(resource)` or `ctx.delete("Patient", "123")`."""
        self._one(self.delete_write(resource_or_type, resource_id, where="ctx.delete"), None)

    def conditional_delete(self, resource_type: str, query: str | Mapping[str, str]) -> None:
        """Delete every resource of `resource_type` that `query` finds (one transaction; with
        PROVENANCE each is looked up and deleted by id, so the deletes can be undone)."""
        self.journal.send_conditional(Write("DELETE", resource_type, check_version=False,
                                            url=f"{resource_path(resource_type)}?{query_string(query)}"))

    # --- writing: bundles ----------------------------------------------------------------

    def batch(self, *, size: int | None = None, raise_errors: bool = True,
              transaction_first: bool = True, workers: int | None = None,
              max_failures: float | None = None) -> BundleWriter:
        """`with ctx.batch() as b:` collects writes into batch bundles of `size` (BUNDLE_SIZE),
        each entry applied on its own; failures are raised together at the end of the block
        (`raise_errors=False`: read `b.failures`). `workers` bundles are sent at once (WORKERS).
        `max_failures` (MAX_FAILURES, default 0): refused entries the migration may leave
        behind, a count or a fraction below 1 of the entries sent; within it the block goes on,
        the failures are recorded and the migration is applied "with N failures"
        (`fhirmigrate --retry-failed NAME` reruns it over exactly those); past it, it stops as
        it would without one. See bundles.py."""
        return BundleWriter(self, "batch", size=size, raise_errors=raise_errors,
                            transaction_first=transaction_first, workers=workers,
                            max_failures=max_failures)

    def transaction(self, *, size: int | None = None, workers: int | None = None) -> BundleWriter:
        """`with ctx.transaction() as t:` collects writes into transaction bundles of `size`
        (BUNDLE_SIZE). Each bundle is all-or-nothing; the block as a whole is not: a failed
        bundle raises at once, and the bundles before it stay committed (a resumed run skips
        them). Put what must be atomic in one bundle (`size=`). Bundles go one at a time, in
        order, whatever WORKERS says: nothing after a failed bundle is sent. `workers=` sends
        bundles of updates side by side, and then bundles in flight may still commit.

        Entries that reference each other: `t.create(patient, full_url="urn:uuid:...")` and
        `{"subject": {"reference": "urn:uuid:..."}}` in the entries that point at it, as in any
        FHIR transaction. The server resolves the reference inside one bundle; an entry that
        lands in a later bundle (or a resumed run, where the create already exists) gets the id
        the server assigned written in before it is sent."""
        return BundleWriter(self, "transaction", size=size, workers=1 if workers is None else workers)

    # --- undo and the server's bulk operation -------------------------------------------------

    def undo(self, *, force: bool = False, trust_unsigned: bool = False) -> int:
        """Revert every write this migration's last application made through ctx, from their
        signed Provenance: updated resources get their previous version's content back, created
        ones are deleted, deleted ones are restored under the same id. First it checks that
        every one still has the content the migration left (a newer version with the same
        content, e.g. after a later migration's undo, is fine); if any changed since, it writes
        nothing and raises UndoConflictError naming them (`force=True` reverts the others).
        Records that cannot be verified as this tool's are ignored and named;
        `trust_unsigned=True` also accepts unsigned records, as versions of the tool before
        signatures wrote them (a decision made in code, like force). Resumable, with
        Provenance of its own. Returns how many resources it reverted. The default downgrade
        body."""
        return undo(self, force=force, trust_unsigned=trust_unsigned)

    def bulk_patch(self, resource_type: str, operations: Any, *, server_job: bool | None = None,
                   **search: Any) -> int:
        """Apply FHIRPath Patch `operations` to every `resource_type` matching `search`, with
        Provenance, resume and undo. By default as patch bundles (measured faster than HAPI's
        job at every size tried: bulk.py); `server_job=True` through the server's own job
        (HAPI's `$hapi.fhir.bulk-patch`). Returns how many resources changed."""
        return bulk_patch(self, resource_type, operations, search, server_job=server_job)

    # --- the writes behind the helpers ---------------------------------------------------------

    def create_write(self, resource: Any, *, key: str | Mapping[str, str] | None = None,
                     full_url: str | None = None) -> Write:
        data = self.as_json(resource)
        checked_type(data["resourceType"])
        if full_url is not None:
            self.journal.claim_full_url(full_url)
        return Write("POST", data["resourceType"], body=data,
                     key=query_string(key) if key is not None else identifier_key(data),
                     full_url=full_url)

    def update_write(self, resource: Any, *, check_version: bool = True) -> Write:
        return update_of(self.as_json(resource), check_version=check_version)

    def conditional_update_writes(self, resource: Any, query: str | Mapping[str, str]) -> list[Write]:
        """The update the journal sends for a conditional update (by id, when it records
        Provenance: Journal.by_id)."""
        data = self.as_json(resource)
        checked_type(data["resourceType"])
        body = {k: v for k, v in data.items() if k != "id"}
        return self.journal.by_id(Write("PUT", data["resourceType"], body=body, check_version=False,
                                        url=f"{resource_path(data['resourceType'])}?{query_string(query)}"))

    def patch_write(self, resource_type: str, resource_id: str, operations: Any, *,
                    version: str | None = None) -> Write:
        resource_path(resource_type, resource_id)
        if not isinstance(operations, list) and not (
                isinstance(operations, Mapping) and operations.get("resourceType") == "Parameters"):
            raise TypeError("a patch is a JSON Patch (a list of operations) or a FHIRPath Patch "
                            "(a Parameters resource)")
        return Write("PATCH", resource_type, resource_id, body=operations, version=version,
                     check_version=version is not None)

    def delete_write(self, resource_or_type: Any, resource_id: str | None, *, where: str) -> Write:
        version = None
        if resource_id is None and not isinstance(resource_or_type, str):
            data = self.as_json(resource_or_type)
            resource_or_type, resource_id = data["resourceType"], data.get("id")
            version = (data.get("meta") or {}).get("versionId")
        if resource_id is None:
            raise TypeError(
                f"{where}({resource_or_type!r}) names no resource: give a resource, or a type and "
                "an id (ctx.conditional_delete deletes what a search finds)"
            )
        resource_path(resource_or_type, resource_id)
        return Write("DELETE", resource_or_type, resource_id,
                     version=version if isinstance(version, str) else None, check_version=False)

    def _one(self, write: Write, original: Any) -> Any:
        """Send one write; the resource as the server answered it (a model or a dict, as
        `original`), else `original`."""
        resource = self.journal.send_one(write)
        if resource is None:
            return original
        return self._result(resource, isinstance(original, Mapping) or original is None)

    # --- dry runs ------------------------------------------------------------------------

    def intercept_request(self, request: requests.PreparedRequest) -> requests.Response:
        """A write sent through the session itself (fhirclient models, ctx.server) in a dry run:
        reported as any other, never sent (DryRun.intercept)."""
        assert self.journal.dry_run is not None, "only a dry run intercepts requests"
        return self.journal.dry_run.intercept(request)

    # --- progress and output ---------------------------------------------------------------

    def progress(self, iterable: Iterable[T], total: int | None = None,
                 desc: str | None = None) -> Iterator[T]:
        """Yield from `iterable`, reporting how far it got: a bar on a terminal, a line every
        10 seconds otherwise (the front end decides, from `progress` events), and one log line
        at the end."""
        desc = desc or (self.script.name if self.script is not None else "progress")
        if total is not None and self.attempt is not None:
            self.attempt.total = total  # the state's attempt record carries it: rate and ETA anywhere
        started = last = time.monotonic()
        count = 0
        self.events.emit(Progress(desc, 0, total, script=self.script))
        try:
            for count, item in enumerate(iterable, 1):
                yield item
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    self.events.emit(Progress(desc, count, total, now - started, script=self.script))
        finally:
            elapsed = time.monotonic() - started
            self.events.emit(Progress(desc, count, total, elapsed, final=True, script=self.script))
            self.log.info("%s: %d done in %.1fs", desc, count, elapsed)

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def as_json(resource: Any) -> dict[str, Any]:
        """A resource (dict or fhirclient model) as a dict (a copy for dicts)."""
        if isinstance(resource, Mapping):
            data = dict(resource)
        elif hasattr(resource, "as_json"):
            data = resource.as_json()
        else:
            raise TypeError(f"expected a FHIR resource (dict or fhirclient model), got "
                            f"{type(resource).__name__}")
        if "resourceType" not in data:
            raise ValueError("the resource has no resourceType")
        return data

    @staticmethod
    def to_model(data: Mapping[str, Any]) -> Any:
        """A dict as the fhirclient model of its resourceType."""
        return FHIRElementFactory.instantiate(data["resourceType"], dict(data))

    @staticmethod
    def new_uuid() -> str:
        return str(uuid.uuid4())

    def _result(self, data: dict[str, Any], as_dict: bool) -> Any:
        self._remember(data)
        return data if as_dict else self.to_model(data)

    def _remember(self, resource: Mapping[str, Any]) -> None:
        self.journal.remember(resource)
