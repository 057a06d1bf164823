"""The clinicians row: what a long migration leaves of the server for everybody else.

A second process plays the clinicians: searches and reads at a steady rate (CLINICIAN_RATE per
second, alternating a search by identifier and a read by id over a set of its own Patients),
each timed. After one unmeasured migration (a freshly started server is still compiling), it
runs alone (idle), then while a BENCH_CLINICIANS_N-resource migration runs as a
whole `fhir-migrations migrate` process, with the adaptive back-off off and on
(ADAPTIVE_BACKOFF) in mirrored order (off, on, on, off; each on a fresh set, so a server
that warms up or slows down favours neither), then idle again. Printed: the clinicians' p50/p95 latency idle and during
each migration, and each migration's throughput. Goal: with the back-off, the clinicians' p95
stays within 2x idle while the migration keeps at least half its unthrottled throughput.

    python benchmarks/clinicians.py          # the local HAPI (on PostgreSQL), or FHIR_BASE_URL
    BENCH_CLINICIANS_N=2000 python benchmarks/clinicians.py
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.patients import PlainServer, synthetic_patients  # noqa: E402
from benchmarks.tool_run import SCRIPT  # noqa: E402

CLINICIAN_RATE = 10.0  # requests per second
CLINICIAN_PATIENTS = 200
IDLE_SECONDS = float(os.environ.get("BENCH_CLINICIANS_IDLE", "15"))  # the idle measurement
START_SECONDS = 10.0  # a run's start (the process, the first pages, the first bundles), shown apart
SIGNING_KEY = "benchmark-only-signing-key"
BACK_OFF_EVENTS = (" slow: ", "well again: ", "(429/503): ", "starting gently: ")  # engine/throttle.py's


@dataclass(frozen=True)
class Latencies:
    seconds: list[float]
    at: list[float] = field(default_factory=list)  # when each started, s after the clinicians did

    def within(self, start: float, end: float) -> Latencies:
        """The requests that started between `start` and `end` seconds in (one run's only: pooled
        latencies keep no start times, and zip's strict check says so)."""
        return Latencies([s for s, t in zip(self.seconds, self.at, strict=True) if start <= t < end])

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)


def clinicians(base_url: str, system: str, ids: list[str], done: Connection, rate: float) -> None:
    """The other users: one request every 1/rate s until told to stop; the latencies back."""
    session = requests.Session()
    session.headers["Accept"] = "application/fhir+json"
    latencies: list[float] = []
    started_at: list[float] = []
    interval = 1.0 / rate
    next_at = began = time.monotonic()
    number = 0
    while not done.poll():
        number += 1
        if number % 2:
            url, params = f"{base_url}/Patient", {"identifier": f"{system}|{number % len(ids)}", "_count": "10"}
        else:
            url, params = f"{base_url}/Patient/{ids[number % len(ids)]}", {}
        started = time.monotonic()
        started_at.append(started - began)
        try:
            session.get(url, params=params, timeout=60).raise_for_status()
        except requests.RequestException:
            latencies.append(60.0)  # a failed request counts as the slowest
        else:
            latencies.append(time.monotonic() - started)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    done.send((latencies, started_at))
    session.close()


class Clinicians:
    """Start, then stop and collect, the clinicians' process."""

    def __init__(self, base_url: str, system: str, ids: list[str]):
        self.mine, theirs = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=clinicians, args=(base_url, system, ids, theirs,
                                                                        CLINICIAN_RATE), daemon=True)

    def __enter__(self) -> Clinicians:
        self.process.start()
        return self

    def stop(self) -> Latencies:
        self.mine.send("stop")
        latencies, started_at = self.mine.recv()
        self.process.join(timeout=30)
        return Latencies(latencies, started_at)

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self.process.kill()


def seed(server: PlainServer, count: int, tag: str) -> None:
    server.load(synthetic_patients(count, tag))


def migrate(base_url: str, workdir: Path, tag: str, adaptive: bool) -> tuple[float, str, str]:
    """One whole `fhir-migrations migrate` over the set tagged `tag`: its seconds, its state
    id and the identifier system it added."""
    folder = workdir / f"scripts-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    revision = uuid.uuid4().hex
    (folder / "add_identifier.py").write_text(SCRIPT.format(
        revision=revision, tag_system=tag, new_system=f"urn:bench:clinicians:new:{revision[:8]}", kind="batch"))
    command = shutil.which("fhir-migrations", path=str(Path(sys.executable).parent)) or ""
    args = [command] if command else [sys.executable, "-m", "django_fhir_migrations"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FHIR_MIGRATIONS_", "MIGRATION_")) and k not in ("FHIR_BASE_URL",
                                                                                  "DJANGO_SETTINGS_MODULE")}
    env.update(FHIR_MIGRATIONS_SIGNING_KEY=SIGNING_KEY,
               FHIR_MIGRATIONS_ADAPTIVE_BACKOFF="true" if adaptive else "false")
    started = time.monotonic()
    state_id = f"bench-clinicians-{revision[:8]}"
    result = subprocess.run([*args, "migrate", "--base-url", base_url, "--scripts-dir", str(folder),
                             "--state-id", state_id, "--noinput"],
                            env=env, cwd=workdir, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"the migration failed (exit {result.returncode}): {result.stderr[-1500:]}")
    slowed = [line.strip() for line in result.stdout.splitlines() if any(e in line for e in BACK_OFF_EVENTS)]
    if slowed:
        print(f"    back-off: {len(slowed)} change(s), the last: {slowed[-1]}", flush=True)
    return seconds, state_id, f"urn:bench:clinicians:new:{revision[:8]}"


ORDER = ("unthrottled", "adaptive", "adaptive", "unthrottled")  # mirrored: drift cancels out


def measure(base_url: str, size: int) -> dict[str, float]:
    """Idle, then the migrations in ORDER (each on its own set), then idle again: each way's
    clinician latencies pooled over its two runs, its rate over both."""
    server = PlainServer(base_url)
    run = uuid.uuid4().hex[:8]
    clinician_tag = f"urn:bench:clinicians:{run}"
    print(f"Clinicians row: {size:,} resources per migration, clinicians at {CLINICIAN_RATE:g} requests/s "
          f"on {CLINICIAN_PATIENTS} Patients of their own, {base_url}; runs {', '.join(ORDER)}", flush=True)
    seed(server, CLINICIAN_PATIENTS, clinician_tag)
    ids = list(server.ids("Patient", 200, identifier=f"{clinician_tag}|"))
    sets = [f"urn:bench:clinicians:{run}:{number}" for number in range(len(ORDER))]
    for tag in sets:
        seed(server, size, tag)
    # A server started for this row alone is still compiling its hot paths: one migration
    # first, not measured, or the idle figure and the first run are the JIT's.
    warm_up = f"urn:bench:clinicians:{run}:warm-up"
    seed(server, size, warm_up)
    sets_to_delete = [warm_up, *sets]
    latencies: dict[str, list[float]] = {"idle": [], "unthrottled": [], "adaptive": []}
    seconds_by_way = {"unthrottled": 0.0, "adaptive": 0.0}
    states: list[str] = []

    def idle() -> None:
        with Clinicians(base_url, clinician_tag, ids) as quiet:
            time.sleep(IDLE_SECONDS / 2)
            latencies["idle"] += quiet.stop().seconds

    with tempfile.TemporaryDirectory(prefix="fhir-bench-clinicians-") as tmp:
        states.append(migrate(base_url, Path(tmp), warm_up, adaptive=False)[1])
        idle()
        for way, tag in zip(ORDER, sets, strict=True):
            with Clinicians(base_url, clinician_tag, ids) as busy:
                seconds, state_id, added = migrate(base_url, Path(tmp), tag, adaptive=way == "adaptive")
                during = busy.stop()
            states.append(state_id)
            migrated = server.count("Patient", identifier=f"{added}|")
            if migrated != size:
                raise RuntimeError(f"the {way} migration changed {migrated} of the {size} Patients")
            latencies[way] += during.seconds
            seconds_by_way[way] += seconds
            start, rest = during.within(0, START_SECONDS), during.within(START_SECONDS, float("inf"))
            print(f"  {way + ':':12} clinicians p50 {during.p50 * 1000:6.1f} ms  p95 {during.p95 * 1000:6.1f} ms "
                  f"(first {START_SECONDS:g} s {start.p95 * 1000:.1f}, after {rest.p95 * 1000:.1f}); "
                  f"migration {size / seconds:,.0f} resources/s in {seconds:.1f} s", flush=True)
        idle()
    figures: dict[str, float] = {}
    quiet = Latencies(latencies["idle"])
    figures.update(idle_p50=quiet.p50, idle_p95=quiet.p95)
    print(f"  idle (before and after): clinicians p50 {quiet.p50 * 1000:6.1f} ms  p95 {quiet.p95 * 1000:6.1f} ms "
          f"({len(quiet.seconds)} requests)", flush=True)
    for way in ("unthrottled", "adaptive"):
        pooled = Latencies(latencies[way])
        rate = 2 * size / seconds_by_way[way]
        figures.update({f"{way}_p50": pooled.p50, f"{way}_p95": pooled.p95, f"{way}_rate": rate})
        print(f"  {way + ' (both):':19} clinicians p50 {pooled.p50 * 1000:6.1f} ms  p95 {pooled.p95 * 1000:6.1f} ms "
              f"({pooled.p95 / quiet.p95:.2f} x idle); migration {rate:,.0f} resources/s", flush=True)
    figures["p95_vs_idle"] = figures["adaptive_p95"] / figures["idle_p95"]
    figures["unthrottled_p95_vs_idle"] = figures["unthrottled_p95"] / figures["idle_p95"]
    figures["throughput_kept"] = figures["adaptive_rate"] / figures["unthrottled_rate"]
    print(f"  goal: p95 with back-off / idle = {figures['p95_vs_idle']:.2f} (<= 2: "
          f"{'met' if figures['p95_vs_idle'] <= 2 else 'NOT met'}; without: "
          f"{figures['unthrottled_p95_vs_idle']:.2f}); throughput kept = {figures['throughput_kept']:.2f} "
          f"(>= 0.5: {'met' if figures['throughput_kept'] >= 0.5 else 'NOT met'})", flush=True)
    for tag in [clinician_tag, *sets_to_delete]:
        server.delete_all("Patient", identifier=f"{tag}|")
    for state_id in states:
        server.delete_all("Basic", identifier=f"http://fhir.migration.system|{state_id}")
    server.close()
    return figures


def main() -> int:
    from benchmarks.run import fhir_server

    size = int(os.environ.get("BENCH_CLINICIANS_N", "20000"))
    with fhir_server() as (base_url, _started):
        measure(base_url, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
