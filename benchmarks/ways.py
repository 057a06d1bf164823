"""The two reference ways of doing the benchmark's migration, with plain `requests` only.

(a) naive: one request per resource, read then version-aware PUT, the way a first script does
it; (c) ceiling: batch bundles built by hand from the search pages before the clock starts, then
POSTed one after the other (only the POSTs are timed), no tool code at all. The tool's way (b)
runs in `tool_run.py`. All three add `<new_system>|<id>` to every Patient of their set.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .patients import FHIR_JSON, BenchError, PatientSet, PlainServer, add_identifier, failures, next_link

# What ctx.batch() sends with every batch bundle (HAPI: commit it as one transaction if it can,
# else process it as a batch); (c) sends the same, so b and c put the same work on the server.
TOOL_BATCH_HEADERS = {"X-Transaction-Semantics": "retryCount=1; tryBatchAsTransactionFirst=true"}


@dataclass
class Timing:
    """What one way did: resources changed, wall seconds, HTTP requests it sent."""

    way: str
    resources: int
    seconds: float
    requests: int
    cpu_seconds: float  # the client's own CPU time: what the code under test costs, server aside
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds > 0 else 0.0


def naive(server: PlainServer, patient_set: PatientSet, page_size: int) -> Timing:
    """(a) Find the ids page by page, then GET and PUT (If-Match) each Patient on its own."""
    started, cpu_started = time.perf_counter(), time.process_time()
    before = server.requests
    ids = list(server.ids("Patient", page_size, identifier=f"{patient_set.tag_system}|"))
    for rid in ids:
        url = server.url(f"Patient/{rid}")
        server.requests += 2
        reply = server.session.get(url, timeout=server.timeout)
        if reply.status_code != 200:
            raise BenchError(f"naive way: GET {url} answered {reply.status_code}")
        patient = add_identifier(reply.json(), patient_set.new_system)
        version = patient["meta"]["versionId"]
        reply = server.session.put(url, data=json.dumps(patient), timeout=server.timeout,
                                   headers={"Content-Type": FHIR_JSON, "If-Match": f'W/"{version}"'})
        if reply.status_code != 200:
            raise BenchError(f"naive way: PUT {url} answered {reply.status_code}: {reply.text[:200]}")
    return Timing("a", len(ids), time.perf_counter() - started, server.requests - before,
                  time.process_time() - cpu_started,
                  "GET + PUT per Patient")


def prebuilt_bundles(server: PlainServer, patient_set: PatientSet, size: int,
                     kind: str = "batch") -> list[dict]:
    """Search pages turned into bundles of version-aware PUTs, one bundle per page (untimed)."""
    bundles = []
    bundle_page = server.get("Patient", identifier=f"{patient_set.tag_system}|", _count=size)
    while True:
        entries = []
        for entry in bundle_page.get("entry", []):
            patient = entry["resource"]
            version = patient["meta"]["versionId"]
            entries.append({
                "resource": add_identifier(patient, patient_set.new_system),
                "request": {"method": "PUT", "url": f"Patient/{patient['id']}",
                            "ifMatch": f'W/"{version}"'},
            })
        if entries:
            bundles.append({"resourceType": "Bundle", "type": kind, "entry": entries})
        next_url = next_link(bundle_page)
        if not next_url:
            return bundles
        bundle_page = server.get(next_url)


def ceiling(server: PlainServer, patient_set: PatientSet, size: int, kind: str = "batch",
            headers: dict[str, str] | None = None, label: str = "") -> Timing:
    """(c) Bundles built before the clock starts, then POSTed one after the other.

    Only the POSTs are timed: the server's own speed at these bundles, with no search and no
    tool code. `headers` go with every POST (the tool's X-Transaction-Semantics, for one).
    """
    prepared = time.perf_counter()
    bundles = prebuilt_bundles(server, patient_set, size, kind)
    prepared = time.perf_counter() - prepared
    started, cpu_started = time.perf_counter(), time.process_time()
    before = server.requests
    changed = 0
    for bundle in bundles:
        response = server.post_bundle(bundle, headers)
        failed = failures(response)
        if failed:
            raise BenchError(f"ceiling way: {len(failed)} of {len(bundle['entry'])} updates failed, "
                             f"first: {failed[0]}")
        changed += len(bundle["entry"])
    seconds = time.perf_counter() - started
    return Timing("c", changed, seconds, server.requests - before, time.process_time() - cpu_started,
                  f"{len(bundles)} pre-built {kind} bundles{label}, POSTs timed "
                  f"(built from search pages beforehand in {prepared:.1f}s)")
