"""Bulk patch at larger sizes: HAPI's `$hapi.fhir.bulk-patch` job against patch bundles.

    BENCH_BULK_SIZES=3000,30000 python benchmarks/bulk_sizes.py     # the local HAPI on PostgreSQL
    FHIR_BASE_URL=http://127.0.0.1:8085/fhir BENCH_BULK_SIZES=3000 python benchmarks/bulk_sizes.py

Where the default of `ctx.bulk_patch` comes from (patch bundles unless `server_job=True`): for each
size N in BENCH_BULK_SIZES, each way on its own fresh set of N Patients, with plain `requests` and
no Provenance on either side, so that only the server's two ways of doing the work are compared:

* bundles: search a page (`_elements=id`, page = bundle = 100), POST a batch bundle of that page's
  version-aware FHIRPath PATCH entries (with the X-Transaction-Semantics header ctx.batch sends),
  next page: what the tool's default sends, less its Provenance;
* job: the same FHIRPath Patch through the server's job, started and polled every second as the
  tool polls it, with HAPI's default batch size and with each of BENCH_BULK_BATCH_SIZES
  (default "1000": its chunk size, the parameter that made the job faster at 3,000).

Each row gives wall seconds, resources per second, the server's CPU per 1,000 resources (HAPI +
PostgreSQL, benchmarks/cpu.py) and the job against the bundles at that size. Every set is checked
afterwards: exactly its N Patients carry the new identifier. A size of 30,000 takes a while: the
job went at under 40 Patients/s there.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.config import ConfigError, _ints  # noqa: E402
from benchmarks.cpu import Meter, ServerProcesses  # noqa: E402
from benchmarks.patients import (  # noqa: E402
    BenchError,
    PatientSet,
    PlainServer,
    failures,
    next_link,
    synthetic_patients,
    verify_migrated,
)
from benchmarks.ways import TOOL_BATCH_HEADERS, Timing, bulk_job  # noqa: E402

PREFIX = "urn:django-fhir-migrations:bench-bulk"


def fhirpath_patch(system: str) -> dict:
    """The patch every way applies: add `system|bulk` to the Patient's identifiers."""
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "identifier"},
        {"name": "value", "valueIdentifier": {"system": system, "value": "bulk"}}]}]}


def patch_bundles(server: PlainServer, patient_set: PatientSet, size: int = 100) -> Timing:
    """Page by page, a batch bundle of version-aware FHIRPath PATCH entries (all on the clock)."""
    patch = fhirpath_patch(patient_set.new_system)
    started, cpu_started = time.perf_counter(), time.thread_time()
    before = server.requests
    changed = 0
    page = server.get("Patient", identifier=f"{patient_set.tag_system}|", _count=size, _elements="id")
    while True:
        entries = [{"resource": patch, "request": {
            "method": "PATCH", "url": f"Patient/{e['resource']['id']}",
            "ifMatch": f'W/"{e["resource"]["meta"]["versionId"]}"'}} for e in page.get("entry", [])]
        if entries:
            failed = failures(server.post_bundle({"resourceType": "Bundle", "type": "batch", "entry": entries},
                                                 TOOL_BATCH_HEADERS))
            if failed:
                raise BenchError(f"patch bundles: {len(failed)} of {len(entries)} patches failed, first: {failed[0]}")
            changed += len(entries)
        next_url = next_link(page)
        if not next_url:
            break
        page = server.get(next_url)
    return Timing("bundles", changed, time.perf_counter() - started, server.requests - before,
                  time.thread_time() - cpu_started, f"patch bundles of {size}")


def measure(base_url: str, sizes: tuple[int, ...], batch_sizes: tuple[int, ...], say=print) -> list[dict]:
    server = PlainServer(base_url, timeout=600)
    processes = ServerProcesses.find(base_url)
    run_id = uuid.uuid4().hex[:8]
    rows: list[dict] = []
    try:
        for n in sizes:
            say(f"\nN = {n:,} (server processes: {processes.describe()})")
            baseline = None
            for way in ["bundles", "job", *(f"job{b}" for b in batch_sizes)]:
                tag = f"{PREFIX}:{run_id}:{n}:{way}"
                patient_set = PatientSet(way, tag, f"{tag}:new", n)
                loaded = server.load(synthetic_patients(n, tag))
                if loaded != n:
                    raise BenchError(f"loading {n} Patients for {way}: {loaded} created")
                meter = Meter(processes)
                meter.start()
                if way == "bundles":
                    timing = patch_bundles(server, patient_set)
                else:
                    batch_size = int(way[3:]) if way != "job" else None
                    timing = bulk_job(server, patient_set, batch_size)
                split = meter.stop(timing.seconds, timing.cpu_seconds)
                verify_migrated(server, patient_set, f"bulk {way} at {n}")
                server_cpu = (split.server + split.database + split.database_background) if split else None
                baseline = baseline or timing.rate
                row = {"n": n, "way": way, "seconds": timing.seconds, "rate": timing.rate,
                       "requests": timing.requests, "vs_bundles": timing.rate / baseline,
                       "server_cpu_per_1000": 1000 * server_cpu / n if server_cpu is not None else None}
                rows.append(row)
                cost = f"{row['server_cpu_per_1000']:6.2f}" if server_cpu is not None else "     ?"
                say(f"  {way:<10} {timing.seconds:8.1f} s {timing.rate:8.1f}/s  x{row['vs_bundles']:5.2f} of the "
                    f"bundles  server CPU s/1000: {cost}  requests {timing.requests}  ({timing.detail})")
                server.delete_all("Patient", identifier=f"{tag}|")
    finally:
        server.close()
    return rows


def main() -> int:
    from benchmarks.run import fhir_server

    try:
        sizes = _ints(os.environ, "BENCH_BULK_SIZES", (3000, 30000), minimum=1)
        batch_sizes = _ints(os.environ, "BENCH_BULK_BATCH_SIZES", (1000,), minimum=1, empty=True)
        with fhir_server() as (base_url, _started):
            rows = measure(base_url, sizes, batch_sizes)
    except (BenchError, ConfigError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
