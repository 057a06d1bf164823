"""`ctx.undo()`: revert what a migration's application wrote, from its signed Provenance.

1. **Plan.** Every Provenance the application's attempts wrote (their ids are in its applied
   record) is read; only records whose signature verifies count (provenance.py: a forged copy
   of a genuine record changes nothing), and a created target only once it is bound to its
   signed key. Per resource, the first write (in the attempts' order, then each record's
   signed sequence) says what to restore (CREATE: delete it; UPDATE: put back the version it
   replaced; DELETE: restore that version under the same id) and the last write says which
   version the migration left it at. Memory holds one small entry per resource written.
2. **Check.** A resource counts as changed since the migration when its *content* (everything
   but `meta`) differs from the version the migration left, not when its version number moved:
   a later migration of the same chain that was undone first left the content as it was, under
   a newer version, and `fhirdowngrade zero` must go through. A resource whose record names no
   version is changed (nothing proves otherwise). If any changed, nothing is written:
   UndoConflictError names them (the first ten, and how many). `force=True` reverts the others.
3. **Revert,** in bundles through the downgrade attempt's journal, each write version-aware
   against the version the check saw: with Provenance of its own, and resumable (a resource an
   interrupted undo already reverted is skipped, and is not held against the check either).

Undo never writes the tool's own resources (the state, its records, AuditEvent, Provenance),
whatever a record names. Records written before signatures existed are trusted only when the
downgrade says so (`ctx.undo(trust_unsigned=True)`); records with a signature that does not
verify never are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UndoConflictError, UndoError
from .events import Progress, RecordsIgnored
from .journal import Mode
from .provenance import Recorded, Target, bound_creates, recorded_by
from .signing import Signer
from .state import RECORD_IDENTIFIER, STATE_SYSTEM
from .writes import Write, bundle_error

if TYPE_CHECKING:
    from .protocols import ScriptContext

SHOWN = 10
CHUNK = 100
OWN_TYPES = ("Provenance", "AuditEvent")  # the tool's records: never reverted
Order = tuple[int, int, str]  # attempt index, signed sequence, recorded


@dataclass
class Revert:
    """One resource the application wrote: how it was first written, and how it was left."""

    resource_type: str
    resource_id: str
    first: str  # CREATE / UPDATE / DELETE: the first write's activity
    previous: str | None  # the version the first write replaced (what to restore)
    last: str  # the last write's activity
    version: str | None  # the version the last write produced
    first_at: Order
    last_at: Order
    key: str | None = None  # a create's signed idempotency key
    created: str | None = None  # the version a create produced (its key is checked there)
    current: str | None = None  # the version the check found (what the revert's If-Match names)
    own: bool = False  # the tool's own resource: never written

    @property
    def ref(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


class _Ignored:
    """Records and targets undo would not act on, named once in a warning."""

    def __init__(self) -> None:
        self.count = 0
        self.labels: list[str] = []

    def add(self, label: str) -> None:
        self.count += 1
        if len(self.labels) < SHOWN:
            self.labels.append(label)



def undo(ctx: ScriptContext, *, force: bool = False, trust_unsigned: bool = False) -> int:
    name = ctx.script.name if ctx.script is not None else "this migration"
    revision = ctx.revision or "?"
    applied = ctx.applied
    if ctx.journal.mode is Mode.PLAIN or not ctx.settings.provenance:
        raise UndoError(name, revision, "PROVENANCE is off, so this run cannot record (or revert) writes.")
    if applied is None:
        raise UndoError(name, revision, "it is not recorded as applied.")
    if not applied.provenance:
        raise UndoError(name, revision, "it was applied without Provenance (recorded with --fake "
                                        "with nothing to adopt, adopted from an earlier state, or "
                                        "applied by an earlier version of the tool or with "
                                        "PROVENANCE off), so what it wrote is not known.")
    # A dry run reads the records and checks them as a real undo does; its writes are reported.
    signer = ctx.journal.writer.signer if ctx.journal.writer is not None else ctx.settings.signer
    ignored = _Ignored()
    plan = _plan(ctx, applied.attempts, ignored, signer, trust_unsigned=trust_unsigned)
    if not plan and ignored.count:
        raise UndoError(name, revision, (
            f"none of the {ignored.count} record(s) of its writes can be verified as this tool's "
            f"({', '.join(ignored.labels[:3])}): they are not signed with this project's "
            "SIGNING_KEY (or one of SIGNING_KEY_FALLBACKS). If an earlier version of the tool "
            "wrote them, `ctx.undo(trust_unsigned=True)` in the downgrade accepts them."))
    done = ctx.journal.written_before(plan.keys())  # what an interrupted undo reverted already
    todo = [r for r in plan.values() if r.ref not in done and not (r.first == "CREATE" and r.last == "DELETE")]
    todo = _trusted_only(ctx, todo, ignored)
    conflicts = _changed_since(ctx, todo, ignored)
    if ignored.count:
        ctx.events.emit(RecordsIgnored(ctx.script, ignored.count, tuple(ignored.labels)))
    if conflicts and not force and not ctx.after_unrun_steps:
        raise UndoConflictError(name, revision, conflicts[:SHOWN], len(conflicts))
    blocked = set() if ctx.after_unrun_steps else {ref for ref, _ in conflicts}
    todo = [r for r in todo if r.ref not in blocked and not r.own]
    reverted = 0
    size = ctx.settings.bundle_size
    for start in range(0, len(todo), size):
        chunk = todo[start:start + size]
        results = ctx.journal.send(_writes(ctx, chunk), atomic=False)
        failed = [r for r in results if not r.ok]
        if failed:
            raise bundle_error("batch", failed)
        reverted += len(results)
        ctx.events.emit(Progress(f"undo {name}", reverted, total=len(todo), script=ctx.script))
    return reverted


# --- plan ---------------------------------------------------------------------------------------


def _plan(ctx: ScriptContext, attempts: tuple[str, ...], ignored: _Ignored, signer: Signer, *,
          trust_unsigned: bool) -> dict[str, Revert]:
    plan: dict[str, Revert] = {}
    index = {attempt: i for i, attempt in enumerate(attempts)}
    for record in recorded_by(ctx.connection, attempts, signer):
        if not _acceptable(record, trust_unsigned):
            ignored.add(f"{record.label} (" + ("its signature does not verify" if record.signed
                                               else "not signed") + ")")
            continue
        order: Order = (index.get(record.attempt, 0), record.sequence, record.recorded)
        for target in record.targets:
            if target.resource_id:
                _merge(plan, record.activity, target, order)
    return plan


def _acceptable(record: Recorded, trust_unsigned: bool) -> bool:
    if record.direction != "upgrade":
        return False
    return record.trusted or (trust_unsigned and not record.signed)


def _merge(plan: dict[str, Revert], activity: str, target: Target, order: Order) -> None:
    known = plan.get(target.ref)
    created = activity == "CREATE"
    if known is None:
        plan[target.ref] = Revert(target.resource_type, target.resource_id, activity, target.previous,
                                  activity, target.version, order, order,
                                  key=target.key if created else None,
                                  created=target.version if created else None)
        return
    if order < known.first_at:
        known.first, known.previous, known.first_at = activity, target.previous, order
        known.key = target.key if created else None
        known.created = target.version if created else None
    if order >= known.last_at:
        known.last, known.version, known.last_at = activity, target.version, order


def _trusted_only(ctx: ScriptContext, todo: list[Revert], ignored: _Ignored) -> list[Revert]:
    """Without the tool's own record types, and with each created resource bound to its key."""
    kept: list[Revert] = []
    creates: list[Revert] = []
    for item in todo:
        if item.resource_type in OWN_TYPES:
            ignored.add(f"{item.ref} (the tool's own records are never reverted)")
        elif item.first == "CREATE":
            creates.append(item)
        else:
            kept.append(item)
    for start in range(0, len(creates), CHUNK):
        chunk = creates[start:start + CHUNK]
        bound = bound_creates(ctx.connection, [
            Target(i.resource_type, i.resource_id, i.created, key=i.key) for i in chunk])
        for item in chunk:
            if item.ref in bound:
                kept.append(item)
            else:
                ignored.add(f"{item.ref} (not the resource its signed create key names)")
    return kept


# --- check --------------------------------------------------------------------------------------


def _changed_since(ctx: ScriptContext, todo: list[Revert], ignored: _Ignored) -> list[tuple[str, str]]:
    """(Type/id, what happened) for each resource whose content is no longer what the
    migration left; fills each item's `current` version (and `own`: never to be written)."""
    changed: list[tuple[str, str]] = []
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        now = _read(ctx, [(i.resource_type, i.resource_id, None) for i in chunk])
        compare: list[tuple[Revert, dict[str, Any]]] = []
        for item, resource in zip(chunk, now, strict=True):
            if resource is not None and _ours(resource):
                item.own = True
                ignored.add(f"{item.ref} (the tool's own state is never reverted)")
                continue
            item.current = _version(resource) if resource is not None else None
            if item.last == "DELETE":
                if resource is not None:
                    changed.append((item.ref, f"deleted by the migration, now at version {item.current}"))
            elif resource is None:
                changed.append((item.ref, "deleted since"))
            elif not item.version:
                changed.append((item.ref, "its record does not say which version the migration left"))
            elif item.current != item.version:
                compare.append((item, resource))
        if compare:
            left = _read(ctx, [(i.resource_type, i.resource_id, i.version) for i, _ in compare])
            for (item, resource), then in zip(compare, left, strict=True):
                if then is None or _content(then) != _content(resource):
                    changed.append((item.ref, f"changed since: now version {item.current}, the "
                                              f"migration left version {item.version}"))
    return changed


def _read(ctx: ScriptContext, wanted: list[tuple[str, str, str | None]]) -> list[dict[str, Any] | None]:
    return ctx.connection.read_many(wanted)


def _version(resource: Mapping[str, Any]) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return version if isinstance(version, str) else None


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What undo would overwrite: the resource without `meta` (versions, dates, source)."""
    return {k: v for k, v in resource.items() if k != "meta"}


def _ours(resource: Mapping[str, Any]) -> bool:
    """The migration state or one of its records (a Basic the tool owns)."""
    if resource.get("resourceType") != "Basic":
        return False
    return any(isinstance(i, Mapping) and i.get("system") in (STATE_SYSTEM, RECORD_IDENTIFIER)
               for i in resource.get("identifier") or [])


# --- revert -------------------------------------------------------------------------------------


def _writes(ctx: ScriptContext, chunk: list[Revert]) -> list[Write]:
    contents = _previous_contents(ctx, [r for r in chunk if r.first in ("UPDATE", "DELETE")])
    writes = []
    for item in chunk:
        if item.first == "CREATE":
            writes.append(Write("DELETE", item.resource_type, item.resource_id, version=item.current,
                                check_version=item.current is not None))
            continue
        body = dict(contents[item.ref], id=item.resource_id)
        # Profiles, tags and security labels are part of what is restored; the version is not.
        meta = {k: v for k, v in (body.get("meta") or {}).items()
                if k not in ("versionId", "lastUpdated", "source")}
        body.pop("meta", None)
        if meta:
            body["meta"] = meta
        # A resource still there is written If-Match the version the check saw. One the
        # migration deleted is re-created: no If-Match, and its version is the deleted one
        # (its Provenance then names the version the re-creation produces, in the same
        # transaction, which is also the only way HAPI lets a record name it).
        still_there = item.last != "DELETE"
        writes.append(Write("PUT", item.resource_type, item.resource_id, body=body,
                            version=item.current if still_there else item.version,
                            check_version=still_there))
    return writes


def _previous_contents(ctx: ScriptContext, items: list[Revert]) -> dict[str, dict[str, Any]]:
    """The versions to restore, read in one batch of version reads (vread) per bundle."""
    if not items:
        return {}
    missing = [i.ref for i in items if not i.previous]
    if missing:
        raise UndoError(ctx.script.name if ctx.script else "?", ctx.revision or "?",
                        f"its Provenance does not say which version of {', '.join(missing[:5])} it "
                        "replaced.")
    contents: dict[str, dict[str, Any]] = {}
    for item, resource in zip(items, _read(ctx, [(i.resource_type, i.resource_id, i.previous)
                                                 for i in items]), strict=True):
        if resource is None or _ours(resource):
            raise UndoError(ctx.script.name if ctx.script else "?", ctx.revision or "?",
                            f"version {item.previous} of {item.ref} cannot be read.")
        contents[item.ref] = resource
    return contents

