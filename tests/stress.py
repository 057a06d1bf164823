"""Stress: many rounds of N `fhirmigrate` processes started together on 5 unapplied migrations.

    python -m tests.stress --rounds 20 --processes 10     # FHIR_BASE_URL, or the local HAPI

Each round has its own state id, scripts and identifier system. After each round it checks,
with plain HTTP, that exactly 5 Patients exist, the state lists 5 revisions once each, and every
process exited 0 (or 3 with a lock-timeout message). Prints a summary for RELIABILITY.md and
exits non-zero if any round broke a guarantee.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from .concurrency import run_together, write_creating_migrations
from .helpers import FhirNamespace


def one_round(base_url: str, processes: int, migrations: int) -> tuple[list[str], float, Counter]:
    token = uuid.uuid4().hex[:12]
    fhir = FhirNamespace(base_url, f"stress-{token}", f"urn:stress:{token}", requests.Session())
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        revisions = write_creating_migrations(Path(folder), fhir.system, migrations)
        env = {
            "FHIR_BASE_URL": base_url, "FHIR_MIGRATIONS_STATE_ID": fhir.state_id,
            "MIGRATION_SCRIPTS_DIR": folder, "FHIR_MIGRATIONS_LOCK_TIMEOUT": "120",
            "FHIR_MIGRATIONS_LOCK_TTL": "10",
        }
        started = time.monotonic()
        results = run_together(processes, ["fhirmigrate"], env)
        elapsed = time.monotonic() - started
    codes = Counter(r.returncode for r in results)
    values = Counter(p["identifier"][0]["value"] for p in fhir.patients())
    if values != Counter(f"p{i}" for i in range(migrations)):
        problems.append(f"patients on the server: {dict(values)}")
    if fhir.applied() != revisions:
        problems.append(f"state lists {fhir.applied()}, expected {revisions}")
    appliers = sum("Applying" in r.stdout and "migration(s)" in r.stdout for r in results)
    for result in results:
        if result.returncode not in (0, 3) or "Traceback" in result.stderr:
            problems.append(f"exit {result.returncode}: {result.stderr.strip()[-500:]}")
        elif result.returncode == 3 and "Timed out" not in result.stderr:
            problems.append(f"exit 3 without a lock-timeout message: {result.stderr.strip()}")
    codes["appliers"] = appliers
    fhir.cleanup()
    return problems, elapsed, codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--migrations", type=int, default=5)
    args = parser.parse_args(argv)
    base_url = os.environ.get("FHIR_BASE_URL")
    started_here = False
    if not base_url:
        from .hapi import launcher

        started_here = launcher.start()
        base_url = launcher.base_url()
    failures = 0
    timings: list[float] = []
    totals: Counter = Counter()
    try:
        for index in range(1, args.rounds + 1):
            problems, elapsed, codes = one_round(base_url, args.processes, args.migrations)
            timings.append(elapsed)
            totals.update(codes)
            verdict = "ok" if not problems else "BROKEN"
            exits = dict(sorted((k, v) for k, v in codes.items() if k != "appliers"))
            print(f"round {index:3d}: {verdict} in {elapsed:5.1f}s, exits {exits}, "
                  f"processes that applied: {codes['appliers']}", flush=True)
            for problem in problems:
                print(f"    {problem}", flush=True)
            failures += bool(problems)
    finally:
        if started_here:
            from .hapi import launcher

            launcher.stop()
    print(f"\n{args.rounds} rounds x {args.processes} processes x {args.migrations} migrations: "
          f"{args.rounds - failures} clean, {failures} broken; "
          f"exit codes {dict(sorted((k, v) for k, v in totals.items() if k != 'appliers'))}; "
          f"round time median {statistics.median(timings):.1f}s, max {max(timings):.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
