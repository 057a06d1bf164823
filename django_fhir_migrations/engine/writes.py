"""What a migration asks to write through ctx, and what became of it: plain values.

A `Write` is one create, update, delete or patch (a single ctx call or a bundle entry), as the
journal sends it (journal.py) and as resume, undo and messages name it (`Type/id`, never
anything from its body). A `Result` is the server's answer to one Write (or the journal's:
skipped, because an interrupted attempt wrote it; exists, a create whose key already finds a
resource). `failure_summary` groups failed results for a message; a `Failure` is a refused entry
a migration was allowed to leave behind (its failure budget).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import BundleError
from .fhir.client import resource_path

SKIPPED, EXISTS = "skipped", "exists"
INTERCEPTED = "intercepted"  # a dry run's answer: reported, not sent


@dataclass
class Write:
    """One write asked for through ctx (a single call or a bundle entry)."""

    method: str  # POST (create), PUT (update), DELETE, PATCH
    resource_type: str
    resource_id: str | None = None
    body: Any = None  # the resource; for PATCH the patch (a JSON Patch list or FHIRPath Parameters)
    version: str | None = None  # the version the script read: If-Match, and what Provenance replaces
    check_version: bool = True
    key: str | None = None  # creates: If-None-Exist query (the idempotency key)
    url: str | None = None  # a conditional URL (`Patient?identifier=...`), PROVENANCE off only
    full_url: str | None = None  # creates: the urn:uuid other entries' references use for it

    @property
    def activity(self) -> str:
        return {"POST": "CREATE", "DELETE": "DELETE"}.get(self.method, "UPDATE")

    @property
    def ref(self) -> str | None:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else None

    @property
    def label(self) -> str:
        """How a message names it: `Type/id` only, never anything from its body (not even the
        key of a create: an identifier can be a medical record number)."""
        return self.ref or f"{self.resource_type} (new)"

    def request(self) -> dict[str, Any]:
        url = self.url or (resource_path(self.resource_type, self.resource_id) if self.resource_id
                           else resource_path(self.resource_type))
        request: dict[str, Any] = {"method": self.method, "url": url}
        if self.method == "POST" and self.key:
            request["ifNoneExist"] = self.key
        if self.method in ("PUT", "PATCH", "DELETE") and self.check_version and self.version:
            request["ifMatch"] = f'W/"{self.version}"'
        return request

    def entry(self, full_url: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"request": self.request()}
        if full_url:
            entry["fullUrl"] = full_url
        if self.method == "PATCH":
            if isinstance(self.body, list):  # JSON Patch travels as a Binary in a bundle
                entry["resource"] = {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                     "data": base64.b64encode(json.dumps(self.body).encode()).decode()}
            else:
                entry["resource"] = self.body
        elif self.body is not None:
            entry["resource"] = self.body
        return entry


@dataclass
class Result:
    """What became of one Write."""

    write: Write
    status: str  # the server's ("201 Created", "412 ..."), or SKIPPED / EXISTS / INTERCEPTED
    diagnostics: str = ""
    location: str | None = None
    resource: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status in (SKIPPED, EXISTS, INTERCEPTED) or self.status[:1] in ("2", "3")

    @property
    def landed(self) -> bool:
        """On the server now: written, or found written already (not a dry run's)."""
        return self.ok and self.status != INTERCEPTED

    @property
    def code(self) -> str:
        return self.status.split(" ", 1)[0]


def update_of(data: dict[str, Any], *, check_version: bool = True) -> Write:
    """The Write that PUTs `data` (a resource with its id), If-Match its meta.versionId."""
    resource_path(data["resourceType"], data.get("id"))
    version = (data.get("meta") or {}).get("versionId")
    if check_version and not version:
        raise ValueError(
            f"{data['resourceType']}/{data.get('id')}: a version-aware update needs "
            "meta.versionId from a read; pass check_version=False to overwrite whatever is there"
        )
    return Write("PUT", data["resourceType"], data["id"], body=data,
                 version=version if isinstance(version, str) else None, check_version=check_version)


def create_key(write: Write) -> str | None:
    """A create's key as its Provenance target carries it: "Type?query"."""
    return f"{write.resource_type}?{write.key}" if write.key else None


def identifier_key(resource: Mapping[str, Any]) -> str | None:
    """The default idempotency key of a create: its first identifier with system and value."""
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, Mapping) and identifier.get("system") and identifier.get("value"):
            token = f"{identifier['system']}|{identifier['value']}"
            return "identifier=" + quote(token, safe="|:/")
    return None


# A reference in a server's message (HAPI-1094 "Resource Patient/p7 not found"): grouped as
# `Patient/…`, so that 300 entries failing for the same reason are one line, not 300.
REFERENCE = re.compile(r"\b([A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def failure_summary(results: Sequence[Result], *, examples: int = 3) -> list[tuple[str, int, str, list[str]]]:
    """Failed results grouped by (status, message): (status, count, message, first examples).

    Only `Type/id` (or `Type (new, key ...)`) names an entry: never a resource body.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for result in results:
        if not result.ok:
            message = REFERENCE.sub(r"\1/…", result.diagnostics[:300])
            groups.setdefault((result.code, message), []).append(result.write.label)
    return [(status, len(labels), message, labels[:examples])
            for (status, message), labels in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def bundle_error(kind: str, results: Sequence[Result], committed: int = 0, bundles: int = 0,
                 budget: str = "") -> BundleError:
    return BundleError(kind, failure_summary(results), committed=committed, bundles=bundles, budget=budget)


@dataclass(frozen=True)
class Failure:
    """A refused entry a migration was allowed to leave behind (its failure budget): `Type/id`,
    the server's status and its grouped message; never anything from the resource's body."""

    ref: str
    status: str
    message: str

    @classmethod
    def of(cls, result: Result) -> Failure:
        return cls(result.write.label, result.code, REFERENCE.sub(r"\1/…", result.diagnostics[:300]))
