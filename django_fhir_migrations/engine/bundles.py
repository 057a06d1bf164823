"""Batch and transaction bundles that a migration fills with `with ctx.batch() as b:`.

Entries are collected and sent every BUNDLE_SIZE entries (`size=`), so memory stays flat
however many resources a migration touches. Each bundle goes through the attempt's journal
(journal.py): with its Provenance, skipping what an interrupted attempt already wrote.

* `ctx.transaction()` is **one transaction per bundle**, not per block: a failed bundle raises
  at once and stops the migration; the bundles sent before it stay committed (the error says
  how many entries), and a resumed run skips them.
* `ctx.batch()` applies entries independently: failed entries are collected and raised together
  when the block ends, as a count per status and message with a few `Type/id` examples
  (`raise_errors=False`: handle `b.failures` yourself).

With `workers` > 1 (setting WORKERS for a batch; for a transaction block only an explicit
`workers=`, so that by default nothing after a failed transaction is sent), up to that many
bundles are sent at once while the script goes on filling the next: memory holds at most
`workers` bundles in flight plus the one being filled. Only bundles of updates and patches of
resources the script read run side by side; a bundle with a create, a delete, an update without
a known version (it may create) or a conditional update waits for every earlier bundle and is
sent alone, so the order of the block holds wherever one entry can depend on another. For a
parallel transaction block, a failure is raised when the block ends (bundles already in flight
may still commit).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .config import failure_budget
from .errors import BundleError, FhirServerError
from .events import BundleFailures
from .fhir.cancel import cancellable
from .journal import TRANSACTION_SEMANTICS_HEADER, TRY_AS_TRANSACTION_FIRST
from .writes import Failure, Result, Write, bundle_error, failure_summary

if TYPE_CHECKING:
    from .protocols import ScriptContext

logger = logging.getLogger("django_fhir_migrations")


def updates_only(writes: list[Write]) -> bool:
    """True when every entry changes a resource that exists (a PATCH, or a PUT of a version the
    script read): such bundles may be sent side by side in any order."""
    return all(w.method == "PATCH" or (w.method == "PUT" and w.version is not None and w.url is None)
               for w in writes)


class BundleWriter:
    """Collects writes into bundles of `size` and sends them (see the module docstring)."""

    def __init__(self, ctx: ScriptContext, kind: str, *, size: int | None = None,
                 raise_errors: bool = True, transaction_first: bool = True, workers: int | None = None,
                 max_failures: float | None = None):
        if kind not in ("batch", "transaction"):
            raise ValueError(f"kind must be 'batch' or 'transaction', not {kind!r}")
        self.ctx = ctx
        self.kind = kind
        self.headers = ({TRANSACTION_SEMANTICS_HEADER: TRY_AS_TRANSACTION_FIRST}
                        if kind == "batch" and transaction_first else {})
        self.size = size or ctx.settings.bundle_size
        self.workers = ctx.journal.parallel(workers if workers is not None else ctx.settings.workers)
        self.raise_errors = raise_errors
        # Refused entries the block may leave behind: a count, or a fraction of what it sent.
        self.max_failures = (ctx.settings.max_failures if max_failures is None
                             else failure_budget(max_failures, "max_failures"))
        self.entries: list[Write] = []
        self.failures: list[Result] = []
        self.sent_bundles = 0
        self.committed = 0  # entries in bundles that were committed
        self._mutex = threading.Lock()
        self._whole_before = ctx.journal.committed_whole
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[None]] = deque()
        self._stopping = threading.Event()  # set when the block fails: workers stop retrying

    @property
    def written(self) -> int:
        return self.committed

    @property
    def committed_whole(self) -> int:
        """Bundles of this writer the server committed as one transaction, unsplit."""
        return self.ctx.journal.committed_whole - self._whole_before

    # --- collecting entries --------------------------------------------------------------

    def create(self, resource: Any, *, if_none_exist: str | Mapping[str, str] | None = None,
               key: str | Mapping[str, str] | None = None, full_url: str | None = None) -> None:
        """Create `resource`; `key` (or `if_none_exist`) is its idempotency key: a search that
        finds it once it exists (default: its first identifier). `full_url` (`urn:uuid:...`) is
        what other entries reference it by (see ctx.transaction)."""
        self._add(self.ctx.create_write(resource, key=key if key is not None else if_none_exist,
                                        full_url=full_url))

    def update(self, resource: Any, *, check_version: bool = True) -> None:
        """Update `resource` (version-aware by default: If-Match its meta.versionId)."""
        self._add(self.ctx.update_write(resource, check_version=check_version))

    def conditional_update(self, resource: Any, query: str | Mapping[str, str]) -> None:
        """Update the resource `query` finds (or create it when none does)."""
        for write in self.ctx.conditional_update_writes(resource, query):
            self._add(write)

    def delete(self, resource_or_type: Any, resource_id: str | None = None) -> None:
        """Delete a resource: `delete(resource)` or `delete("Patient", "123")`, as ctx.delete."""
        self._add(self.ctx.delete_write(resource_or_type, resource_id, where=f"{self.kind}.delete"))

    def patch(self, resource_type: str, resource_id: str, operations: Any, *,
              version: str | None = None) -> None:
        """Patch a resource (JSON Patch list, or FHIRPath Patch Parameters), as ctx.patch."""
        self._add(self.ctx.patch_write(resource_type, resource_id, operations, version=version))

    def _add(self, write: Write) -> None:
        self.entries.append(write)
        if len(self.entries) >= self._limit():
            self.flush()

    def _limit(self) -> int:
        """Entries per bundle now: `size`, or fewer while the throttle shrinks batch bundles
        for a slow server (a transaction keeps its size: it is what the script wants atomic)."""
        throttle = self.ctx.journal.throttle
        if throttle is None or self.kind == "transaction":
            return self.size
        return throttle.bundle_size(self.size)

    # --- sending -------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what is collected (in the background when workers > 1)."""
        if not self.entries:
            return
        writes, self.entries = self.entries, []
        if self.workers == 1 or not updates_only(writes):
            # A bundle that creates or deletes is sent alone, after every earlier bundle of the
            # block has committed: later entries may reference what it creates, and what it
            # deletes may still be referenced by entries in flight.
            self._wait_in_flight(below=1)
            self._send(writes)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fhir-migrations-bundle")
        throttle = self.ctx.journal.throttle  # a slow server: fewer bundles at once
        self._wait_in_flight(below=throttle.workers(self.workers) if throttle else self.workers)
        self._in_flight.append(self._pool.submit(self._send_in_worker, writes))

    def _send_in_worker(self, writes: list[Write]) -> None:
        with cancellable(self._stopping):
            self._send(writes)

    def _send(self, writes: list[Write]) -> None:
        atomic = self.kind == "transaction"
        try:
            results = self.ctx.journal.send(writes, atomic=atomic, headers=self.headers)
        except FhirServerError as exc:
            if not atomic or exc.status is None:
                raise
            with self._mutex:
                committed, bundles = self.committed, self.sent_bundles
            labels = [w.label for w in writes[:3]]
            raise BundleError("transaction", [(str(exc.status), len(writes), exc.detail or str(exc), labels)],
                              committed=committed, bundles=bundles) from None
        failed = [r for r in results if not r.ok]
        with self._mutex:
            self.sent_bundles += 1
            self.committed += sum(1 for r in results if r.landed)
            self.failures.extend(failed)
            failures = len(self.failures)
        for status, count, message, examples in failure_summary(failed):
            logger.error("%s entries failed: %d x %s %s (%s)", self.kind, count, status, message,
                         ", ".join(examples))
        if failed and self.raise_errors and self.max_failures >= 1 and failures > self.max_failures:
            # Past a count budget: stop now (resumable), not at the end of a long block.
            raise bundle_error(self.kind, self.failures, budget=self._budget())

    def _budget(self) -> str:
        if self.max_failures >= 1:
            return f"{int(self.max_failures)} failure{'' if self.max_failures == 1 else 's'}"
        return f"{self.max_failures:.4g} of the entries sent"

    def _within_budget(self) -> bool:
        if not self.max_failures:
            return False
        if self.max_failures >= 1:
            return len(self.failures) <= self.max_failures
        return len(self.failures) <= self.max_failures * (self.committed + len(self.failures))

    def _wait_in_flight(self, *, below: int) -> None:
        """Wait, oldest first, until fewer than `below` bundles are in flight (raises the first
        failed one's error)."""
        while len(self._in_flight) >= below:
            self._in_flight.popleft().result()

    def _drain(self) -> None:
        error: BaseException | None = None
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except BaseException as exc:  # noqa: BLE001 - the first is raised after all finished
                error = error or exc
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if error is not None:
            raise error

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.entries = []  # the migration already failed; do not send half a block
            self._stopping.set()  # a worker waiting out a Retry-After stops now
            try:
                self._drain()
            except BaseException:  # noqa: BLE001 - the script's own error is the one to report
                pass
            return
        self.flush()
        self._drain()
        if self.failures and self.raise_errors:
            if not self._within_budget():
                raise bundle_error(self.kind, self.failures, budget=self._budget() if self.max_failures else "")
            # Within the budget: the migration goes on, and is recorded "applied with N failures".
            self.ctx.journal.failures.extend(Failure.of(r) for r in self.failures)
            groups = tuple((status, count, message, tuple(examples))
                           for status, count, message, examples in failure_summary(self.failures))
            self.ctx.events.emit(BundleFailures(self.ctx.script, len(self.failures), self._budget(), groups))
