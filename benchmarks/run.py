"""The benchmark: one data migration (add an identifier to every Patient) done three ways.

    make bench                       # N from BENCH_N (default 5,000), the local HAPI
    BENCH_N=50 BENCH_N_LARGE=0 python benchmarks/run.py

(a) naive: one GET and one PUT per Patient with plain requests; (b) the tool: a real migration
script using ctx.search + ctx.batch, applied by Project.migrate (what `fhirmigrate` calls) in a
child process with its own STATE_ID; (c) the ceiling: batch bundles built by hand from the search
pages before the clock starts, POSTed with plain requests and the same X-Transaction-Semantics
header ctx.batch sends, only the POSTs timed (one more row sends them without the header). Each
way gets its own fresh set of N carebundle Patients, tagged with an identifier system unique to
this run, and the server is asked afterwards whether exactly those N Patients got the new
identifier. Then: peak memory of (b) at N and at
BENCH_N_LARGE, the tool's own HTTP requests (nothing pending; one trivial migration), and the
time to load and check BENCH_GRAPH_SCRIPTS chained scripts against compiling them.

Throughput (throughput.py): (d) a careful sequential client (search a page, POST its bundle,
next page, all on the clock), (e) the tool with WORKERS = each of BENCH_WORKERS, PROVENANCE on,
(p) the same with PROVENANCE off, (f) ctx.bulk_patch through the server's job and through patch
bundles; each run's CPU split (client, HAPI, PostgreSQL, the rest). Then `showmigrations
--offline` over BENCH_LOAD_SCRIPTS chained scripts as whole processes (graph_load.py), and
BENCH_HISTORY trivial migrations applied by one `fhir-migrations migrate` (history.py). Last,
the clinicians row (clinicians.py): a second process's reads and searches, timed idle and
while a BENCH_CLINICIANS_N-resource migration runs without and with ADAPTIVE_BACKOFF.

Speed is reported as ratios against baselines measured in the same run. The last line is

    RESULT batch_vs_naive=<x> batch_vs_ceiling=<y> noop_requests=<n> requests_per_migration=<m> tool_vs_sequential=<z>

Settings (environment): BENCH_N, BENCH_N_LARGE (default 10*N, 0 = skip; BENCH_SKIP_LARGE=1 too),
BENCH_BUNDLE_SIZE (page and bundle size of (b) and (c), default 100), BENCH_EXTRA_SIZES (more
rows of (b) and (c) at these sizes, default "500", empty = none), BENCH_TRANSACTIONS (default 1:
also rows of (b) with ctx.transaction() and (c) with transaction bundles), BENCH_GRAPH_SCRIPTS (default
2000), BENCH_CLEANUP (delete the run's Patients afterwards; default on unless the benchmark
started the server itself), BENCH_JSON (write every figure to this file), FHIR_BASE_URL (else
the local HAPI of tests/hapi, started here if nothing answers and stopped afterwards).
Throughput: BENCH_WORKERS (default "1,2,4"), BENCH_DEFAULT_WORKERS (the WORKERS of
tool_vs_sequential, default: the WORKERS the engine ships), BENCH_PASSES (default 2),
BENCH_PROVENANCE_OFF (default 1: the (p) rows), BENCH_BULK (default 1: the (f) rows),
BENCH_SERVER_PIDS (the server's pids, for the CPU split of a server not started by tests/hapi).
BENCH_LOAD_SCRIPTS (default "2000,20000"; empty skips), BENCH_LOAD_ROUNDS (default 5),
BENCH_HISTORY (default 2000; 0 skips), BENCH_CLINICIANS_N (default 20000; 0 skips).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from benchmarks import clinicians, graph_load, history, overhead  # noqa: E402
from benchmarks.config import Config, ConfigError  # noqa: E402
from benchmarks.cpu import ServerProcesses  # noqa: E402
from benchmarks.patients import BenchError, PatientSet, PlainServer, synthetic_patients, verify_migrated  # noqa: E402
from benchmarks.throughput import Throughput  # noqa: E402
from benchmarks.tool_run import ToolRun, run_tool, write_script  # noqa: E402
from benchmarks.ways import TOOL_BATCH_HEADERS, Timing, ceiling, combined, naive  # noqa: E402

SYSTEM_PREFIX = "urn:django-fhir-migrations:bench"
MIB = 1024 * 1024


# --- the server --------------------------------------------------------------------------------

@contextmanager
def fhir_server() -> Iterator[tuple[str, bool]]:
    """FHIR_BASE_URL if set; else the local HAPI, started (and afterwards stopped) if it is down."""
    given = os.environ.get("FHIR_BASE_URL", "").strip().rstrip("/")
    if given:
        try:
            reply = requests.get(f"{given}/metadata", timeout=30, headers={"Accept": "application/fhir+json"})
            ok = reply.status_code == 200 and '"CapabilityStatement"' in reply.text
        except requests.RequestException:
            ok = False
        if not ok:
            raise ConfigError(f"FHIR_BASE_URL={given!r} does not answer GET /metadata with a "
                              "CapabilityStatement. Start that server, or unset FHIR_BASE_URL to use "
                              "the local HAPI (tests/hapi).")
        yield given, False
        return
    from tests.hapi import launcher

    # The local HAPI on PostgreSQL, as production HAPI servers run (H2 scans a table per bundle;
    # README "Why H2 stops at about 3x"). HAPI_DB=h2 measures the test suite's in-memory H2.
    os.environ.setdefault("HAPI_DB", "postgres")
    os.environ.setdefault("HAPI_XMX", "4g")
    os.environ.setdefault("HAPI_JIT", "full")  # steady-state server speed, not start-up speed
    # The JVM's default collector (G1), as production runs it: the test server's serial one
    # stops every request while it collects, which is not what clinicians see (the clinicians row).
    os.environ.setdefault("HAPI_GC", "g1")
    try:
        started = launcher.start()
    except launcher.LauncherError as exc:
        raise ConfigError(f"could not start the local HAPI FHIR server: {exc}") from None
    try:
        yield launcher.base_url(), started
    finally:
        if started:
            launcher.stop()


def machine(base_url: str) -> dict[str, Any]:
    """Cores, RAM, CPU model, Python, Java and the FHIR server's software, for the record."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                            if line.startswith("model name")), platform.processor())
        meminfo = Path("/proc/meminfo").read_text().split()
        info["ram_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024, 1)
    except (OSError, ValueError, StopIteration):
        info.setdefault("cpu", platform.processor())
    java = shutil.which("java")
    if java:
        result = subprocess.run([java, "-version"], capture_output=True, text=True)
        info["java"] = (result.stderr or result.stdout).splitlines()[0] if (result.stderr or result.stdout) else "?"
    try:
        meta = requests.get(f"{base_url}/metadata", timeout=30, headers={"Accept": "application/fhir+json"}).json()
        software = meta.get("software") or {}
        info["server"] = f"{software.get('name', '?')} {software.get('version', '')} (FHIR {meta.get('fhirVersion')})"
        # The test server names its database here, e.g. "HAPI FHIR JPA test server (R4, PostgreSQL)".
        info["implementation"] = (meta.get("implementation") or {}).get("description", "?")
    except (requests.RequestException, ValueError):
        info["server"] = "?"
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


# --- the run ----------------------------------------------------------------------------------

class Benchmark:
    def __init__(self, config: Config, base_url: str, workdir: Path):
        self.config = config
        self.base_url = base_url
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:10]
        self.server = PlainServer(base_url)
        self.sets: list[PatientSet] = []
        self.state_ids: list[str] = []
        self.figures: dict[str, Any] = {"run_id": self.run_id, "config": {
            "n": config.n, "n_large": config.n_large, "bundle_size": config.size,
            "extra_sizes": list(config.extra_sizes), "transactions": config.transactions,
            "graph_scripts": config.graph_scripts, "workers": list(config.workers),
            "default_workers": config.default_workers, "passes": config.passes,
            "provenance_off": config.provenance_off, "bulk": config.bulk,
            "load_scripts": list(config.load_scripts), "load_rounds": config.load_rounds,
            "history": config.history}}

    def say(self, text: str) -> None:
        print(text, flush=True)

    # --- data ---

    def new_set(self, name: str, size: int) -> PatientSet:
        tag = f"{SYSTEM_PREFIX}:{self.run_id}:{name}"
        patient_set = PatientSet(name, tag, f"{tag}:new", size)
        started = time.perf_counter()
        created = self.server.load(synthetic_patients(size, tag))
        seconds = time.perf_counter() - started
        counted = self.server.count("Patient", identifier=f"{tag}|")
        if created != size or counted != size:
            raise BenchError(f"loading set {name}: created {created}, the server counts {counted}, "
                             f"expected {size}.")
        self.sets.append(patient_set)
        self.say(f"  loaded set {name}: {size} Patients in {seconds:.1f}s ({size / seconds:.0f}/s)")
        return patient_set

    # --- the ways ---

    def tool(self, patient_set: PatientSet, size: int, *, trace: bool = False, label: str = "",
             kind: str = "batch", workers: int | None = None, provenance: bool | None = None,
             base_url: str | None = None, server_pids: dict[str, list[int]] | None = None) -> ToolRun:
        state_id = f"bench-{self.run_id}-{patient_set.name}{label}"
        self.state_ids.append(state_id)
        folder = self.workdir / state_id
        revision = write_script(folder, patient_set.tag_system, patient_set.new_system, kind)
        result = run_tool(base_url or self.base_url, folder, state_id, size, trace=trace, workers=workers,
                          provenance=provenance, server_pids=server_pids)
        if result.applied != [revision]:
            raise BenchError(f"way b on set {patient_set.name}: fhirmigrate applied {result.applied}, "
                             f"expected the one script {revision}.")
        return result

    def tool_timing(self, patient_set: PatientSet, size: int, kind: str = "batch") -> Timing:
        run = self.tool(patient_set, size, kind=kind)
        return Timing("b", patient_set.size, run.seconds, run.requests, run.cpu_seconds,
                      "Project.migrate in a child process")

    def header(self) -> None:
        self.say(f"\n  {'way':<52} {'Patients':>8} {'seconds':>9} {'Patients/s':>11} {'requests':>9} "
                 f"{'client ms/Patient':>17}")

    def row(self, key: str, label: str, timing: Timing) -> Timing:
        cpu_ms = 1000 * timing.cpu_seconds / timing.resources if timing.resources else 0.0
        self.say(f"  {label:<52} {timing.resources:>8} {timing.seconds:>9.2f} {timing.rate:>11.1f} "
                 f"{timing.requests:>9} {cpu_ms:>17.3f}   {timing.detail}")
        self.figures.setdefault("ways", {})[key] = asdict(timing) | {"rate": timing.rate}
        return timing

    def run(self) -> str:
        cfg = self.config
        self.figures["machine"] = machine(self.base_url)
        m = self.figures["machine"]
        self.say(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM; "
                 f"Python {m['python']}; {m.get('java', 'no java on PATH')}; server {m['server']} at "
                 f"{self.base_url} [{m.get('implementation', '?')}]; load average {m.get('load_average')}")
        self.say(f"Run {self.run_id}: N={cfg.n}, bundle/page size {cfg.size}, extra sizes "
                 f"{list(cfg.extra_sizes) or 'none'}, large N {cfg.n_large or 'skipped'}")

        self.say("Loading fresh Patients from carebundle (transaction bundles of 250):")
        # N, like the measured sets: HAPI loads a search result in stages (about 500, 2,000,
        # then all), and a smaller warm-up set never reaches the later ones, so the first (b)
        # compiled them on its own clock (run 9: 16.8 s against 13.4 s for the second (b)).
        warmup = self.new_set("warmup", cfg.n)
        set_a, set_b1, set_c1, set_c2, set_b2, set_cp = (
            self.new_set(name, cfg.n) for name in ("a", "b", "c", "c2", "b2", "cplain"))
        extra_sets = {size: (self.new_set(f"b{size}", cfg.n), self.new_set(f"c{size}", cfg.n))
                      for size in cfg.extra_sizes}
        transaction_sets = (self.new_set("bt", cfg.n), self.new_set("ct", cfg.n)) if cfg.transactions else None
        throughput = Throughput(self)
        self.throughput = throughput
        throughput.load()

        # Warm the server's paths (JIT) before anything is timed: those of (c), then those of (b)
        # (paging while a bundle is written), each adding its own identifier to the warm-up set.
        ceiling(self.server, warmup, cfg.size, headers=TOOL_BATCH_HEADERS, provenance=True)
        verify_migrated(self.server, warmup, "warm-up")
        warm_b = PatientSet(warmup.name, warmup.tag_system, f"{warmup.tag_system}:warm-b", warmup.size)
        self.tool(warm_b, cfg.size, label="-warm")
        verify_migrated(self.server, warm_b, "warm-up of b")
        throughput.warm(warmup)

        self.header()
        a = self.row("a", "(a) naive: GET + PUT per Patient", naive(self.server, set_a, cfg.size))
        verify_migrated(self.server, set_a, "a")
        # (b) and (c) run in the order b c c b, each on its own set: the server slows down as its
        # database grows and other load comes and goes, and this order cancels a steady drift.
        b1 = self.row("b1", f"(b) fhirmigrate: ctx.search + ctx.batch ({cfg.size})", self.tool_timing(set_b1, cfg.size))
        verify_migrated(self.server, set_b1, "b")
        c1 = self.row("c1", f"(c) ceiling: the tool's bundles, pre-built ({cfg.size})",
                      ceiling(self.server, set_c1, cfg.size, headers=TOOL_BATCH_HEADERS, provenance=True))
        verify_migrated(self.server, set_c1, "c")
        c2 = self.row("c2", "(c) again, on its second set",
                      ceiling(self.server, set_c2, cfg.size, headers=TOOL_BATCH_HEADERS, provenance=True))
        verify_migrated(self.server, set_c2, "c (second set)")
        b2 = self.row("b2", "(b) again, on its second set", self.tool_timing(set_b2, cfg.size))
        verify_migrated(self.server, set_b2, "b (second set)")
        b = self.row("b", "(b) both runs", combined("b", b1, b2))
        c = self.row("c", "(c) both runs", combined("c", c1, c2))
        cp = self.row("cplain", "(c) batch, no header, no Provenance", ceiling(
            self.server, set_cp, cfg.size, label=" without the header (HAPI: a transaction per entry)"))
        verify_migrated(self.server, set_cp, "c without the header")
        self.say(f"  {'':<52} plain batch bundles (HAPI: a transaction per entry): c/c-plain = "
                 f"{c.rate / cp.rate:.2f}, b/c-plain = {b.rate / cp.rate:.2f}")
        for size, (set_bx, set_cx) in extra_sets.items():
            bx = self.row(f"b{size}", f"(b) fhirmigrate at bundle/page size {size}", self.tool_timing(set_bx, size))
            verify_migrated(self.server, set_bx, f"b at size {size}")
            cx = self.row(f"c{size}", f"(c) ceiling at bundle/page size {size}",
                          ceiling(self.server, set_cx, size, headers=TOOL_BATCH_HEADERS, provenance=True))
            verify_migrated(self.server, set_cx, f"c at size {size}")
            self.say(f"  {'':<52} at size {size}: b/c = {bx.rate / cx.rate:.2f} (one run each, b first)")
        if transaction_sets:
            set_bt, set_ct = transaction_sets
            bt = self.row("bt", f"(b) fhirmigrate, ctx.transaction() ({cfg.size})",
                          self.tool_timing(set_bt, cfg.size, kind="transaction"))
            verify_migrated(self.server, set_bt, "b with transactions")
            ct = self.row("ct", f"(c) transaction bundles without Provenance ({cfg.size})",
                          ceiling(self.server, set_ct, cfg.size, "transaction"))
            verify_migrated(self.server, set_ct, "c with transactions")
            self.say(f"  {'':<52} with transactions: b/c = {bt.rate / c.rate:.2f}, b/a = {bt.rate / a.rate:.2f}; "
                     f"Provenance at the server: c/ct = {c.rate / ct.rate:.2f}")

        batch_vs_naive = b.rate / a.rate
        batch_vs_ceiling = b.rate / c.rate
        self.figures["batch_vs_naive"] = batch_vs_naive
        self.figures["batch_vs_ceiling"] = batch_vs_ceiling
        self.say(f"\n  b/a = {batch_vs_naive:.2f} (goal >= 5: {_met(batch_vs_naive >= 5)}),  "
                 f"b/c = {batch_vs_ceiling:.2f} (goal >= 0.9: {_met(batch_vs_ceiling >= 0.9)})")

        tool_vs_sequential = throughput.run()
        throughput.close()

        self.memory(set_b1)
        noop, per_migration = self.requests_overhead()
        self.graph()
        self.loading()
        self.long_history()
        if cfg.clinicians:  # last: its migrations run beside requests of their own, nothing else
            self.say("")
            self.figures["clinicians"] = clinicians.measure(self.base_url, cfg.clinicians)
        self.figures["noop_requests"] = noop
        self.figures["requests_per_migration"] = per_migration
        self.figures["tool_vs_sequential"] = tool_vs_sequential
        return (f"RESULT batch_vs_naive={batch_vs_naive:.2f} batch_vs_ceiling={batch_vs_ceiling:.2f} "
                f"noop_requests={noop} requests_per_migration={per_migration} "
                f"tool_vs_sequential={tool_vs_sequential:.2f}")

    # --- memory ---

    def memory(self, set_b: PatientSet) -> None:
        """Peak memory of (b) at N and at N_large, each in its own child with tracemalloc on.

        At N the Patients of set b are migrated a second time (adding their own identifier), so
        the timed run of (b) above stays free of tracemalloc's slowdown.
        """
        cfg = self.config
        self.say(f"\nPeak memory of (b), fhirmigrate in a child process with tracemalloc on "
                 f"(page/bundle size {cfg.size}):")
        traced_b = PatientSet(set_b.name, set_b.tag_system, f"{set_b.tag_system}:traced", set_b.size)
        runs = [(cfg.n, self.tool(traced_b, cfg.size, trace=True, label="-traced"))]
        verify_migrated(self.server, traced_b, "b (memory run)")
        if cfg.n_large:
            self.say(f"  loading {cfg.n_large} Patients for the large run ...")
            set_l = self.new_set("large", cfg.n_large)
            runs.append((cfg.n_large, self.tool(set_l, cfg.size, trace=True)))
            verify_migrated(self.server, set_l, "b (large memory run)")
        memory = []
        for n, run in runs:
            assert run.traced_peak is not None
            self.say(f"  N={n:>7}: tracemalloc peak {run.traced_peak / MIB:6.2f} MiB; peak RSS (ru_maxrss) "
                     f"{run.maxrss_kib / 1024:6.1f} MiB; {n / run.seconds:.1f} Patients/s under tracemalloc, "
                     f"{run.requests} requests")
            memory.append({"n": n, "traced_peak_bytes": run.traced_peak, "maxrss_kib": run.maxrss_kib,
                           "seconds": run.seconds, "requests": run.requests})
        self.figures["memory"] = memory
        if len(runs) == 2:
            (_, small), (_, large) = runs
            assert small.traced_peak and large.traced_peak
            traced_ratio = large.traced_peak / small.traced_peak
            rss_ratio = large.maxrss_kib / small.maxrss_kib
            self.figures["peak_ratio"] = traced_ratio
            self.figures["maxrss_ratio"] = rss_ratio
            self.say(f"  peak(large)/peak(small) = {traced_ratio:.2f} by tracemalloc, {rss_ratio:.2f} by "
                     f"ru_maxrss (goal: flat, about 1: {_met(traced_ratio < 1.25 and rss_ratio < 1.25)})")
            if cfg.n < cfg.size:
                self.say(f"  (N={cfg.n} is below the page size {cfg.size}: its pages are not full, so its peak "
                         "is lower by that alone)")
        else:
            self.say("  large run skipped (BENCH_N_LARGE=0): no peak(large)/peak(small) ratio")

    # --- requests ---

    def requests_overhead(self) -> tuple[int, int]:
        found, state_ids = overhead.measure(self.base_url, self.workdir, self.run_id, self.server)
        self.state_ids += state_ids
        self.say("\nThe tool's own HTTP requests (manage.py fhirmigrate, counted by the connection's observers):")
        self.say(f"  nothing pending:              {len(found.noop)} ({found.noop.describe()}; goal 1: "
                 f"{_met(len(found.noop) == 1)})")
        self.say(f"  one trivial migration:        {len(found.one)} ({found.one.describe()})")
        self.say(f"  {found.several_count} trivial migrations, one run: {len(found.several)} "
                 f"({found.several.describe()})")
        per_extra = (len(found.several) - len(found.one)) / (found.several_count - 1)
        self.say(f"  so: {len(found.one) - per_extra:.0f} per run + {per_extra:.0f} per applied migration")
        self.say("  the requests of one trivial migration on a new state, in order:")
        for step, method, path, status in found.one.calls:
            self.say(f"    {method:<6} {path.split('?')[0][:60]:<60} {status}  ({step})")
        if found.next_one is not None:
            self.say(f"  one more trivial migration on that existing state: {len(found.next_one)} "
                     f"({found.next_one.describe()})")
            for step, method, path, status in found.next_one.calls:
                self.say(f"    {method:<6} {path.split('?')[0][:60]:<60} {status}  ({step})")
        for label, calls, goal in (("one migration creating one resource, new state", found.creating, 7),
                                   ("the same on the existing state", found.creating_next, 6)):
            if calls is None:
                continue
            self.say(f"  {label}: {len(calls)} (goal <= {goal}: {_met(len(calls) <= goal)}; {calls.describe()})")
            for step, method, path, status in calls.calls:
                self.say(f"    {method:<6} {path.split('?')[0][:60]:<60} {status}  ({step})")
        self.figures["requests"] = {
            "noop": len(found.noop), "noop_breakdown": found.noop.breakdown(),
            "one": len(found.one), "one_breakdown": found.one.breakdown(), "one_calls": found.one.calls,
            "several": len(found.several), "several_count": found.several_count,
            "next_one": len(found.next_one) if found.next_one else None,
            "next_one_calls": found.next_one.calls if found.next_one else None,
            "creating": len(found.creating) if found.creating else None,
            "creating_calls": found.creating.calls if found.creating else None,
            "creating_next": len(found.creating_next) if found.creating_next else None,
            "creating_next_calls": found.creating_next.calls if found.creating_next else None,
        }
        return len(found.noop), len(found.one)

    # --- the graph ---

    def graph(self) -> None:
        timing = graph_load.measure(self.workdir / "graph", self.config.graph_scripts)
        self.figures["graph"] = asdict(timing) | {"ratio": timing.ratio}
        self.say(f"\nLoading {timing.scripts} chained scripts (MigrationLoader.valid_graph + forwards_plan): "
                 f"{timing.load_seconds:.2f}s; read + compile() of the same files: "
                 f"{timing.compile_seconds:.2f}s; ratio {timing.ratio:.1f} (best of 3 rounds). Parts of the load, "
                 f"timed alone: the token checksums {timing.checksum_seconds:.2f}s, the graph (build, validate, "
                 f"plan) {timing.graph_seconds:.3f}s")

    # --- loading and a long history, as whole processes ---

    def loading(self) -> None:
        """`showmigrations --offline` over chains of BENCH_LOAD_SCRIPTS scripts, whole processes."""
        cfg = self.config
        if not cfg.load_scripts:
            self.say("\nLoading as whole processes: skipped (BENCH_LOAD_SCRIPTS is empty)")
            return
        self.say(f"\nLoading as whole processes (`python -m django_fhir_migrations showmigrations --offline`, "
                 f"medians of {cfg.load_rounds} runs after a warm-up):")
        found = []
        for count in cfg.load_scripts:
            timing = graph_load.measure_process(self.workdir / "loading", count, cfg.load_rounds)
            self.say(f"  {timing.describe()}")
            found.append(asdict(timing) | {"vs_start": timing.vs_start, "vs_compile": timing.vs_compile})
        self.figures["loading"] = found

    def long_history(self) -> None:
        count = self.config.history
        if not count:
            self.say("\nLong history: skipped (BENCH_HISTORY=0)")
            return
        state_id = f"bench-{self.run_id}-history"
        self.state_ids.append(state_id)
        self.say(f"\nLong history: {count} trivial migrations (upgrade is `pass`) applied by one "
                 f"`{' '.join(history.command()[-1:])} migrate` process, new state {state_id!r} ...")
        timing = history.measure(self.base_url, self.workdir, state_id, count, self.server,
                                 ServerProcesses.find(self.base_url))
        self.figures["history"] = asdict(timing) | {"per_migration": timing.per_migration,
                                                    "growth": timing.growth}
        self.say(f"  {timing.seconds:.1f} s in all (goal < 120 s for 2,000: "
                 f"{_met(timing.seconds < 120) if count == 2000 else 'n/a at this size'}), "
                 f"{1000 * timing.per_migration:.1f} ms per migration; the first migration was recorded "
                 f"{timing.first_ok_after:.1f} s after the start; last {timing.block} / first {timing.block} "
                 f"migrations: {timing.last_block_seconds:.2f} s / {timing.first_block_seconds:.2f} s = "
                 f"{timing.growth:.2f} (linear: about 1)")
        if timing.cpu:
            c = timing.cpu
            self.say(f"  cpu s: the process {c['client']:.1f}, HAPI {c['server']:.1f}, PostgreSQL {c['database']:.1f}, "
                     f"other {c['other']:.1f}")

    # --- clean-up ---

    def cleanup(self) -> None:
        started = time.perf_counter()
        removed = sum(self.server.delete_all("Patient", identifier=f"{s.tag_system}|") for s in self.sets)
        removed += self.server.delete_all("Patient", identifier=f"{overhead.creating_system(self.run_id)}|")
        for state_id in self.state_ids:
            self.server.delete_all("Basic", identifier=f"http://fhir.migration.system|{state_id}")
        self.say(f"Cleaned up: {removed} Patients and {len(self.state_ids)} state resources deleted in "
                 f"{time.perf_counter() - started:.0f}s.")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    try:
        config = Config.from_env()
        with fhir_server() as (base_url, started), tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp:
            bench = Benchmark(config, base_url, Path(tmp))
            try:
                result = bench.run()
            finally:
                if getattr(bench, "throughput", None) is not None:
                    bench.throughput.close()
                if config.cleanup if config.cleanup is not None else not started:
                    try:
                        bench.cleanup()
                    except (BenchError, requests.RequestException) as exc:
                        print(f"warning: clean-up failed: {exc}", file=sys.stderr)
                if config.json_path:
                    bench.figures["sets"] = [asdict(s) for s in bench.sets]
                    bench.figures["state_ids"] = bench.state_ids
                    config.json_path.write_text(json.dumps(bench.figures, indent=2, default=str))
                bench.server.close()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"benchmark failed: the FHIR server stopped answering ({type(exc).__name__}: {exc}).",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted.", file=sys.stderr)
        return 130
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
