"""The reference ways of doing the benchmark's migration, with plain `requests` only.

(a) naive: one request per resource, read then version-aware PUT, the way a first script does
it; (c) ceiling: batch bundles built by hand from the search pages before the clock starts, then
POSTed one after the other (only the POSTs are timed), no tool code at all; (d) sequential: a
careful client that searches and POSTs on the clock, one page then its bundle, then the next
page. The tool's ways (b, e, p, f) run in `tool_run.py`. All add `<new_system>|<id>` to every
Patient of their set.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from django_fhir_migrations.engine.provenance import Target, Writer
from django_fhir_migrations.engine.signing import Signer

from .cpu import CpuSplit
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
    cpu: dict[str, float] | None = None  # where the CPU went (benchmarks/cpu.py CpuSplit), if measured
    calls: dict[str, int] | None = None  # the tool's requests by "METHOD what" (tool_run._kind)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds > 0 else 0.0


def combined(way: str, *timings: Timing) -> Timing:
    """Several runs of one way as one: total Patients over total time."""
    splits = [CpuSplit.from_dict(t.cpu) for t in timings if t.cpu]
    cpu = sum(splits[1:], splits[0]).as_dict() if len(splits) == len(timings) and splits else None
    return Timing(way, sum(t.resources for t in timings), sum(t.seconds for t in timings),
                  sum(t.requests for t in timings), sum(t.cpu_seconds for t in timings),
                  f"{len(timings)} runs", cpu)


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


def page_bundle(page: dict, new_system: str, kind: str = "batch") -> dict | None:
    """One search page turned into a bundle of version-aware PUTs that add the identifier."""
    entries = []
    for entry in page.get("entry", []):
        patient = entry["resource"]
        version = patient["meta"]["versionId"]
        entries.append({
            "resource": add_identifier(patient, new_system),
            "request": {"method": "PUT", "url": f"Patient/{patient['id']}", "ifMatch": f'W/"{version}"'},
        })
    return {"resourceType": "Bundle", "type": kind, "entry": entries} if entries else None


def sequential(server: PlainServer, patient_set: PatientSet, size: int,
               headers: dict[str, str] | None = None, label: str = "") -> Timing:
    """(d) A careful sequential client, all on the clock: search a page, POST a batch bundle of
    that page's updates (with `headers`: the tool's X-Transaction-Semantics), then the next page.

    What a competent hand-written script does without the tool: one keep-alive session, bundles,
    version-aware updates, no overlap of searching and writing, no Provenance.
    """
    # thread_time: this thread is the whole client (a proxy may run on other threads meanwhile)
    started, cpu_started = time.perf_counter(), time.thread_time()
    before = server.requests
    changed = bundles = 0
    page = server.get("Patient", identifier=f"{patient_set.tag_system}|", _count=size)
    while True:
        bundle = page_bundle(page, patient_set.new_system)
        if bundle:
            failed = failures(server.post_bundle(bundle, headers))
            if failed:
                raise BenchError(f"sequential way: {len(failed)} of {len(bundle['entry'])} updates failed, "
                                 f"first: {failed[0]}")
            changed += len(bundle["entry"])
            bundles += 1
        next_url = next_link(page)
        if not next_url:
            break
        page = server.get(next_url)
    return Timing("d", changed, time.perf_counter() - started, server.requests - before,
                  time.thread_time() - cpu_started, f"{bundles} pages + {bundles} batch bundles, in turn{label}")


def prebuilt_bundles(server: PlainServer, patient_set: PatientSet, size: int,
                     kind: str = "batch", provenance: bool = False) -> list[dict]:
    """Search pages turned into bundles of version-aware PUTs, one bundle per page (untimed).

    provenance: what the tool sends with PROVENANCE on (its default): a transaction of the PUTs
    and one Provenance entry naming the versions they will produce, built by the engine's own
    Provenance writer."""
    bundles = []
    bundle_page = server.get("Patient", identifier=f"{patient_set.tag_system}|", _count=size)
    while True:
        bundle = page_bundle(bundle_page, patient_set.new_system, "transaction" if provenance else kind)
        if bundle and provenance:
            bundle["entry"].append(provenance_entry(bundle, patient_set))
        if bundle:
            bundles.append(bundle)
        next_url = next_link(bundle_page)
        if not next_url:
            return bundles
        bundle_page = server.get(next_url)


def provenance_entry(bundle: dict, patient_set: PatientSet) -> dict:
    """The Provenance entry the tool adds to a bundle of version-aware updates."""
    writer = Writer(attempt=uuid.uuid4().hex, revision=f"bench{patient_set.name}", name="ceiling",
                    person="benchmark", command="fhirmigrate",
                    signer=Signer(["benchmark-only-signing-key"]))
    targets = []
    for entry in bundle["entry"]:
        version = entry["request"]["ifMatch"][3:-1]  # W/"n"
        targets.append(Target("Patient", entry["resource"]["id"], str(int(version) + 1), previous=version))
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": writer.provenance("UPDATE", targets),
            "request": {"method": "POST", "url": "Provenance"}}


def ceiling(server: PlainServer, patient_set: PatientSet, size: int, kind: str = "batch",
            headers: dict[str, str] | None = None, label: str = "", provenance: bool = False) -> Timing:
    """(c) Bundles built before the clock starts, then POSTed one after the other.

    Only the POSTs are timed: the server's own speed at these bundles, with no search and no
    tool code. `headers` go with every POST (the tool's X-Transaction-Semantics, for one);
    `provenance`: the bundles the tool sends with PROVENANCE on (see prebuilt_bundles).
    """
    prepared = time.perf_counter()
    bundles = prebuilt_bundles(server, patient_set, size, kind, provenance)
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
        changed += sum(1 for e in bundle["entry"] if e["request"]["method"] == "PUT")
    seconds = time.perf_counter() - started
    return Timing("c", changed, seconds, server.requests - before, time.process_time() - cpu_started,
                  f"{len(bundles)} pre-built {'transaction + Provenance' if provenance else kind} "
                  f"bundles{label}, POSTs timed "
                  f"(built from search pages beforehand in {prepared:.1f}s)")


def bulk_job(server: PlainServer, patient_set: PatientSet, batch_size: int | None, poll: float = 1.0) -> Timing:
    """HAPI's $hapi.fhir.bulk-patch started and polled by hand (no tool code, no Provenance):
    the same FHIRPath Patch as the tool's bulk_patch rows, with `batchSize` when given, polled
    every `poll` seconds as the tool polls."""
    patch = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "identifier"},
        {"name": "value", "valueIdentifier": {"system": patient_set.new_system, "value": "bulk"}}]}]}
    parameters = [{"name": "patch", "resource": patch},
                  {"name": "url", "valueString": f"Patient?identifier={patient_set.tag_system}|"}]
    if batch_size:
        parameters.append({"name": "batchSize", "valueInteger": batch_size})
    started, cpu_started = time.perf_counter(), time.thread_time()
    reply = server.session.post(server.url("$hapi.fhir.bulk-patch"), timeout=server.timeout,
                                data=json.dumps({"resourceType": "Parameters", "parameter": parameters}),
                                headers={"Content-Type": FHIR_JSON, "Prefer": "respond-async"})
    requests = 1
    status_url = reply.headers.get("Content-Location", "")
    if reply.status_code != 202 or not status_url:
        raise BenchError(f"bulk patch kick-off answered {reply.status_code}: {reply.text[:300]}")
    while True:
        time.sleep(poll)
        reply = server.session.get(status_url, timeout=server.timeout)
        requests += 1
        if reply.status_code == 202:
            continue
        response = ((reply.json().get("entry") or [{}])[0].get("response") or {}) if reply.status_code == 200 else {}
        if not str(response.get("status", "")).startswith("2"):
            raise BenchError(f"bulk patch job failed ({reply.status_code}): {reply.text[:500]}")
        break
    server.requests += requests
    return Timing("fhand", patient_set.size, time.perf_counter() - started, requests, time.thread_time() - cpu_started,
                  f"$hapi.fhir.bulk-patch by hand, batchSize {batch_size or 'HAPI default'}, polled every {poll:g} s")
