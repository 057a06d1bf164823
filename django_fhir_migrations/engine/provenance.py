"""Provenance for every write made through ctx: what it is, how it is found again and trusted.

Each write (create, update, delete, patch) made through `ctx` is a target of a FHIR R4
`Provenance`, written in the same transaction as the write wherever the version the write will
produce is known in advance (a version-aware update of version n produces n+1; a create, the
first version): then a resource is never written without its record, even if the process is
killed at any moment. One Provenance covers the writes of one bundle that share an activity
(CREATE, UPDATE, DELETE), so a bundle of 100 updates costs one extra entry, not 100.

What one carries:

* `target`: version-specific references (`Patient/123/_history/4`); a created one is
  `Patient/123` (committed in the transaction that creates it, whose placeholder cannot carry a
  version) with the extension `create-key`: its type and idempotency key
  (`Patient?identifier=s|v`);
* the extension `target-versions`: for each target in order, `previous>resulting`, the
  version the write replaced (what `ctx.undo()` restores; empty for a create) and the one it
  produced (`"3>4 7>8 >1"`). One extension for the whole record, not two per target: servers
  that strip versions from stored references (HAPI's default, unless `Provenance.target` is
  listed in its ParserOptions `dontStripVersionsFromReferencesAtPaths`) keep it, and it costs
  the server little (two extensions on each of 100 targets tripled the cost of the record on
  Helios, benchmarks/README.md). Records written before it carry `resulting-version` and
  `previous-version` on each target instead; both forms are read;
* `recorded`, `activity` (v3-DataOperation CREATE/UPDATE/DELETE), `policy` (the migration);
* `agent`: the person who ran it (author) and the tool (performer), by display;
* `meta.tag`: the attempt id, the migration's revision and the direction (upgrade, or the
  downgrade's undo), so that one search (`Provenance?_tag=...|<attempt>`) finds everything an
  attempt wrote, and `target` finds who wrote a resource (`Provenance?target=Patient/123`);
* the extension `sequence`: its rank among the attempt's records (undo orders by it, not by
  the server's sort);
* `signature`: an HMAC (signing.py) over everything undo and resume read from it: attempt,
  revision, direction, sequence, activity and each target (type, id, versions; for a created
  target its key instead of its id, which the server assigns inside the transaction).

Trust (DESIGN, "Trust"): a record is acted on only when its signature verifies. A created
target's id is not covered by the signature, so it is trusted only once it is *bound*: the
resource at that id is the one the signed key names (`bound_creates`: the version the create
produced carries the key's identifier, or the key's search finds it). So a forged copy of a
genuine record, pointed at other resources, changes nothing.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .clock import isoformat, utcnow
from .fhir.client import FhirConnection, resource_path
from .fhir.paging import search_entries
from .redaction import printable
from .signing import Signer
from .version import __version__

BASE = "http://fhir.migration.system/"
ATTEMPT_TAG = BASE + "migration-attempt"
REVISION_TAG = BASE + "migration-revision"
DIRECTION_TAG = BASE + "migration-direction"
RESULTING_VERSION = BASE + "StructureDefinition/resulting-version"  # per target: read, no longer written
PREVIOUS_VERSION = BASE + "StructureDefinition/previous-version"  # per target: read, no longer written
TARGET_VERSIONS = BASE + "StructureDefinition/target-versions"
CREATE_KEY = BASE + "StructureDefinition/create-key"
SEQUENCE = BASE + "StructureDefinition/provenance-sequence"
POLICY = BASE + "migration/"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
ACTIVITY_DISPLAY = {"CREATE": "create", "UPDATE": "revise", "DELETE": "delete"}
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14",
                  "display": "Source Signature"}
SIGNED_BY = "django-fhir-migrations (HMAC-SHA256 over attempt, activity and targets)"
SIGNED_FORM = "django-fhir-migrations/provenance/1"
LOOKUP_CHUNK = 100  # references per search (a POST _search: no URL length limit)
DIRECTIONS = ("upgrade", "downgrade")


@dataclass(frozen=True)
class Target:
    """One write as its Provenance records it."""

    resource_type: str
    resource_id: str
    version: str | None  # the version the write produced (None: not known)
    previous: str | None = None  # the version it replaced (updates, deletes)
    key: str | None = None  # a create's idempotency key, as "Type?query"

    @property
    def ref(self) -> str:
        """"Type/id": how resume and undo name a resource."""
        return f"{self.resource_type}/{self.resource_id}"

    def reference(self) -> dict[str, Any]:
        """The target reference: version-specific where the version is known; a create's key
        rides on it (its versions go in the record's `target-versions`)."""
        ref = self.ref + (f"/_history/{self.version}" if self.version else "")
        key = [{"url": CREATE_KEY, "valueString": self.key}] if self.key else []
        return {"reference": ref, **({"extension": key} if key else {})}

    @property
    def versions(self) -> str:
        """Its part of `target-versions`: `previous>resulting` (either may be empty)."""
        return f"{self.previous or ''}>{self.version or ''}"


@dataclass
class Writer:
    """Who writes: the attempt, the migration, the agents named in every Provenance, and the
    key that signs them."""

    attempt: str
    revision: str
    name: str
    person: str
    command: str
    signer: Signer
    direction: str = "upgrade"
    _sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def provenance(self, activity: str, targets: Sequence[Target], *,
                   target_refs: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The signed Provenance for `targets` (`target_refs` overrides their references, e.g.
        the urn:uuid of a resource created in the same transaction)."""
        refs = list(target_refs) if target_refs is not None else [t.reference() for t in targets]
        with self._mutex:
            sequence = next(self._sequence)
        resource: dict[str, Any] = {
            "resourceType": "Provenance",
            "meta": {"tag": [
                {"system": ATTEMPT_TAG, "code": self.attempt},
                {"system": REVISION_TAG, "code": self.revision},
                {"system": DIRECTION_TAG, "code": self.direction},
            ]},
            "extension": [{"url": SEQUENCE, "valueInteger": sequence},
                          {"url": TARGET_VERSIONS, "valueString": " ".join(t.versions for t in targets)}],
            "text": {"status": "generated", "div": (
                '<div xmlns="http://www.w3.org/1999/xhtml">'
                f"{len(refs)} resource(s): {ACTIVITY_DISPLAY[activity]} by FHIR data migration "
                f"{_xml(self.name)} ({self.revision}){' (undo)' if self.direction == 'downgrade' else ''}"
                "</div>")},
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
        # No `entity` naming the replaced versions: `previous-version` on each target already
        # says it, and on HAPI those 100 more references per bundle cost the server about a
        # third of the bundle's work (benchmarks/README.md, server cost).
        self.seal(resource)
        return resource

    def retarget(self, resource: dict[str, Any], targets: Sequence[Target]) -> None:
        """Point `resource` at `targets` (their references and versions) and sign it again:
        a record rewritten after its transaction resolved the ids it could not know."""
        resource["target"] = [t.reference() for t in targets]
        resource["extension"] = [e for e in resource.get("extension") or [] if e.get("url") != TARGET_VERSIONS]
        resource["extension"].append({"url": TARGET_VERSIONS, "valueString": " ".join(t.versions for t in targets)})
        self.seal(resource)

    def seal(self, resource: dict[str, Any]) -> None:
        """(Re)sign `resource` over what it says now (after its targets were rewritten)."""
        message = signed_content(resource)
        if message is None:
            raise ValueError("a Provenance without the facts its signature covers")
        resource["signature"] = [{"type": [SIGNATURE_TYPE], "when": resource["recorded"],
                                  "who": {"display": SIGNED_BY},
                                  "data": self.signer.sign(message)}]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- what the signature covers -----------------------------------------------------------------


def _tag(resource: Mapping[str, Any], system: str) -> str | None:
    tags = (resource.get("meta") or {}).get("tag") if isinstance(resource.get("meta"), Mapping) else None
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, Mapping) and tag.get("system") == system and isinstance(tag.get("code"), str):
            return str(tag["code"])
    return None


def _extension(element: Mapping[str, Any], url: str, kind: str) -> Any:
    extensions = element.get("extension")
    for ext in extensions if isinstance(extensions, list) else []:
        if isinstance(ext, Mapping) and ext.get("url") == url:
            return ext.get(kind)
    return None


def _activity(resource: Mapping[str, Any]) -> str | None:
    codings = (resource.get("activity") or {}).get("coding") if isinstance(resource.get("activity"), Mapping) else None
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, Mapping) and coding.get("system") == DATA_OPERATION:
            code = coding.get("code")
            return code if code in ACTIVITY_DISPLAY else None
    return None


def _targets(resource: Mapping[str, Any]) -> list[Target | None] | None:
    """The record's targets, in order (None for one that cannot be read); None when its
    `target-versions` does not name one pair of versions per target (then it is not ours)."""
    given = resource.get("target")
    refs: list[Any] = given if isinstance(given, list) else []
    packed = _extension(resource, TARGET_VERSIONS, "valueString")
    if packed is None:
        return [_target(ref) for ref in refs]
    pairs = [p.split(">") for p in packed.split(" ")] if isinstance(packed, str) and packed else []
    if len(pairs) != len(refs) or not all(len(p) == 2 for p in pairs):
        return None
    return [_target(ref, (p[0], p[1])) for ref, p in zip(refs, pairs, strict=True)]


def _target(ref: Any, versions: tuple[str, str] | None = None) -> Target | None:
    """A target reference as written by Writer: `Type/id[/_history/v]`, or (in a transaction
    not yet resolved) a urn:uuid with a create-key. `versions`: (previous, resulting) from the
    record's `target-versions`; without it (records written before it) the target's own
    `resulting-version` / `previous-version` extensions, else the reference's `_history/v`."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("reference"), str):
        return None
    text = ref["reference"]
    if versions is not None:
        previous, version = (v or None for v in versions)
    else:
        version = _extension(ref, RESULTING_VERSION, "valueString")
        previous = _extension(ref, PREVIOUS_VERSION, "valueString")
    key = _extension(ref, CREATE_KEY, "valueString")
    key = key if isinstance(key, str) and "?" in key else None
    if text.startswith("urn:uuid:"):
        if key is None:
            return None
        resource_type, resource_id = key.partition("?")[0], ""
    else:
        parts = text.split("/")
        if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
            return None
        resource_type, resource_id = parts[0], parts[1]
        if not isinstance(version, str) and len(parts) == 4:
            version = parts[3]
    return Target(resource_type, resource_id, version if isinstance(version, str) else None,
                  previous if isinstance(previous, str) else None, key)


def signed_content(resource: Mapping[str, Any]) -> bytes | None:
    """The bytes the signature covers, from the record itself (the same code signs and
    verifies); None when it lacks a part (then it is not ours)."""
    attempt, revision = _tag(resource, ATTEMPT_TAG), _tag(resource, REVISION_TAG)
    direction, activity = _tag(resource, DIRECTION_TAG), _activity(resource)
    sequence = _extension(resource, SEQUENCE, "valueInteger")
    if not attempt or not revision or direction not in DIRECTIONS or activity is None \
            or not isinstance(sequence, int) or isinstance(sequence, bool):
        return None
    found = _targets(resource)
    if found is None:
        return None
    targets = []
    for target in found:
        if target is None:
            return None
        if activity == "CREATE":
            # The server assigns a created resource's id inside the transaction: its key stands
            # for it here, and `bound_creates` ties the id to the key.
            targets.append([target.key or "", target.version or ""])
        else:
            targets.append([target.resource_type, target.resource_id, target.version or "",
                            target.previous or ""])
    content = [SIGNED_FORM, attempt, revision, direction, sequence, activity, targets]
    return json.dumps(content, separators=(",", ":"), ensure_ascii=True).encode()


def _signature(resource: Mapping[str, Any]) -> str | None:
    for signature in resource.get("signature") or []:
        if isinstance(signature, Mapping) and (signature.get("who") or {}).get("display") == SIGNED_BY \
                and isinstance(signature.get("data"), str):
            return str(signature["data"])
    return None


# --- reading back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One Provenance of ours, read back: what it says was written, and whether to trust it.

    `trusted`: its signature verifies with our key. `signed`: it carries one at all (records
    written before signatures existed do not)."""

    id: str
    activity: str
    recorded: str
    attempt: str
    targets: tuple[Target, ...]
    direction: str = "upgrade"
    sequence: int = 0
    signed: bool = False
    trusted: bool = False

    @property
    def label(self) -> str:
        return f"Provenance/{self.id}"


def parse(resource: Mapping[str, Any], signer: Signer | None) -> Recorded | None:
    """A Provenance that claims to be ours, or None for anything else (defensively: it is
    server data); `trusted` only when its signature verifies with `signer`'s keys."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Provenance":
        return None
    attempt, activity = _tag(resource, ATTEMPT_TAG), _activity(resource)
    if attempt is None or activity is None:
        return None
    targets = tuple(t for t in _targets(resource) or [_target(ref) for ref in resource.get("target") or []]
                    if t is not None)
    signature = _signature(resource)
    content = signed_content(resource) if signature else None
    trusted = bool(signer is not None and signature and content is not None
                   and signer.verify(content, signature))
    sequence = _extension(resource, SEQUENCE, "valueInteger")
    direction = _tag(resource, DIRECTION_TAG)
    return Recorded(id=printable(str(resource.get("id") or ""), 64), activity=activity,
                    recorded=printable(str(resource.get("recorded") or ""), 40), attempt=attempt,
                    targets=targets, direction=direction if direction in DIRECTIONS else "upgrade",
                    sequence=sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 0,
                    signed=signature is not None, trusted=trusted)


def recorded_by(connection: FhirConnection, attempts: Sequence[str], signer: Signer | None
                ) -> Iterator[Recorded]:
    """Every Provenance claiming to come from the attempts, attempt by attempt (paged, constant
    memory); one search per attempt, never a comma list, which some servers cannot search."""
    for attempt in attempts:
        query = {"_tag": f"{ATTEMPT_TAG}|{attempt}", "_count": 200}
        for entry in search_entries(connection, "Provenance", query, read_ahead=False):
            found = parse(entry.get("resource") or {}, signer)
            if found is not None and found.attempt == attempt:
                yield found


def recorded_for(connection: FhirConnection, revision: str, signer: Signer | None) -> Iterator[Recorded]:
    """Every Provenance claiming to come from any attempt of `revision` (paged)."""
    query = {"_tag": f"{REVISION_TAG}|{revision}", "_count": 200}
    for entry in search_entries(connection, "Provenance", query, read_ahead=False):
        found = parse(entry.get("resource") or {}, signer)
        if found is not None:
            yield found


def naming(connection: FhirConnection, attempts: Sequence[str], keys: Iterable[str],
           signer: Signer | None) -> Iterator[Recorded]:
    """The attempts' Provenance that name any of `keys` ("Type/id") as a target, by the
    standard `target` search (a comma list of references). Only as good as the server's search:
    `target_search_works` proves it first."""
    wanted = sorted(set(keys))
    for attempt in attempts:
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start:start + LOOKUP_CHUNK]
            query = {"_tag": f"{ATTEMPT_TAG}|{attempt}", "target": ",".join(chunk),
                     "_count": str(LOOKUP_CHUNK)}
            for entry in search_entries(connection, "Provenance/_search", None, read_ahead=False,
                                        form=query):
                found = parse(entry.get("resource") or {}, signer)
                if found is not None and found.attempt == attempt:
                    yield found


# --- binding created resources to their keys ----------------------------------------------------


def bound_creates(connection: FhirConnection, targets: Sequence[Target]) -> set[str]:
    """Which created targets ("Type/id") are the resource their signed key names.

    A key `identifier=system|value` is checked against the version the create produced (read
    from its history: later changes do not matter); any other key by running its search now.
    A target that is neither is not trusted: a forged copy of a genuine record could point it
    at any resource.
    """
    bound: set[str] = set()
    by_identifier: list[tuple[Target, str]] = []
    for target in targets:
        key_type, _, query = (target.key or "").partition("?")
        if not target.resource_id or key_type != target.resource_type or not query:
            continue
        name, _, value = query.partition("=")
        if name == "identifier" and "&" not in value and "," not in value and "|" in unquote(value) \
                and target.version:
            by_identifier.append((target, unquote(value)))
        else:
            reply = connection.get(f"{resource_path(target.resource_type)}?{query}",
                                   {"_elements": "id", "_count": 1000})
            ids = {str(e["resource"].get("id")) for e in (reply.body or {}).get("entry") or []
                   if isinstance(e, dict) and isinstance(e.get("resource"), dict)}
            if target.resource_id in ids:
                bound.add(target.ref)
    for start in range(0, len(by_identifier), LOOKUP_CHUNK):
        chunk = by_identifier[start:start + LOOKUP_CHUNK]
        versions = connection.read_many([(t.resource_type, t.resource_id, t.version) for t, _ in chunk])
        for (target, token), resource in zip(chunk, versions, strict=True):
            system, _, value = token.partition("|")
            if resource is not None and any(
                    isinstance(i, Mapping) and i.get("system") == system and i.get("value") == value
                    for i in resource.get("identifier") or []):
                bound.add(target.ref)
    return bound


__all__ = ["Recorded", "Target", "Writer", "bound_creates", "naming", "parse", "recorded_by",
           "recorded_for", "signed_content"]
