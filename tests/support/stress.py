"""Stress: many rounds of concurrent or crashing `fhirmigrate` runs, checked with plain HTTP.

    python -m tests.stress --rounds 20 --processes 10     # FHIR_BASE_URL, or the local HAPI
    python -m tests.stress --crash --rounds 10            # kill -9 at random moments, then resume

Concurrency rounds: N processes started together on 5 unapplied migrations. Each round has its
own state id, scripts and identifier system; afterwards exactly 5 Patients exist, the state
lists 5 revisions once each, and every process exited 0 (or 3 with a lock-timeout message).

Crash rounds (--crash): a migration appends an identifier to each of --resources Patients
(bundles of 50; appending twice would show). `fhirmigrate` is killed with SIGKILL at a random
moment, up to --kills times, each time re-run after its lease expired; the last run finishes.
Afterwards every Patient is at version 2 with exactly one appended identifier, the migration
is recorded once and no interrupted attempt is left in the state.

Prints a summary for RELIABILITY.md and exits non-zero if any round broke a guarantee.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from .concurrency import RUNNER, run_together, write_creating_migrations
from .helpers import REPO, FhirNamespace

APPENDED = "urn:stress:appended"
APPEND = (
    'revision = "{revision}"\ndown_revision = None\n\n\n'
    "def upgrade(ctx):\n"
    "    with ctx.batch(size=50) as batch:\n"
    "        for p in ctx.search('Patient', identifier={system!r}, _count=50, as_dict=True):\n"
    "            p['identifier'].append({{'system': {appended!r}, 'value': p['id']}})\n"
    "            batch.update(p)\n\n\n"
    "def downgrade(ctx):\n    ctx.undo()\n"
)


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


def seed(fhir: FhirNamespace, count: int) -> None:
    for start in range(0, count, 200):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": f"s{i}"}]},
             "request": {"method": "POST", "url": "Patient"}} for i in range(start, min(count, start + 200))]}
        fhir.http.post(fhir.base_url, json=bundle, timeout=120,
                       headers={"Content-Type": "application/fhir+json"}).raise_for_status()


def crash_round(base_url: str, resources: int, kills: int) -> tuple[list[str], float, Counter]:
    token = uuid.uuid4().hex[:12]
    fhir = FhirNamespace(base_url, f"crash-{token}", f"urn:crash:{token}", requests.Session())
    seed(fhir, resources)
    problems: list[str] = []
    codes: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        revision = uuid.uuid4().hex
        Path(folder, "0001_append.py").write_text(APPEND.format(
            revision=revision, system=fhir.system + "|", appended=APPENDED))
        env = dict(os.environ, FHIR_BASE_URL=base_url, FHIR_MIGRATIONS_STATE_ID=fhir.state_id,
                   MIGRATION_SCRIPTS_DIR=folder, FHIR_MIGRATIONS_LOCK_TTL="5",
                   FHIR_MIGRATIONS_LOCK_TIMEOUT="60", DJANGO_SETTINGS_MODULE="tests.django_settings",
                   PYTHONPATH=str(REPO), START_AT="0")
        started = time.monotonic()
        for _ in range(kills):
            process = subprocess.Popen([sys.executable, "-c", RUNNER, "fhirmigrate"], env=env, cwd=REPO,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(random.uniform(0.8, 4.0))  # Django start-up included: from "before any write" on
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            codes[-9 if process.returncode == -signal.SIGKILL else process.returncode] += 1
        final = subprocess.run([sys.executable, "-c", RUNNER, "fhirmigrate"], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=600)
        codes[final.returncode] += 1
        elapsed = time.monotonic() - started
    if final.returncode != 0:
        problems.append(f"the last run exited {final.returncode}: {final.stderr.strip()[-500:]}")
    patients = fhir.patients()
    if len(patients) != resources:
        problems.append(f"{len(patients)} patients, expected {resources}")
    wrong = [p["id"] for p in patients if p["meta"]["versionId"] != "2"
             or sum(i.get("system") == APPENDED for i in p["identifier"]) != 1]
    if wrong:
        problems.append(f"{len(wrong)} patients not changed exactly once, e.g. {wrong[:3]}")
    if fhir.applied() != [revision]:
        problems.append(f"state lists {fhir.applied()}")
    state = fhir.state() or {}
    if any(e["url"].endswith("/migration-attempt") for e in state.get("extension", [])):
        problems.append("an interrupted attempt is still recorded")
    codes["appliers"] = 1
    fhir.cleanup()
    return problems, elapsed, codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--migrations", type=int, default=5)
    parser.add_argument("--crash", action="store_true", help="kill -9 rounds instead of concurrency")
    parser.add_argument("--resources", type=int, default=3000,
                        help="Patients per crash round: enough that a kill 0.8-4 s in lands mid-run")
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args(argv)
    base_url = os.environ.get("FHIR_BASE_URL")
    started_here = False
    if not base_url:
        from ..hapi import launcher

        started_here = launcher.start()
        base_url = launcher.base_url()
    failures = 0
    timings: list[float] = []
    totals: Counter = Counter()
    try:
        for index in range(1, args.rounds + 1):
            if args.crash:
                problems, elapsed, codes = crash_round(base_url, args.resources, args.kills)
            else:
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
            from ..hapi import launcher

            launcher.stop()
    shape = (f"{args.resources} resources x up to {args.kills} kills" if args.crash
             else f"{args.processes} processes x {args.migrations} migrations")
    print(f"\n{args.rounds} rounds x {shape}: "
          f"{args.rounds - failures} clean, {failures} broken; "
          f"exit codes {dict(sorted((k, v) for k, v in totals.items() if k != 'appliers'))}; "
          f"round time median {statistics.median(timings):.1f}s, max {max(timings):.1f}s")
    if args.crash:
        print(f"kills that landed while fhirmigrate ran: {totals[-9]} of {args.rounds * args.kills} "
              "(a kill after the run had finished counts as exit 0)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
