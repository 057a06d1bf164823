"""Provenance for every write made through ctx: what it is, how it is found again.

Each write (create, update, delete, patch) made through `ctx` is a target of a FHIR R4
`Provenance`, written in the same transaction as the write wherever the version the write will
produce is known in advance (a version-aware update of version n produces n+1; a create, the
first version): then a resource is never written without its record, even if the process is
killed at any moment. One Provenance covers the writes of one bundle that share an activity
(CREATE, UPDATE, DELETE), so a bundle of 100 updates costs one extra entry, not 100.

What one carries:

* `target`: version-specific references (`Patient/123/_history/4`), each with the extension
  `resulting-version` (the version the write produced) and, for updates and deletes,
  `previous-version` (the version it replaced: what `ctx.undo()` restores). Servers that strip
  versions from stored references (HAPI's default, unless `Provenance.target` is listed in
  its ParserOptions `dontStripVersionsFromReferencesAtPaths`) keep the extensions;
* `entity` (role `revision`): the replaced versions, as FHIR's Provenance page describes;
* `recorded`, `activity` (v3-DataOperation CREATE/UPDATE/DELETE), `policy` (the migration);
* `agent`: the person who ran it (author) and the tool (performer), by display;
* `meta.tag`: the attempt id and the migration's revision, so that one search
  (`Provenance?_tag=...|<attempt>`) finds everything an attempt wrote, and `target` finds who
  wrote a resource (`Provenance?target=Patient/123`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .clock import isoformat, utcnow
from .fhir.client import FhirConnection
from .fhir.paging import search_entries
from .redaction import printable
from .version import __version__

BASE = "http://fhir.migration.system/"
ATTEMPT_TAG = BASE + "migration-attempt"
REVISION_TAG = BASE + "migration-revision"
RESULTING_VERSION = BASE + "StructureDefinition/resulting-version"
PREVIOUS_VERSION = BASE + "StructureDefinition/previous-version"
POLICY = BASE + "migration/"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
ACTIVITY_DISPLAY = {"CREATE": "create", "UPDATE": "revise", "DELETE": "delete"}
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
LOOKUP_CHUNK = 100  # references per search (a POST _search: no URL length limit)


@dataclass(frozen=True)
class Target:
    """One write as its Provenance records it."""

    resource_type: str
    resource_id: str
    version: str | None  # the version the write produced (None: not known)
    previous: str | None = None  # the version it replaced (updates, deletes)

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    def reference(self) -> dict[str, Any]:
        ref = self.key + (f"/_history/{self.version}" if self.version else "")
        extensions = []
        if self.version:
            extensions.append({"url": RESULTING_VERSION, "valueString": self.version})
        if self.previous:
            extensions.append({"url": PREVIOUS_VERSION, "valueString": self.previous})
        return {"reference": ref, **({"extension": extensions} if extensions else {})}


@dataclass(frozen=True)
class Writer:
    """Who writes: the attempt, the migration, and the agents named in every Provenance."""

    attempt: str
    revision: str
    name: str
    person: str
    command: str

    def provenance(self, activity: str, targets: Sequence[Target], *,
                   target_refs: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The Provenance for `targets` (`target_refs` overrides their references, e.g. the
        urn:uuid of a resource created in the same transaction)."""
        refs = list(target_refs) if target_refs is not None else [t.reference() for t in targets]
        resource: dict[str, Any] = {
            "resourceType": "Provenance",
            "meta": {"tag": [
                {"system": ATTEMPT_TAG, "code": self.attempt},
                {"system": REVISION_TAG, "code": self.revision},
            ]},
            "text": {"status": "generated", "div": (
                '<div xmlns="http://www.w3.org/1999/xhtml">'
                f"{len(refs)} resource(s): {ACTIVITY_DISPLAY[activity]} by FHIR data migration "
                f"{_xml(self.name)} ({self.revision})</div>")},
            "target": refs,
            "recorded": isoformat(utcnow()),
            "policy": [POLICY + self.revision],
            "activity": {"coding": [{"system": DATA_OPERATION, "code": activity,
                                     "display": ACTIVITY_DISPLAY[activity]}]},
            "agent": [
                {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author",
                                      "display": "Author"}]},
                 "who": {"display": self.person}},
                {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "performer",
                                      "display": "Performer"}]},
                 "who": {"display": f"django-fhir-migrations {__version__} ({self.command})"}},
            ],
        }
        replaced = [t for t in targets if t.previous]
        if replaced:
            resource["entity"] = [{"role": "revision",
                                   "what": {"reference": f"{t.key}/_history/{t.previous}"}}
                                  for t in replaced]
        return resource


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- reading back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One Provenance of ours, read back: what it says was written, and when."""

    id: str
    activity: str
    recorded: str
    attempt: str
    targets: tuple[Target, ...]


def parse(resource: dict[str, Any]) -> Recorded | None:
    """A Provenance we wrote, or None for anything else (defensively: it is server data)."""
    if resource.get("resourceType") != "Provenance":
        return None
    tags = (resource.get("meta") or {}).get("tag") or []
    attempt = next((t.get("code") for t in tags if isinstance(t, dict) and t.get("system") == ATTEMPT_TAG),
                   None)
    codings = ((resource.get("activity") or {}).get("coding") or [])
    activity = next((c.get("code") for c in codings if isinstance(c, dict)
                     and c.get("system") == DATA_OPERATION), None)
    if not isinstance(attempt, str) or activity not in ACTIVITY_DISPLAY:
        return None
    targets = []
    for ref in resource.get("target") or []:
        target = _target(ref)
        if target is not None:
            targets.append(target)
    return Recorded(id=printable(resource.get("id") or "", 64), activity=activity,
                    recorded=str(resource.get("recorded") or ""), attempt=attempt,
                    targets=tuple(targets))


def _target(ref: Any) -> Target | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    parts = ref["reference"].split("/")
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
        return None
    extensions = {e.get("url"): e.get("valueString") for e in ref.get("extension") or []
                  if isinstance(e, dict)}
    version = extensions.get(RESULTING_VERSION) or (parts[3] if len(parts) == 4 else None)
    previous = extensions.get(PREVIOUS_VERSION)
    return Target(parts[0], parts[1], version if isinstance(version, str) else None,
                  previous if isinstance(previous, str) else None)


def _tag_values(attempts: Iterable[str]) -> str:
    return ",".join(f"{ATTEMPT_TAG}|{a}" for a in attempts)


def recorded_by(connection: FhirConnection, attempts: Sequence[str]) -> Iterator[Recorded]:
    """Every Provenance the attempts wrote, oldest first (paged, constant memory)."""
    if not attempts:
        return
    query = {"_tag": _tag_values(attempts), "_sort": "_lastUpdated", "_count": 200}
    for entry in search_entries(connection, "Provenance", query, read_ahead=False):
        found = parse(entry.get("resource") or {})
        if found is not None:
            yield found


def already_written(connection: FhirConnection, attempts: Sequence[str], keys: Iterable[str]) -> set[str]:
    """Which of `keys` ("Type/id") the attempts wrote (a target of one of their Provenance)."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    if not attempts or not wanted:
        return found
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start:start + LOOKUP_CHUNK]
        reply = connection.request(
            "POST", "Provenance/_search",
            data={"_tag": _tag_values(attempts), "target": ",".join(chunk),
                  "_count": str(LOOKUP_CHUNK)})
        entries = (reply.body or {}).get("entry") or []
        chunk_set = set(chunk)
        for entry in entries:
            record = parse(entry.get("resource") or {}) if isinstance(entry, dict) else None
            if record is not None:
                found.update(t.key for t in record.targets if t.key in chunk_set)
        # More Provenances than fit on one page can only mean many writes of the same
        # resources (each counted once above); page on to be exact.
        links = (reply.body or {}).get("link") or []
        next_url = next((link.get("url") for link in links if isinstance(link, dict)
                         and link.get("relation") == "next"), None)
        if next_url:
            for entry in search_entries(connection, next_url, None, read_ahead=False):
                record = parse(entry.get("resource") or {})
                if record is not None:
                    found.update(t.key for t in record.targets if t.key in chunk_set)
    return found
