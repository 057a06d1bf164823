"""Synthetic Patients from carebundle, loaded in batch bundles, counted and removed with plain HTTP.

Nothing here uses the tool: the benchmark must be able to check what each way did on the
server independently of the code under measurement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

FHIR_JSON = "application/fhir+json"
# Loading is set-up, not a measured way: big transaction bundles, which HAPI commits as one
# database transaction (a batch bundle costs about one transaction per entry there).
LOAD_BUNDLE_SIZE = 250


class BenchError(RuntimeError):
    """A benchmark step did not do what it should have; the message says which and why."""


@dataclass(frozen=True)
class PatientSet:
    """N Patients tagged with their own identifier system, and the system a way adds to them."""

    name: str
    tag_system: str
    new_system: str
    size: int


def synthetic_patients(count: int, tag_system: str, *, seed: int = 20261126) -> Iterator[dict[str, Any]]:
    """`count` US Core Patients from carebundle, each tagged `tag_system|<index>`.

    carebundle is deterministic for a seed; the tag keeps sets of different runs apart. The
    generator's own id is dropped: the server assigns ids on POST, as a real load would.
    """
    try:
        from carebundle import generate_patient, to_json
    except ImportError:
        raise BenchError(
            "the benchmark needs the synthetic data generator carebundle: "
            "pip install -e '.[bench]' (or make bench, which installs it)."
        ) from None
    for index in range(count):
        model = generate_patient(seed=seed, index=index, sex="FM"[index % 2], age_range=(18, 90))
        patient = json.loads(to_json(model, indent=None))
        patient.pop("id", None)
        patient.setdefault("identifier", []).append({"system": tag_system, "value": str(index)})
        yield patient


class PlainServer:
    """Plain `requests` against the FHIR base URL, one keep-alive session."""

    def __init__(self, base_url: str, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON})
        self.requests = 0  # every request sent, so each way can report its own count

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        self.requests += 1
        reply = self.session.get(self.url(path), params=params or None, timeout=self.timeout)
        if reply.status_code != 200:
            raise BenchError(f"GET {reply.url} answered {reply.status_code}: {reply.text[:300]}")
        return reply.json()

    def post_bundle(self, bundle: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        self.requests += 1
        reply = self.session.post(self.base_url, data=json.dumps(bundle), timeout=self.timeout,
                                  headers={"Content-Type": FHIR_JSON, **(headers or {})})
        if reply.status_code != 200:
            raise BenchError(f"POST of a {bundle['type']} bundle answered {reply.status_code}: "
                             f"{reply.text[:300]}")
        return reply.json()

    def count(self, resource_type: str, **params: Any) -> int:
        """How many resources match, as the server counts them (`_summary=count`)."""
        return int(self.get(resource_type, _summary="count", **params).get("total", -1))

    def ids(self, resource_type: str, page_size: int, **params: Any) -> Iterator[str]:
        """Ids of every match, page by page (`_elements=id` keeps the pages small)."""
        bundle = self.get(resource_type, _count=page_size, _elements="id", **params)
        while True:
            for entry in bundle.get("entry", []):
                yield entry["resource"]["id"]
            next_url = next_link(bundle)
            if not next_url:
                return
            bundle = self.get(next_url)

    def load(self, patients: Iterator[dict[str, Any]], bundle_size: int = LOAD_BUNDLE_SIZE) -> int:
        """POST the patients in transaction bundles; every entry must come back 201."""
        created = 0
        chunk: list[dict[str, Any]] = []
        for patient in patients:
            chunk.append(patient)
            if len(chunk) >= bundle_size:
                created += self._create(chunk)
                chunk = []
        if chunk:
            created += self._create(chunk)
        return created

    def _create(self, chunk: list[dict[str, Any]]) -> int:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": p} for p in chunk
        ]}
        response = self.post_bundle(bundle)
        failed = failures(response)
        if len(response.get("entry", [])) != len(chunk):
            failed.append(f"{len(response.get('entry', []))} entries answered")
        if failed:
            raise BenchError(f"loading Patients: {len(failed)} of {len(chunk)} creates failed, "
                             f"first: {failed[0]}")
        return len(chunk)

    def delete_all(self, resource_type: str, **params: Any) -> int:
        """Delete every match in batch bundles of DELETE entries (clean-up after a run)."""
        ids = list(self.ids(resource_type, 500, **params))
        for start in range(0, len(ids), 500):
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "DELETE", "url": f"{resource_type}/{rid}"}}
                for rid in ids[start:start + 500]
            ]}
            self.post_bundle(bundle)
        return len(ids)


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)


def failures(response: dict[str, Any]) -> list[str]:
    """The entries of a batch-response bundle whose status is not 2xx, as 'status: text'."""
    failed = []
    for entry in response.get("entry", []):
        status = str((entry.get("response") or {}).get("status", ""))
        if not status.startswith("2"):
            outcome = (entry.get("response") or {}).get("outcome") or {}
            text = "; ".join(i.get("diagnostics", "") for i in outcome.get("issue", []))
            failed.append(f"{status}: {text[:200]}")
    return failed


def add_identifier(patient: dict[str, Any], system: str) -> dict[str, Any]:
    """The migration every way performs: add `system|<id>` to the Patient's identifiers."""
    patient.setdefault("identifier", []).append({"system": system, "value": patient["id"]})
    return patient


def verify_migrated(server: PlainServer, patient_set: PatientSet, way: str) -> int:
    """Raise unless exactly the set's N Patients carry the new identifier; return that count."""
    tagged = server.count("Patient", identifier=f"{patient_set.tag_system}|")
    migrated = server.count("Patient", identifier=f"{patient_set.new_system}|")
    both = server.count("Patient", identifier=[f"{patient_set.tag_system}|", f"{patient_set.new_system}|"])
    if not (tagged == migrated == both == patient_set.size):
        raise BenchError(
            f"way {way} did not do its work: of the set's {patient_set.size} Patients the server "
            f"holds {tagged}, {migrated} carry the new identifier {patient_set.new_system}, "
            f"{both} carry both. The figures of this run are not valid."
        )
    return migrated


# The tool tags each Provenance with its migration's revision (README "Large migrations").
REVISION_TAG = "http://fhir.migration.system/migration-revision"


def provenance_targets(server: PlainServer, revision: str) -> set[str]:
    """Every `Type/id` named as a target by a Provenance tagged with `revision` (plain HTTP)."""
    found: set[str] = set()
    bundle = server.get("Provenance", _tag=f"{REVISION_TAG}|{revision}", _elements="target", _count=500)
    while True:
        for entry in bundle.get("entry", []):
            for target in entry["resource"].get("target", []):
                parts = str(target.get("reference", "")).split("/")
                found.add("/".join(parts[:2]))
        next_url = next_link(bundle)
        if not next_url:
            return found
        bundle = server.get(next_url)


def verify_provenance(server: PlainServer, patient_set: PatientSet, revision: str, expected: bool,
                      way: str) -> int:
    """Raise unless the set's N Patients are the targets of the migration's Provenance (or, with
    `expected` False, unless there is none); return the number of targets found."""
    targets = provenance_targets(server, revision)
    if not expected:
        if targets:
            raise BenchError(f"way {way} ran with PROVENANCE off but {len(targets)} resources are "
                             "targets of its Provenance.")
        return 0
    ids = set(server.ids("Patient", 1000, identifier=f"{patient_set.tag_system}|"))
    named = {t.split("/", 1)[1] for t in targets if t.startswith("Patient/")}
    if named != ids:
        raise BenchError(f"way {way}: of the set's {len(ids)} Patients {len(ids & named)} are targets of "
                         f"the migration's Provenance ({len(named - ids)} other targets). The figures of "
                         "this run are not valid.")
    return len(named)
