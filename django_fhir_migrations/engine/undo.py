"""`ctx.undo()`: revert what a migration's application wrote, from its Provenance.

1. **Plan.** Every Provenance the application's attempts wrote (their tags are in its applied
   record) is read, oldest first; per resource, the first write says what to restore (CREATE:
   delete it; UPDATE: put back the version it replaced; DELETE: restore that version under
   the same id) and the last write says which version the migration left it at. Memory holds
   one small entry per resource written.
2. **Check.** Every resource must still be at the version the migration left it at (or still
   deleted). If any was changed since, nothing is written: UndoConflictError names them
   (the first ten, and how many). `force=True` reverts the others and leaves those.
3. **Revert,** in bundles through the downgrade attempt's journal: with Provenance of its own,
   and resumable (a resource an interrupted undo already reverted is skipped, and is not held
   against the check either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UndoConflictError, UndoError
from .fhir.client import resource_path, validated_results
from .journal import Write, bundle_error
from .provenance import recorded_by

if TYPE_CHECKING:
    from .protocols import ScriptContext

SHOWN_CONFLICTS = 10


@dataclass
class Revert:
    """One resource the application wrote: how it was first written, and how it was left."""

    resource_type: str
    resource_id: str
    first: str  # CREATE / UPDATE / DELETE: the first write's activity
    previous: str | None  # the version the first write replaced (what to restore)
    last: str  # the last write's activity
    version: str | None  # the version the last write produced

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


def undo(ctx: ScriptContext, *, force: bool = False) -> int:
    name = ctx.script.name if ctx.script is not None else "this migration"
    revision = ctx.revision or "?"
    applied = ctx.applied
    if ctx.journal.writer is None:
        raise UndoError(name, revision, "PROVENANCE is off, so this run cannot record (or revert) writes.")
    if applied is None:
        raise UndoError(name, revision, "it is not recorded as applied.")
    if not applied.provenance:
        raise UndoError(name, revision, "it was applied without Provenance (recorded with --fake, "
                                        "adopted from an earlier state, or applied by an earlier "
                                        "version of the tool or with PROVENANCE off), so what it "
                                        "wrote is not known.")
    plan = _plan(ctx, applied.attempts)
    done = _already_reverted(ctx)
    todo = [r for r in plan.values() if r.key not in done]
    conflicts = _changed_since(ctx, todo)
    if conflicts and not force:
        raise UndoConflictError(name, revision, conflicts[:SHOWN_CONFLICTS], len(conflicts))
    blocked = {key for key, _ in conflicts}
    todo = [r for r in todo if r.key not in blocked and not (r.first == "CREATE" and r.last == "DELETE")]
    if ctx.dry_run:
        for item in todo:
            ctx.show_write(*_describe(item))
        return len(todo)
    reverted = 0
    size = ctx.settings.bundle_size
    for start in range(0, len(todo), size):
        chunk = todo[start:start + size]
        writes = _writes(ctx, chunk)
        results = ctx.journal.send(writes, atomic=False)
        failed = [r for r in results if not r.ok]
        if failed:
            raise bundle_error("batch", failed)
        reverted += len(results)
        ctx.events.emit("progress", script=ctx.script, detail=f"undo {name}", count=reverted,
                        total=len(todo))
    return reverted


def _plan(ctx: ScriptContext, attempts: tuple[str, ...]) -> dict[str, Revert]:
    plan: dict[str, Revert] = {}
    for record in recorded_by(ctx.connection, attempts):
        for target in record.targets:
            if not target.resource_id:
                continue
            known = plan.get(target.key)
            if known is None:
                plan[target.key] = Revert(target.resource_type, target.resource_id, record.activity,
                                          target.previous, record.activity, target.version)
            else:
                known.last, known.version = record.activity, target.version or known.version
    return plan


def _already_reverted(ctx: ScriptContext) -> set[str]:
    """Resources an interrupted undo of this migration reverted already."""
    previous = ctx.journal.previous
    if not previous:
        return set()
    return {t.key for record in recorded_by(ctx.connection, previous) for t in record.targets}


def _changed_since(ctx: ScriptContext, todo: list[Revert]) -> list[tuple[str, str]]:
    """(Type/id, what happened) for each resource no longer as the migration left it."""
    by_type: dict[str, list[Revert]] = {}
    for item in todo:
        by_type.setdefault(item.resource_type, []).append(item)
    changed: list[tuple[str, str]] = []
    for resource_type, items in sorted(by_type.items()):
        current: dict[str, str] = {}
        ids = sorted(i.resource_id for i in items)
        for start in range(0, len(ids), 100):
            reply = ctx.connection.request(
                "POST", f"{resource_path(resource_type)}/_search",
                data={"_id": ",".join(ids[start:start + 100]), "_elements": "id", "_count": "1000"})
            for entry in (reply.body or {}).get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    current[str(resource.get("id"))] = str((resource.get("meta") or {}).get("versionId"))
        for item in items:
            now = current.get(item.resource_id)
            if item.last == "DELETE":
                if now is not None:
                    changed.append((item.key, f"deleted by the migration, now at version {now}"))
            elif now is None:
                changed.append((item.key, "deleted since"))
            elif item.version and now != item.version:
                changed.append((item.key, f"at version {now}, the migration left version {item.version}"))
    return changed


def _writes(ctx: ScriptContext, chunk: list[Revert]) -> list[Write]:
    contents = _previous_contents(ctx, [r for r in chunk if r.first in ("UPDATE", "DELETE")])
    writes = []
    for item in chunk:
        if item.first == "CREATE":
            writes.append(Write("DELETE", item.resource_type, item.resource_id, version=item.version,
                                check_version=False))
            continue
        body = dict(contents[item.key], id=item.resource_id)
        # Profiles, tags and security labels are part of what is restored; the version is not.
        meta = {k: v for k, v in (body.get("meta") or {}).items()
                if k not in ("versionId", "lastUpdated", "source")}
        body.pop("meta", None)
        if meta:
            body["meta"] = meta
        still_there = item.last != "DELETE"
        writes.append(Write("PUT", item.resource_type, item.resource_id, body=body, version=item.version,
                            check_version=still_there))
    return writes


def _previous_contents(ctx: ScriptContext, items: list[Revert]) -> dict[str, dict[str, Any]]:
    """The versions to restore, read in one batch of version reads (vread) per bundle."""
    if not items:
        return {}
    missing = [i.key for i in items if not i.previous]
    if missing:
        raise UndoError(ctx.script.name if ctx.script else "?", ctx.revision or "?",
                        f"its Provenance does not say which version of {', '.join(missing[:5])} it "
                        "replaced.")
    entries = [{"request": {"method": "GET", "url": f"{resource_path(i.resource_type, i.resource_id)}"
                                                   f"/_history/{i.previous}"}} for i in items]
    reply = ctx.connection.request("POST", "", json={"resourceType": "Bundle", "type": "batch",
                                                     "entry": entries})
    answers = validated_results("batch", len(entries), reply.body or {}, reply.url)
    contents: dict[str, dict[str, Any]] = {}
    for item, answer in zip(items, answers, strict=True):
        resource = answer.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != item.resource_type:
            status = (answer.get("response") or {}).get("status", "?")
            raise UndoError(ctx.script.name if ctx.script else "?", ctx.revision or "?",
                            f"version {item.previous} of {item.key} cannot be read ({status}).")
        contents[item.key] = resource
    return contents


def _describe(item: Revert) -> tuple[str, str, Any]:
    if item.first == "CREATE":
        return "DELETE", item.key, None
    return "PUT", item.key, None
