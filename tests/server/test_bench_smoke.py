"""The benchmark (benchmarks/run.py) runs end to end on a tiny N, and every way really migrates.

Correctness, not timing: the RESULT line has its format, the tool's request counts are what the
executor promises, and the server itself (asked here with plain HTTP, not through the benchmark)
holds exactly N migrated Patients for each way. The throughput rows, loading and the long
history run tiny (one pass, 5 migrations, 40 scripts once).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from ..support.helpers import REPO

RESULT = re.compile(
    r"RESULT batch_vs_naive=(\d+\.\d\d) batch_vs_ceiling=(\d+\.\d\d) "
    r"noop_requests=(\d+) requests_per_migration=(\d+) tool_vs_sequential=(\d+\.\d\d)"
)
N = 50


def offers_bulk_patch_job(fhir) -> bool:
    rest = fhir.get("metadata")["rest"][0]
    return any(op.get("name") == "hapi.fhir.bulk-patch" for op in rest.get("operation") or [])


def count(fhir, *identifiers: str) -> int:
    reply = fhir.http.get(fhir.url("Patient"), params={"identifier": list(identifiers), "_summary": "count"},
                          headers={"Accept": "application/fhir+json"}, timeout=60)
    reply.raise_for_status()
    return reply.json()["total"]


def delete_everything_of(fhir, figures: dict) -> None:
    for patient_set in figures.get("sets", []):
        for patient in fhir.search("Patient", identifier=f"{patient_set['tag_system']}|", _elements="id"):
            fhir.http.delete(fhir.url(f"Patient/{patient['id']}"), timeout=60)
    for state_id in figures.get("state_ids", []):
        for state in fhir.search("Basic", identifier=f"http://fhir.migration.system|{state_id}"):
            fhir.http.delete(fhir.url(f"Basic/{state['id']}"), timeout=60)


def test_benchmark_migrates_every_set_and_ends_with_the_result_line(fhir, tmp_path):
    figures_file = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "FHIR_MIGRATIONS_", "MIGRATION_"))}
    env.update(FHIR_BASE_URL=fhir.base_url, BENCH_N=str(N), BENCH_N_LARGE="0", BENCH_BUNDLE_SIZE="20",
               BENCH_EXTRA_SIZES="50", BENCH_GRAPH_SCRIPTS="40", BENCH_CLEANUP="0",
               BENCH_JSON=str(figures_file), BENCH_PASSES="1", BENCH_WORKERS="1,2", BENCH_DEFAULT_WORKERS="2",
               BENCH_HISTORY="5", BENCH_LOAD_SCRIPTS="40", BENCH_LOAD_ROUNDS="1",
               BENCH_CLINICIANS_N=str(N), BENCH_CLINICIANS_IDLE="2")
    result = subprocess.run([sys.executable, "benchmarks/run.py"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        last = result.stdout.rstrip("\n").splitlines()[-1]
        match = RESULT.fullmatch(last)
        assert match, f"last line is not the RESULT line: {last!r}"
        batch_vs_naive, batch_vs_ceiling = float(match[1]), float(match[2])
        noop, per_migration = int(match[3]), int(match[4])
        assert batch_vs_naive > 0 and batch_vs_ceiling > 0 and float(match[5]) > 0
        assert f"{figures['batch_vs_naive']:.2f}" == match[1]
        assert f"{figures['batch_vs_ceiling']:.2f}" == match[2]
        assert f"{figures['tool_vs_sequential']:.2f}" == match[5]
        assert figures["tool_vs_sequential"] == figures["ways"]["e2"]["rate"] / figures["ways"]["d"]["rate"]

        # Nothing pending: one read of the state. One trivial migration: the steps of the executor.
        assert noop == 1
        steps = dict(figures["requests"]["one_breakdown"])
        assert per_migration == sum(steps.values()) == len(figures["requests"]["one_calls"])
        for step in ("read the state", "take the lock", "record the migration and release the lock"):
            assert steps.get(step, 0) >= 1, steps
        # A migration creating one resource: at most 7 requests on a new state, 6 on an existing
        # one; one more where the server refuses the AuditEvent in the record's transaction (Helios:
        # 405, then the record alone).
        refused = 0 if fhir.keeps_audit_events else 1
        assert 0 < figures["requests"]["creating"] <= 7 + refused, figures["requests"]["creating_calls"]
        assert 0 < figures["requests"]["creating_next"] <= 6 + refused, figures["requests"]["creating_next_calls"]

        # Every way changed all N Patients of its own set, as the server (not the benchmark) counts.
        # The server-job rows exist where the server has the job (HAPI's $hapi.fhir.bulk-patch).
        job = offers_bulk_patch_job(fhir)
        throughput = ("d", "e1", "e2", "p1", "p2", *(("fjob",) if job else ()), "ffallback", "dproxy",
                      *(("fhand",) if job else ()))
        for way in ("a", "b1", "c1", "c2", "b2", "cplain", "b50", "c50", "bt", "ct", *throughput):
            assert figures["ways"][way]["resources"] == N, way
        assert figures["ways"]["b"]["resources"] == figures["ways"]["c"]["resources"] == 2 * N
        # bulk_patch took the server's job once, and behind the proxy patch bundles and no job.
        if job:
            assert figures["ways"]["fjob-1"]["calls"]["POST $hapi.fhir.bulk-patch"] == 1
        else:
            assert "fjob-1" not in figures["ways"] and "no server-job rows" in result.stdout
        assert "POST $hapi.fhir.bulk-patch" not in figures["ways"]["ffallback-1"]["calls"]
        assert figures["ways"]["ffallback-1"]["calls"]["POST bundle"] >= 1
        sets = {s["name"]: s for s in figures["sets"]}
        assert set(sets) == {"warmup", "a", "b", "c", "c2", "b2", "cplain", "b50", "c50", "bt", "ct",
                             *(f"{way}-1" for way in throughput)}
        for name, patient_set in sets.items():
            assert count(fhir, f"{patient_set['tag_system']}|") == N, name
            assert count(fhir, f"{patient_set['tag_system']}|", f"{patient_set['new_system']}|") == N, name
        # The traced (memory) run migrated set b a second time, with its own identifier.
        assert count(fhir, f"{sets['b']['tag_system']}:traced|") == N
        assert figures["memory"][0]["traced_peak_bytes"] > 0

        assert figures["graph"]["planned"] == 40
        assert figures["loading"][0]["listed"] == 40
        assert figures["history"]["migrations"] == 5 and figures["history"]["seconds"] > 0
        # The clinicians row: both migrations changed every Patient of their set (it checks),
        # and the clinicians were timed idle and during each.
        clinicians = figures["clinicians"]
        assert all(clinicians[k] > 0 for k in ("idle_p95", "unthrottled_p95", "adaptive_p95",
                                               "unthrottled_rate", "adaptive_rate"))
        assert "clinicians p50" in result.stdout and "goal: p95 with back-off / idle" in result.stdout
    finally:
        delete_everything_of(fhir, figures)


def test_the_ceiling_sends_what_ctx_batch_sends():
    from benchmarks.ways import TOOL_BATCH_HEADERS
    from django_fhir_migrations.engine.bundles import TRANSACTION_SEMANTICS_HEADER, TRY_AS_TRANSACTION_FIRST

    assert TOOL_BATCH_HEADERS == {TRANSACTION_SEMANTICS_HEADER: TRY_AS_TRANSACTION_FIRST}
