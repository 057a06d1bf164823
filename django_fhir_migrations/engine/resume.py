"""Which resources the interrupted attempts of a migration already wrote: what a resumed run skips.

Exactly-once rests on this answer, so it rests on as little of the server as possible: the
index pages through the interrupted attempts' own Provenance (one `_tag` search per attempt,
the search undo relies on too) and matches targets itself, instead of asking the server which
records name a given resource (`Provenance?target=A,B` finds nothing on some servers, which
silently made a resumed run write everything twice). Only records whose signature verifies
count (provenance.py); a created target counts once it is bound to its signed key. Anything
else is ignored and named, so a forged record cannot make a run skip what it has not done.

Memory: one "Type/id" per resource written (with the version it was left at), up to
INDEX_LIMIT. Past that, the index asks the server per page after all, but only once a probe
has shown that the server's `target` search finds a record known to exist: first with a comma
list, else one reference per search (slow, and said so); a server that finds neither cannot
be resumed exactly, and the run stops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from .errors import FhirMigrationError
from .fhir.client import FhirConnection
from .provenance import Recorded, Target, bound_creates, naming, recorded_by
from .signing import Signer

logger = logging.getLogger("django_fhir_migrations")

INDEX_LIMIT = 1_000_000
SHOWN = 5
PROBE_DECOY = "Basic/django-fhir-migrations-probe"  # a reference no record names


class ResumeError(FhirMigrationError):
    """The server cannot tell which resources the interrupted attempts wrote."""


class ResumeIndex:
    """The resources `attempts` wrote (trusted records only). Built once, when the attempt
    that continues them starts; `found` is what it found, `ignored` what it would not trust."""

    def __init__(self, connection: FhirConnection, attempts: Sequence[str], signer: Signer):
        self.connection = connection
        self.attempts = tuple(attempts)
        self.signer = signer
        # "Type/id" -> the version the attempts left it at (the highest, when written twice);
        # None: too many to hold, ask the server per page.
        self.keys: dict[str, str] | None = {}
        self.found = 0
        self.ignored: list[str] = []  # the first few untrusted records or targets, by label
        self.ignored_count = 0
        self.per_reference = False  # the server's target search works one reference at a time
        self._sample: str | None = None  # a target known to be recorded (for the probe)
        if self.attempts:
            self._load()

    # --- building -----------------------------------------------------------------------------

    def _load(self) -> None:
        creates: list[Target] = []
        assert self.keys is not None
        for record in recorded_by(self.connection, self.attempts, self.signer):
            if not record.trusted:
                self._ignore(record.label)
                continue
            if self.keys is None:
                break  # past the limit: the server is asked page by page from now on
            for target in record.targets:
                if not target.resource_id:
                    continue
                if record.activity == "CREATE":
                    creates.append(target)
                    if len(creates) >= 100:
                        self._bind(creates)
                        creates = []
                elif self.keys is not None:
                    self._add(target.ref, target.version)
        if creates:
            self._bind(creates)
        if self.keys is not None:
            self.found = len(self.keys)

    def _add(self, ref: str, version: str | None) -> None:
        assert self.keys is not None
        self._sample = self._sample or ref
        self.keys[ref] = _later(self.keys.get(ref, ""), version or "")
        if len(self.keys) > INDEX_LIMIT:
            self.found += len(self.keys)
            self.keys = None
            self._choose_lookup()
            logger.warning("The interrupted attempts wrote more than %s resources: which ones is "
                           "asked of the server page by page%s.", f"{INDEX_LIMIT:,}",
                           " (one reference per search)" if self.per_reference else "")

    def _bind(self, creates: list[Target]) -> None:
        bound = bound_creates(self.connection, creates)
        for target in creates:
            if target.ref in bound:
                if self.keys is not None:
                    self._add(target.ref, target.version)
            else:
                self._ignore(f"{target.ref} (created, not the resource its signed key names)")

    def _ignore(self, label: str) -> None:
        self.ignored_count += 1
        if len(self.ignored) < SHOWN:
            self.ignored.append(label)

    def _choose_lookup(self) -> None:
        """Prove the server's `target` search before relying on it (see the module docstring)."""
        sample = self._sample
        assert sample is not None
        for per_reference in (False, True):
            keys = [sample] if per_reference else [sample, PROBE_DECOY]
            if any(sample in {t.ref for t in r.targets}
                   for r in naming(self.connection, self.attempts, keys, self.signer)):
                self.per_reference = per_reference
                return
        raise ResumeError(
            f"The interrupted attempts wrote more than {INDEX_LIMIT:,} resources, too many to "
            f"hold in memory, and the FHIR server's search Provenance?target={sample} does not "
            "find the record it has for that resource, so which resources were already written "
            "cannot be known. Nothing was written by this run.",
            "Resume it where the server answers that search (or in smaller migrations).",
        )

    # --- asking -------------------------------------------------------------------------------

    def written(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` ("Type/id") the attempts wrote."""
        wanted = set(keys)
        if not wanted:
            return set()
        if self.keys is not None:
            return {k for k in wanted if k in self.keys}
        return set(self._ask(wanted))

    def written_at(self, versions: Mapping[str, str]) -> set[str]:
        """Which of `versions` ("Type/id" -> version) the attempts left at that very version: a
        resource they wrote and something wrote again since (the same migration's next bulk
        job, say) is not among them."""
        if not versions:
            return set()
        if self.keys is not None:
            return {k for k, v in versions.items() if k in self.keys and self.keys[k] == v}
        left = self._ask(set(versions))
        return {k for k, v in versions.items() if k in left and left[k] == v}

    def _ask(self, wanted: set[str]) -> dict[str, str]:
        """Past INDEX_LIMIT: the records naming `wanted`, asked of the server."""
        found: dict[str, str] = {}
        creates: list[Target] = []
        chunks = [[k] for k in sorted(wanted)] if self.per_reference else [sorted(wanted)]
        for chunk in chunks:
            for record in naming(self.connection, self.attempts, chunk, self.signer):
                for target in self._trusted_targets(record, wanted, creates):
                    found[target.ref] = _later(found.get(target.ref, ""), target.version or "")
        if creates:
            bound = bound_creates(self.connection, creates)
            for target in creates:
                if target.ref in bound:
                    found[target.ref] = _later(found.get(target.ref, ""), target.version or "")
        return found

    def _trusted_targets(self, record: Recorded, wanted: set[str], creates: list[Target]) -> list[Target]:
        if not record.trusted:
            self._ignore(record.label)
            return []
        hits = [t for t in record.targets if t.ref in wanted]
        if record.activity == "CREATE":
            creates.extend(hits)
            return []
        return hits


def _later(known: str, version: str) -> str:
    """The later of two versions one resource was left at (numbers compared as numbers)."""
    if known.isdigit() and version.isdigit():
        return known if int(known) >= int(version) else version
    return version or known


__all__ = ["INDEX_LIMIT", "ResumeError", "ResumeIndex"]
