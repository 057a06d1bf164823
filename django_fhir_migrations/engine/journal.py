"""Every write a migration makes through ctx goes through its attempt's Journal.

The journal is what makes a data migration resumable and undoable (DESIGN, "Large data
migrations"):

* **Provenance in the same transaction.** Writes are sent as a FHIR transaction together with
  their Provenance (provenance.py), whose targets name the version each write will produce:
  a version-aware update of version n produces n+1, a create its first version. Either both
  are committed or neither, so a write is never made without its record, whenever the process
  is killed. (A server whose version ids are not numbers gives nothing to predict: there the
  Provenance follows the write, and a kill between the two loses that record; see README.)
* **Resume.** An attempt that continues interrupted ones skips every resource they already
  wrote (a target of their Provenance): such a write is answered "skipped" and not sent. A
  create needs an idempotency key (`key=`, else the resource's first identifier): before a
  bundle's creates are sent, one search finds the keys that already exist, and those are not
  created again (the key is also sent as If-None-Exist against a concurrent creator).
* **Batches without losing batch semantics.** A batch is sent as one transaction (with its
  Provenance); if the server refuses it, it is split in halves, recursively, so every entry
  that can be applied is, each with its Provenance, and each failing entry is reported with
  the server's status and message (about 2 log2(n) extra requests for one bad entry in n).
* **Counts.** `written` (resources written by this attempt) feeds progress and the state's
  "partially applied" note.

How writes leave is the journal's **mode**, chosen once, when the attempt's journal is made, so
that ctx, its bundles, undo and bulk patch only call the journal and never ask which it is:

* `JOURNALED` (PROVENANCE on, the default): as above.
* `PLAIN` (PROVENANCE off): writes are sent as before: a single write as a plain request,
  batch bundles tried as a transaction first by HAPI (`X-Transaction-Semantics`), transactions
  as they are, conditional writes resolved by the server; nothing is skipped and nothing can
  be undone.
* `DRY_RUN` (`--dry-run`): nothing is sent; each write is reported (dryrun.py).

The choice is made in `__post_init__`: it sets `mode` and the two senders every write goes
through (`send_one` for a call of its own, `send` for a bundle), the dry run's or the wire's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import unquote

from . import jsonpatch
from .dryrun import DryRun
from .errors import FhirMigrationError, FhirServerError, ServerUnreachableError
from .fhir.client import (
    FhirConnection,
    Reply,
    checked_id,
    outcome_text,
    resource_path,
    validated_results,
    version_from_location,
)
from .provenance import Target, Writer
from .redaction import printable
from .resume import ResumeIndex
from .throttle import Throttle
from .writes import EXISTS, SKIPPED, Failure, Result, Write, create_key, update_of

logger = logging.getLogger("django_fhir_migrations")

# HAPI FHIR's TransactionSemanticsHeader: one retry, which is the plain batch.
TRANSACTION_SEMANTICS_HEADER = "X-Transaction-Semantics"
TRY_AS_TRANSACTION_FIRST = "retryCount=1; tryBatchAsTransactionFirst=true"
JSON_PATCH_IN_BUNDLE = "json_patch_in_bundle"


class MissingKeyError(ValueError):
    """A create with no idempotency key while resume is on (PROVENANCE)."""


class ProvenanceNotRecordedError(FhirMigrationError):
    """Writes were committed but the Provenance that follows them could not be written."""

    def __init__(self, count: int, reason: str):
        self.count = count
        super().__init__(
            f"{count} write(s) were made, but the Provenance recording them could not be written "
            f"afterwards ({reason}). A resumed run cannot skip them and ctx.undo() cannot revert "
            "them.", "Check the resources named above before running the migration again.")


class Mode(Enum):
    """How a journal's writes leave (see the module docstring): chosen once, when it is made."""

    JOURNALED = "journaled"  # in transactions with their Provenance: resumable, undoable
    PLAIN = "plain"  # PROVENANCE off: plain requests and bundles, nothing recorded
    DRY_RUN = "dry run"  # nothing leaves: each write is reported

    @property
    def records(self) -> bool:
        """Whether writes are recorded as Provenance (what undo and a server's job need)."""
        return self is Mode.JOURNALED


@dataclass
class Journal:
    """The writes of one migration attempt (see the module docstring).

    `writer` names the attempt in Provenance and signs it (None: PROVENANCE off); `dry_run`
    reports the writes instead of sending them (`--dry-run`); together they choose the `mode`.
    `previous`
    are the interrupted attempts this one continues, and `index` what they wrote (resume.py);
    `on_start` is called once, before the first write is sent (the executor records the
    attempt in the state there, so a resume can always find it: no write, from any worker,
    leaves before it returns); `integer_versions` says whether the server's version ids are
    numbers.
    """

    connection: FhirConnection
    writer: Writer | None = None
    dry_run: DryRun | None = None
    previous: tuple[str, ...] = ()
    on_start: Callable[[], None] | None = None
    integer_versions: bool = True
    index: ResumeIndex | None = None
    on_boundary: Callable[[], None] | None = None  # before each send: the attempt's checkpoint
    throttle: Throttle | None = None  # MAX_RATE and the adaptive back-off (throttle.py)
    written: int = 0
    skipped: int = 0
    bundles: int = 0
    committed_whole: int = 0
    failures: list[Failure] = field(default_factory=list)  # within a batch's failure budget
    # The id each `full_url` (urn:uuid) of a create turned out to have, for references to it
    # from entries sent in later bundles (one "Type/id" per such create: memory grows with them).
    urns: dict[str, str] = field(default_factory=dict)
    _claimed: set[str] = field(default_factory=set)
    _started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _start_lock: threading.Lock = field(default_factory=threading.Lock)
    mode: Mode = field(init=False)
    _one: Callable[[Write], dict[str, Any] | None] = field(init=False, repr=False)
    _bundle: Callable[..., list[Result]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dry_run is not None:
            if self.writer is not None:
                raise ValueError("a dry run records nothing: a journal takes a writer or a dry run, not both")
            self.mode = Mode.DRY_RUN
            self._one, self._bundle = self.dry_run.one, self.dry_run.bundle
        else:
            self.mode = Mode.PLAIN if self.writer is None else Mode.JOURNALED
            self._one, self._bundle = self._one_on_wire, self._bundle_on_wire

    # --- resume ------------------------------------------------------------------------------

    @property
    def resuming(self) -> bool:
        return self.mode.records and bool(self.previous)

    def written_before(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` ("Type/id") the interrupted attempts already wrote."""
        index = self._resume_index()
        return index.written(keys) if index is not None else set()

    def written_at(self, versions: Mapping[str, str]) -> set[str]:
        """Which of `versions` ("Type/id" -> version) the interrupted attempts left at that version."""
        index = self._resume_index()
        return index.written_at(versions) if index is not None else set()

    def _resume_index(self) -> ResumeIndex | None:
        """What the interrupted attempts wrote, read once when first asked (None: not resuming)."""
        if not self.resuming:
            return None
        if self.index is None:
            assert self.writer is not None
            self.index = ResumeIndex(self.connection, self.previous, self.writer.signer)
        return self.index

    # --- what ctx calls ----------------------------------------------------------------------

    def send_one(self, write: Write) -> dict[str, Any] | None:
        """One write as a call of its own (ctx.create, update, patch, delete): the resource as
        the server answered it, or None when none came back (skipped, found existing, a dry
        run, an answer without a resource)."""
        return self._one(write)

    def send(self, writes: Sequence[Write], *, atomic: bool, headers: Mapping[str, str] | None = None,
             representation: bool = False) -> list[Result]:
        """Send `writes`; one Result each, in order.

        atomic: all or nothing (a transaction); a refusal raises BundleError (or, for a single
        write, the server's error). Otherwise batch semantics: each write on its own.
        representation: the caller wants the written resources back (`Result.resource`; a single
        ctx.create/update returns it). Bundles do not ask for them: the server would serialize
        every resource it just stored into the answer for nothing.
        A dry run reports them (a bundle's header, then each write) and answers "intercepted".
        """
        return self._bundle(writes, atomic=atomic, headers=headers, representation=representation)

    def by_id(self, write: Write) -> list[Write]:
        """A conditional write (`write.url`: `Type?query`) as the writes this journal sends.

        Recorded as Provenance, a write names its resource by id: the match is looked up first
        and written by id (version-aware), an update of the one match or, when none matches, a
        create keyed by the query (more than one match is an error); a delete, one of each
        match. Otherwise the write as it is, for the server to resolve (or a dry run to report).
        """
        if not self.mode.records or write.url is None:
            return [write]
        matches = list(self._matches(write.resource_type, write.url))
        if write.method == "DELETE":
            return [Write("DELETE", write.resource_type, found["id"], check_version=False)
                    for found in matches]
        if len(matches) > 1:
            raise ValueError(f"conditional update of {write.url}: {len(matches)} resources match; "
                             "it must find at most one")
        if not matches:
            return [Write("POST", write.resource_type, body=write.body, key=write.url.partition("?")[2])]
        found = matches[0]
        body = dict(write.body, id=found["id"], meta=dict(write.body.get("meta") or {},
                                                          versionId=(found.get("meta") or {}).get("versionId")))
        return [update_of(body)]

    def send_conditional(self, write: Write) -> None:
        """A conditional delete (`write.url`): what `by_id` makes of it, in one transaction;
        PROVENANCE off, one request the server resolves."""
        writes = self.by_id(write)
        if writes == [write]:
            self.send_one(write)
        elif writes:
            self.send(writes, atomic=True)

    def remember(self, resource: Mapping[str, Any]) -> None:
        """A resource the script read: a dry run compares an update of it with it."""
        if self.dry_run is not None:
            self.dry_run.remember(resource)

    def parallel(self, workers: int) -> int:
        """How many bundles a block may send at once: a dry run reports them in order, one by
        one."""
        return 1 if self.mode is Mode.DRY_RUN else max(1, workers)

    def _matches(self, resource_type: str, url: str) -> Iterator[dict[str, Any]]:
        reply = self.connection.get(url, {"_count": 1000})
        for entry in (reply.body or {}).get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and (entry.get("search") or {}).get("mode", "match") == "match":
                checked_id(resource_type, resource.get("id"))
                yield resource

    # --- sending -----------------------------------------------------------------------------

    def _one_on_wire(self, write: Write) -> dict[str, Any] | None:
        if self.mode is Mode.PLAIN:
            return self._send_one_plain(write)
        [result] = self._bundle_on_wire([write], atomic=True, representation=True)
        if result.status in (SKIPPED, EXISTS):
            return None
        return result.resource

    def _bundle_on_wire(self, writes: Sequence[Write], *, atomic: bool,
                        headers: Mapping[str, str] | None = None, representation: bool = False) -> list[Result]:
        if self.on_boundary is not None:
            self.on_boundary()  # may raise StopRequested: an operator asked the run to stop
        results: dict[int, Result] = {}
        if self.mode is Mode.PLAIN:
            pending = list(enumerate(writes))
        else:
            pending = self._skip_resumed(writes, results)
            pending = self._skip_existing_keys(pending, results)
            self._fill_versions(pending)
        self._learn_urns(results.values())  # creates skipped as existing: their ids are known
        if pending:
            self.start()
            if self.connection.capabilities.get(JSON_PATCH_IN_BUNDLE) is False:
                pending = self._patches_as_puts(pending, results)
            if self.urns:
                pending = [(i, _resolved(w, self.urns)) for i, w in pending]
            slot = self.throttle.admit(len(pending)) if self.throttle is not None else 0.0
            began = time.monotonic()
            try:
                sent = self._dispatch(pending, atomic=atomic, headers=headers or {},
                                      representation=representation)
            except FhirServerError as exc:
                if exc.status != 501 or not any(_json_patch(w) for _, w in pending):
                    raise
                # Refused whole (nothing was written): this server takes no JSON Patch in a
                # bundle. Learned once; from now on such writes go as version-aware PUTs.
                logger.warning("The FHIR server does not accept JSON Patch inside a bundle (%s): "
                               "JSON Patches are applied here and sent as version-aware updates.",
                               exc.detail or exc.status)
                self.connection.capabilities[JSON_PATCH_IN_BUNDLE] = False
                pending = self._patches_as_puts(pending, results)
                sent = self._dispatch(pending, atomic=atomic, headers=headers or {},
                                      representation=representation)
            if self.throttle is not None:
                self.throttle.observe(time.monotonic() - began, len(pending))
                self.throttle.settle(slot)
            for (index, _), result in zip(pending, sent, strict=True):
                results[index] = result
            self._learn_urns(sent)
        return [results[i] for i in range(len(writes))]

    def claim_full_url(self, full_url: str) -> None:
        """A create's `full_url`: a `urn:uuid:` of its own, used once in the run."""
        try:
            valid = full_url.startswith("urn:uuid:") and str(uuid.UUID(full_url[9:])) == full_url[9:].lower()
        except (ValueError, AttributeError):
            valid = False
        if not valid:
            raise ValueError(f"full_url must be 'urn:uuid:' and a UUID, got {printable(repr(full_url), 80)}")
        with self._lock:
            if full_url in self._claimed:
                raise ValueError(f"full_url {full_url} is given to two creates of this migration")
            self._claimed.add(full_url)

    def _learn_urns(self, results: Iterable[Result]) -> None:
        for result in results:
            write = result.write
            if write.full_url and result.ok and write.full_url not in self.urns:
                rid, _ = version_from_location(result.location)
                if rid:
                    with self._lock:
                        self.urns[write.full_url] = f"{write.resource_type}/{rid}"

    def _dispatch(self, pending: list[tuple[int, Write]], *, atomic: bool, headers: Mapping[str, str],
                  representation: bool = False) -> list[Result]:
        if not pending:
            return []
        writes = [w for _, w in pending]
        if self.mode is Mode.PLAIN:
            return self._send_plain(writes, atomic=atomic, headers=headers)
        if atomic:
            return self._commit(pending, representation=representation)
        return self._commit_or_split(pending, representation=representation)

    def _patches_as_puts(self, pending: list[tuple[int, Write]], results: dict[int, Result]
                         ) -> list[tuple[int, Write]]:
        """JSON Patches applied here (jsonpatch.py) and sent as PUTs If-Match the version read:
        the same change for a server that takes no JSON Patch in a bundle. A patch that cannot
        apply, or a resource no longer at the version the script asked for, fails as the
        server would have failed it."""
        patches = [(i, w) for i, w in pending if _json_patch(w)]
        if not patches:
            return pending
        current = self.connection.read_many([(w.resource_type, w.resource_id or "", None) for _, w in patches])
        replaced: dict[int, Write | None] = {}
        for (index, write), resource in zip(patches, current, strict=True):
            version = (resource or {}).get("meta", {}).get("versionId")
            if resource is None:
                results[index] = Result(write, "404", f"{write.label} does not exist")
            elif write.check_version and write.version and version != write.version:
                results[index] = Result(write, "412", f"{write.label} is at version {version}, "
                                                      f"not {write.version}")
            else:
                try:
                    body = jsonpatch.apply(resource, write.body)
                except jsonpatch.JsonPatchError as exc:
                    results[index] = Result(write, "422", f"the JSON Patch does not apply: {exc}")
                else:
                    replaced[index] = Write("PUT", write.resource_type, write.resource_id, body=body,
                                            version=version, check_version=True)
                    continue
            replaced[index] = None
        kept: list[tuple[int, Write]] = []
        for index, write in pending:
            if index not in replaced:
                kept.append((index, write))
            elif (put := replaced[index]) is not None:
                kept.append((index, put))
        return kept

    def start(self) -> None:
        """Record the attempt before its first write. Every sender (bundle workers included)
        waits here until that record is on the server; if it fails, nothing is sent."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            if self.on_start is not None:
                self.on_start()
            self._started = True

    @property
    def started(self) -> bool:
        return self._started

    def _skip_resumed(self, writes: Sequence[Write], results: dict[int, Result]) -> list[tuple[int, Write]]:
        done = self.written_before(w.ref for w in writes if w.ref and w.method != "POST")
        pending = []
        for index, write in enumerate(writes):
            if write.ref in done and write.method != "POST":
                results[index] = Result(write, SKIPPED, "written by the interrupted attempt")
                with self._lock:
                    self.skipped += 1
            else:
                pending.append((index, write))
        return pending

    def _skip_existing_keys(self, pending: list[tuple[int, Write]], results: dict[int, Result]
                            ) -> list[tuple[int, Write]]:
        creates = [w for _, w in pending if w.method == "POST"]
        if not creates:
            return pending
        for write in creates:
            if not write.key:
                raise MissingKeyError(
                    f"ctx cannot create this {write.resource_type} resumably: it has no idempotency "
                    "key. Give one (key={'identifier': 'system|value'} or key='name=value&...', a "
                    "search that finds the resource once it exists), or an identifier with system "
                    "and value, so that a resumed run never creates it twice."
                )
        existing = self._existing(creates)
        kept = []
        for index, write in pending:
            if write.method == "POST" and write.key in existing:
                results[index] = Result(write, EXISTS, "a resource with this key exists",
                                        location=existing[write.key])
                with self._lock:
                    self.skipped += 1
            else:
                kept.append((index, write))
        return kept

    def _existing(self, creates: Sequence[Write]) -> dict[str, str]:
        """key -> 'Type/id' of the creates whose key already finds a resource.

        Keys that are a single identifier are looked up together, one search per type;
        other keys one search each.
        """
        found: dict[str, str] = {}
        by_type: dict[str, dict[str, str]] = {}  # type -> identifier token -> key
        others = []
        for write in creates:
            name, _, value = (write.key or "").partition("=")
            if name == "identifier" and "&" not in value and "," not in value and "|" in value:
                by_type.setdefault(write.resource_type, {})[unquote(value)] = write.key or ""
            else:
                others.append(write)
        for resource_type, tokens in by_type.items():
            items = sorted(tokens)
            for start in range(0, len(items), 100):
                chunk = items[start:start + 100]
                reply = self.connection.request(
                    "POST", f"{resource_path(resource_type)}/_search",
                    data={"identifier": ",".join(_escape(t) for t in chunk), "_elements": "identifier",
                          "_count": "1000"})
                for resource in _resources(reply):
                    for identifier in resource.get("identifier") or []:
                        token = f"{identifier.get('system', '')}|{identifier.get('value', '')}"
                        if token in tokens:
                            found[tokens[token]] = f"{resource_type}/{resource.get('id')}"
        for write in others:
            reply = self.connection.request("GET", f"{resource_path(write.resource_type)}?{write.key}&_elements=id")
            matches = _resources(reply)
            if matches:
                found[write.key or ""] = f"{write.resource_type}/{matches[0].get('id')}"
        return found

    def _fill_versions(self, pending: list[tuple[int, Write]]) -> None:
        """The version each update, patch and delete replaces, read when the script did not."""
        missing: dict[str, list[Write]] = {}
        for _, write in pending:
            if write.method != "POST" and write.resource_id and not write.version:
                missing.setdefault(write.resource_type, []).append(write)
        for resource_type, writes in missing.items():
            ids = sorted({w.resource_id or "" for w in writes})
            versions: dict[str, str] = {}
            for start in range(0, len(ids), 100):
                reply = self.connection.request(
                    "POST", f"{resource_path(resource_type)}/_search",
                    data={"_id": ",".join(ids[start:start + 100]), "_elements": "id", "_count": "1000"})
                for resource in _resources(reply):
                    version = (resource.get("meta") or {}).get("versionId")
                    if isinstance(version, str):
                        versions[str(resource.get("id"))] = version
            for write in writes:
                write.version = versions.get(write.resource_id or "")

    # --- one transaction with its Provenance ---------------------------------------------

    def _commit(self, pending: list[tuple[int, Write]], *, representation: bool = False) -> list[Result]:
        writer = self.writer
        assert writer is not None
        writes = [w for _, w in pending]
        entries: list[dict[str, Any]] = []
        targets: dict[str, list[tuple[int, Target, dict[str, Any]]]] = {}
        predictable = True
        for position, write in enumerate(writes):
            full_url = (write.full_url or f"urn:uuid:{uuid.uuid4()}") if write.method == "POST" else None
            entries.append(write.entry(full_url))
            target = self._predicted(write)
            if target is None:
                predictable = False
                continue
            reference = target.reference()
            if full_url:  # the server assigns the id: the transaction resolves the urn
                reference["reference"] = full_url
            targets.setdefault(write.activity, []).append((position, target, reference))
        records: dict[str, dict[str, Any]] = {}
        if predictable:
            for activity, items in targets.items():
                records[activity] = writer.provenance(activity, [t for _, t, _ in items],
                                                      target_refs=[r for _, _, r in items])
                entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": records[activity],
                                "request": {"method": "POST", "url": "Provenance"}})
        reply = self._post({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                           headers={"Prefer": "return=representation"} if representation else {})
        answers = validated_results("transaction", len(entries), reply.body or {}, reply.url)
        results = [_result(write, answer) for write, answer in zip(writes, answers, strict=False)]
        # Committed: whatever fails from here must not look like a refused bundle (that would
        # split it and send writes the server has already made a second time).
        try:
            if predictable:
                if "CREATE" in records:
                    answer = answers[len(writes) + list(records).index("CREATE")]
                    self._fix_creates(writes, results, answer, records["CREATE"])
            else:
                self._provenance_after(writes, results)
        except FhirServerError as exc:
            raise ProvenanceNotRecordedError(len(writes), str(exc)) from None
        finally:
            with self._lock:
                self.written += sum(1 for r in results if r.ok and r.status != EXISTS)
                self.bundles += 1
        return results

    def _predicted(self, write: Write) -> Target | None:
        """The Provenance target of `write`, with the version it will produce; None when that
        cannot be known in advance (version ids that are not numbers)."""
        if write.method == "POST":
            return Target(write.resource_type, "", "1" if self.integer_versions else None,
                          key=create_key(write))
        if not write.version or not write.version.isdigit():
            return None
        return Target(write.resource_type, write.resource_id or "", str(int(write.version) + 1),
                      write.version)

    def _fix_creates(self, writes: list[Write], results: list[Result], answer: Mapping[str, Any],
                     record: dict[str, Any]) -> None:
        """Creates are targets by urn in the transaction (the server chose their ids); the
        server resolves each urn to `Type/id`, without a version (a placeholder cannot carry
        one: HAPI refuses `urn:uuid:.../_history/1`). Their Provenance already names the
        version each create produced in `target-versions` (the first one, where versions are
        numbers), and its signature covers each create's key and version, not the id the server
        chose: so it is complete as committed, and nothing more is sent.

        One more request only where the committed record would say something untrue or
        incomplete: a create the server answered 200 (a resource with its key appeared
        meanwhile: not ours, it must leave the record, or undo would delete it), or a version
        that was not predicted (versions that are not numbers, or a server whose first version
        is not "1"). Then the record is rewritten with the resolved, version-specific references
        and signed again; with no create left, it is deleted."""
        created: list[Target] = []
        exact = True
        for write, result in zip(writes, results, strict=True):
            if write.method != "POST":
                continue
            if result.code != "201":
                exact = False
                if result.ok:
                    result.status = EXISTS
                continue
            rid, version = version_from_location(result.location)
            if not rid:
                exact = False
                continue
            predicted = self._predicted(write)
            if version is None or predicted is None or predicted.version != version:
                exact = False
            created.append(Target(write.resource_type, rid, version or "1", key=create_key(write)))
        if exact:
            return
        prov_id, prov_version = version_from_location((answer.get("response") or {}).get("location"))
        if not prov_id:
            return
        resource = dict(record, id=prov_id)
        assert self.writer is not None
        self.writer.retarget(resource, created)  # the resolved references and versions, signed again
        if not created:
            self.connection.request("DELETE", f"Provenance/{prov_id}")
            return
        try:
            self.connection.request("PUT", f"Provenance/{prov_id}", json=resource,
                                    headers={"If-Match": f'W/"{prov_version or "1"}"'})
        except FhirServerError as exc:  # the urn-resolved references stay; undo still works
            logger.warning("Could not make the created resources' Provenance/%s version-specific: %s",
                           prov_id, exc)

    def _provenance_after(self, writes: list[Write], results: list[Result]) -> None:
        """Writes whose versions could not be predicted: their Provenance, from the answers."""
        by_activity: dict[str, list[Target]] = {}
        for write, result in zip(writes, results, strict=True):
            if not result.ok or result.status == EXISTS:
                continue
            rid, version = version_from_location(result.location)
            by_activity.setdefault(write.activity, []).append(
                Target(write.resource_type, rid or write.resource_id or "", version, write.version,
                       key=create_key(write) if write.method == "POST" else None))
        for activity, targets in by_activity.items():
            self.record(activity, targets)

    def record(self, activity: str, targets: Sequence[Target], *, count: bool = False) -> None:
        """Provenance for writes made outside the journal's own transactions (a server's bulk
        job; versions the server did not let us predict): signed, sent after the attempt is
        recorded; `count` adds them to `written` (the journal did not send them)."""
        writer = self.writer
        assert writer is not None
        self.start()
        self.connection.request("POST", "Provenance", json=writer.provenance(activity, targets))
        if count:
            with self._lock:
                self.written += len(targets)

    def _commit_or_split(self, pending: list[tuple[int, Write]], *, whole: bool = True,
                         representation: bool = False) -> list[Result]:
        try:
            results = self._commit(pending, representation=representation)
        except FhirServerError as exc:
            if exc.status is None or isinstance(exc, ServerUnreachableError) or exc.status in (429, 501, 503):
                raise  # the server, not an entry: nothing to split
            if len(pending) == 1:
                write = pending[0][1]
                return [Result(write, f"{exc.status}", exc.detail or str(exc))]
            middle = len(pending) // 2
            return (self._commit_or_split(pending[:middle], whole=False, representation=representation)
                    + self._commit_or_split(pending[middle:], whole=False, representation=representation))
        if whole:
            with self._lock:
                self.committed_whole += 1
        return results

    def _post(self, bundle: dict[str, Any], headers: Mapping[str, str]) -> Reply:
        # Not repeated after a lost answer: the entries' If-Match would refuse the repeat and
        # the whole bundle would look failed. The migration fails; the next run resumes.
        return self.connection.request("POST", "", json=bundle, headers=headers, idempotent=False)

    # --- PROVENANCE off -----------------------------------------------------------------

    def _send_one_plain(self, write: Write) -> dict[str, Any] | None:
        """The write as a plain request, as the seed tool's scripts would send it."""
        request = write.request()
        headers = {}
        if request.get("ifMatch"):
            headers["If-Match"] = request["ifMatch"]
        if request.get("ifNoneExist"):
            headers["If-None-Exist"] = request["ifNoneExist"]
        if write.method == "PATCH":
            headers["Content-Type"] = ("application/json-patch+json" if isinstance(write.body, list)
                                       else "application/fhir+json")
        reply = self.connection.request(write.method, request["url"], json=write.body, headers=headers)
        if not reply.body or reply.body.get("resourceType") in (None, "OperationOutcome"):
            return None
        return reply.body

    def _send_plain(self, writes: Sequence[Write], *, atomic: bool, headers: Mapping[str, str]
                    ) -> list[Result]:
        kind = "transaction" if atomic else "batch"
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            w.entry(w.full_url or (f"urn:uuid:{uuid.uuid4()}" if atomic else None) if w.method == "POST" else None)
            for w in writes]}
        self.start()
        reply = self._post(bundle, headers)
        body = reply.body or {}
        answers = validated_results(kind, len(writes), body, reply.url)
        with self._lock:
            self.bundles += 1
            if kind == "batch" and body.get("type") == "transaction-response":
                self.committed_whole += 1
        results = [_result(w, a) for w, a in zip(writes, answers, strict=True)]
        with self._lock:
            self.written += sum(1 for r in results if r.ok)
        return results


def _resolved(write: Write, urns: Mapping[str, str]) -> Write:
    """`write` with references to creates of earlier bundles (`urn:uuid:...`) pointing at the ids
    the server gave them; the caller's resource is not changed."""
    if not isinstance(write.body, dict):
        return write
    body = _replace_references(write.body, urns)
    return write if body is write.body else replace(write, body=body)


def _replace_references(value: Any, urns: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        changed = {k: _replace_references(v, urns) for k, v in value.items()}
        reference = changed.get("reference")
        if isinstance(reference, str) and reference in urns:
            changed["reference"] = urns[reference]
        return value if all(changed[k] is value[k] for k in value) else changed
    if isinstance(value, list):
        items = [_replace_references(v, urns) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _json_patch(write: Write) -> bool:
    return write.method == "PATCH" and isinstance(write.body, list)


def _result(write: Write, answer: Mapping[str, Any]) -> Result:
    response = answer.get("response") or {}
    status = str(response.get("status", ""))
    resource = answer.get("resource")
    return Result(write, status, outcome_text(response.get("outcome")) if status[:1] not in "23" else "",
                  location=response.get("location"),
                  resource=resource if isinstance(resource, dict) else None)


def _resources(reply: Reply) -> list[dict[str, Any]]:
    return [e["resource"] for e in (reply.body or {}).get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and (e.get("search") or {}).get("mode", "match") == "match"]


def _escape(token: str) -> str:
    """A search token with FHIR's escapes for the characters that separate values."""
    return token.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$")
