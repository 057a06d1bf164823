"""The two reference ways of doing the benchmark's migration, with plain `requests` only.

(a) naive: one request per resource, read then version-aware PUT, the way a first script does
it; (c) ceiling: hand-built batch bundles, one per search page, no tool code at all. The tool's
way (b) runs in `tool_run.py`. All three add `<new_system>|<id>` to every Patient of their set.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .patients import FHIR_JSON, BenchError, PatientSet, PlainServer, add_identifier, failures, next_link


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


def ceiling(server: PlainServer, patient_set: PatientSet, size: int, kind: str = "batch") -> Timing:
    """(c) GET a search page, turn it into a batch bundle of version-aware PUTs, POST it.

    With `kind` "transaction" the bundle is a transaction (the reference for ctx.transaction()).
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    posting = 0.0
    changed = 0
    before = server.requests
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
            posted = time.perf_counter()
            response = server.post_bundle({"resourceType": "Bundle", "type": kind, "entry": entries})
            posting += time.perf_counter() - posted
            failed = failures(response)
            if failed:
                raise BenchError(f"ceiling way: {len(failed)} of {len(entries)} updates failed, "
                                 f"first: {failed[0]}")
            changed += len(entries)
        next_url = next_link(bundle_page)
        if not next_url:
            break
        bundle_page = server.get(next_url)
    seconds = time.perf_counter() - started
    return Timing("c", changed, seconds, server.requests - before, time.process_time() - cpu_started,
                  f"search page + {kind} POST; the POSTs alone {posting:.1f}s "
                  f"({changed / posting if posting else 0:.0f}/s)")
