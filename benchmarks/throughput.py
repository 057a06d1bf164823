"""Throughput rows: the tool with several workers, with and without Provenance, and bulk_patch,
each against a careful sequential client measured in the same run.

* (d) sequential: plain `requests`, all on the clock: search a page, POST a batch bundle of that
  page's version-aware updates (with the X-Transaction-Semantics header the tool's PROVENANCE-off
  batches send), next page. No tool code, no Provenance (ways.sequential).
* (e) the tool: the migration script of (b), applied by Project.migrate in a child process
  (tool_run.py), PROVENANCE on (the default), with WORKERS = each of BENCH_WORKERS.
* (p) the same with PROVENANCE off, at each WORKERS: what Provenance costs.
* (f) ctx.bulk_patch adding the identifier to every Patient of the set: through the server's job
  ($hapi.fhir.bulk-patch, `server_job=True`) and as patch bundles (the default), the latter
  through a forwarding proxy (tests/support/hostile.py) whose /metadata hides the operation, so
  that no job can be started by mistake. The proxy costs something of its own, so (d) also runs
  through the same proxy once per pass. Both at the default WORKERS, PROVENANCE on (the job path
  needs it). One more row starts the same job by hand (plain requests, polled every second as
  the tool polls, no Provenance): the server's own time for the job, so fjob - fhand is what the
  tool adds to it. A server without
  the job (it is HAPI's own operation; Helios has none) has no fjob and fhand rows, and says so.
  (bulk_sizes.py compares the job with patch bundles at larger sizes.)
* Server cost: for (d), (e) and (p), the server's CPU seconds per 1,000 resources and against
  (d), the figure the tool controls where client and server share the cores.

Every row runs BENCH_PASSES times (default 2), each on a fresh set of N Patients, the second pass
in the reverse order of the first, so a steady drift of the server's speed (its database grows)
cancels out; a row's figure is total Patients / total time. Each run also records where the CPU
went (benchmarks/cpu.py): the client, HAPI's JVM, PostgreSQL, and the rest of the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .config import SHIPPED_WORKERS, Config
from .cpu import CpuSplit, Meter, ServerProcesses
from .patients import BenchError, PatientSet, PlainServer, verify_migrated, verify_provenance
from .tool_run import ToolRun
from .ways import TOOL_BATCH_HEADERS, Timing, bulk_job, combined, sequential

BULK_JOB = "POST $hapi.fhir.bulk-patch"
BULK_OPERATION = "hapi.fhir.bulk-patch"


def offers_bulk_job(server: PlainServer) -> bool:
    """Whether the CapabilityStatement lists HAPI's bulk patch job (HAPI only)."""
    rest = server.get("metadata").get("rest") or [{}]
    return any(op.get("name") == BULK_OPERATION for op in rest[0].get("operation") or [])


@dataclass(frozen=True)
class Slot:
    way: str  # d, e, p, fjob, ffallback, dproxy
    workers: int | None = None

    @property
    def key(self) -> str:
        return f"{self.way}{self.workers or ''}"

    def label(self, default_workers: int) -> str:
        if self.way == "d":
            return "(d) sequential: page, then its batch bundle"
        if self.way == "dproxy":
            return "(d) through the forwarding proxy"
        if self.way == "e":
            return f"(e) the tool, WORKERS={self.workers}, PROVENANCE on"
        if self.way == "p":
            return f"(p) the tool, WORKERS={self.workers}, PROVENANCE off"
        if self.way == "fhand":
            return "(f) the same server job by hand, no Provenance"
        if self.way == "fjob":
            return f"(f) bulk_patch(server_job=True) (WORKERS={default_workers})"
        return f"(f) bulk_patch, patch bundles (the default; WORKERS={default_workers})"


class Bench(Protocol):
    """What the rows need of the run (run.py's Benchmark): its server, sets, tool runs, output."""

    @property
    def config(self) -> Config: ...

    base_url: str
    server: PlainServer
    figures: dict[str, Any]

    def say(self, text: str) -> None: ...
    def new_set(self, name: str, size: int) -> PatientSet: ...
    def header(self) -> None: ...
    def row(self, key: str, label: str, timing: Timing) -> Timing: ...
    def tool(self, patient_set: PatientSet, size: int, *, trace: bool = False, label: str = "",
             kind: str = "batch", workers: int | None = None, provenance: bool | None = None,
             base_url: str | None = None, server_pids: dict[str, list[int]] | None = None) -> ToolRun: ...


class Throughput:
    def __init__(self, bench: Bench):
        self.bench = bench
        cfg = bench.config
        self.config = cfg
        self.processes = ServerProcesses.find(bench.base_url)
        self.slots = [Slot("d")] + [Slot("e", w) for w in cfg.workers]
        if cfg.provenance_off:
            self.slots += [Slot("p", w) for w in cfg.workers]
        self.job = cfg.bulk and offers_bulk_job(bench.server)
        if cfg.bulk and not self.job:
            bench.say(f"The server offers no ${BULK_OPERATION} (HAPI only): no server-job rows "
                      "(fjob, fhand); bulk_patch runs as patch bundles.")
        if cfg.bulk:
            self.slots += ([Slot("fjob")] if self.job else []) + [Slot("ffallback"), Slot("dproxy")]
            self.slots += [Slot("fhand")] if self.job else []
        self.sets: dict[tuple[int, Slot], PatientSet] = {}
        self.runs: dict[Slot, list[Timing]] = {slot: [] for slot in self.slots}
        self.proxy: Any = None

    # --- set-up ---

    def load(self) -> None:
        for number in range(self.config.passes):
            for slot in self.slots:
                self.sets[(number, slot)] = self.bench.new_set(f"{slot.key}-{number + 1}", self.config.n)

    def warm(self, warmup: PatientSet) -> None:
        """Warm the paths the earlier warm-up did not take: the bulk job where the server has
        one, else patch bundles (and the proxy)."""
        if not self.config.bulk:
            return
        self._start_proxy()
        warm = PatientSet(warmup.name, warmup.tag_system, f"{warmup.tag_system}:warm-bulk", warmup.size)
        self.bench.tool(warm, self.config.size, kind="bulk-job" if self.job else "bulk", label="-warm-bulk",
                        workers=self.config.default_workers)
        verify_migrated(self.bench.server, warm, "warm-up of bulk_patch")

    def _start_proxy(self) -> None:
        if self.proxy is not None:
            return
        from tests.support.hostile import HostileProxy, Rule

        def hide_bulk_patch(exchange: Any) -> None:
            statement = exchange.response_json()
            for rest in (statement or {}).get("rest", []):
                rest["operation"] = [op for op in rest.get("operation", [])
                                     if "bulk-patch" not in str(op.get("name", ""))]
            exchange.set_response_json(statement)

        self.proxy = HostileProxy(self.bench.base_url).add(
            Rule("GET", r"/metadata(\?|$)", after=hide_bulk_patch)).start()
        self.proxy_server = PlainServer(self.proxy.base_url)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy_server.close()
            self.proxy.stop()
            self.proxy = None

    # --- the runs ---

    def run(self) -> float:
        """Every slot, pass after pass (odd passes in reverse order); returns tool_vs_sequential."""
        bench, cfg = self.bench, self.config
        if cfg.bulk:
            self._start_proxy()
        bench.say(f"\nThroughput (N={cfg.n} per run, page/bundle size {cfg.size}, {cfg.passes} pass(es), "
                  f"the second in reverse order; server processes: {self.processes.describe()}):")
        bench.header()
        for number in range(cfg.passes):
            order = self.slots if number % 2 == 0 else list(reversed(self.slots))
            for slot in order:
                timing = self.one(slot, self.sets[(number, slot)])
                self.runs[slot].append(timing)
                bench.row(f"{slot.key}-{number + 1}", f"{slot.label(cfg.default_workers)}, pass {number + 1}", timing)
        bench.say("")

        rows: dict[Slot, Timing] = {}
        for slot in self.slots:
            rows[slot] = bench.row(slot.key, f"{slot.label(cfg.default_workers)}", combined(slot.way, *self.runs[slot]))
        return self.report(rows)

    def one(self, slot: Slot, patient_set: PatientSet) -> Timing:
        bench, cfg = self.bench, self.config
        if slot.way == "fhand":
            meter = Meter(self.processes)
            meter.start()
            timing = bulk_job(bench.server, patient_set, None)
            split = meter.stop(timing.seconds, timing.cpu_seconds)
            timing.cpu = split.as_dict() if split else None
            verify_migrated(bench.server, patient_set, slot.key)
            return timing
        if slot.way in ("d", "dproxy"):
            server = bench.server if slot.way == "d" else self.proxy_server
            meter = Meter(self.processes)
            meter.start()
            process_started = time.process_time()
            timing = sequential(server, patient_set, cfg.size, headers=TOOL_BATCH_HEADERS,
                                label="" if slot.way == "d" else ", through the proxy")
            helper = max(0.0, time.process_time() - process_started - timing.cpu_seconds)
            split = meter.stop(timing.seconds, timing.cpu_seconds, helper if slot.way == "dproxy" else 0.0)
            timing.cpu = split.as_dict() if split else None
            verify_migrated(bench.server, patient_set, slot.key)
            return timing
        provenance = slot.way != "p"
        workers = slot.workers if slot.workers is not None else cfg.default_workers
        kind = {"fjob": "bulk-job", "ffallback": "bulk"}.get(slot.way, "batch")
        base_url = self.proxy.base_url if slot.way == "ffallback" else None
        seen_before = len(self.proxy.requests("POST", r"bulk-patch")) if self.proxy else 0
        process_started = time.process_time()
        run = bench.tool(patient_set, cfg.size, kind=kind, workers=workers, provenance=provenance,
                         base_url=base_url, server_pids=self._pids())
        parent_cpu = time.process_time() - process_started
        calls = run.calls or {}
        if slot.way == "fjob" and calls.get(BULK_JOB) != 1:
            raise BenchError(f"bulk_patch did not start the server's job once: {calls}")
        if slot.way == "ffallback":
            proxied = len(self.proxy.requests("POST", r"bulk-patch")) - seen_before
            if calls.get(BULK_JOB) or proxied or not calls.get("POST bundle"):
                raise BenchError(f"bulk_patch behind the proxy did not fall back to patch bundles: {calls}")
        verify_migrated(bench.server, patient_set, slot.key)
        verify_provenance(bench.server, patient_set, run.applied[0], provenance, slot.key)
        split = CpuSplit.from_dict(run.cpu) if run.cpu else None
        if split and slot.way == "ffallback":
            split.helper = parent_cpu  # the proxy's threads, in this process
        detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:4])
        return Timing(slot.way, patient_set.size, run.seconds, run.requests, run.cpu_seconds,
                      f"Project.migrate: {detail}", split.as_dict() if split else None, calls)

    def _pids(self) -> dict[str, list[int]] | None:
        if not self.processes.known:
            return None
        return {"java": self.processes.java, "database": self.processes.database}

    # --- what the rows say ---

    def report(self, rows: dict[Slot, Timing]) -> float:
        bench, cfg = self.bench, self.config
        say = bench.say
        d = rows[Slot("d")]
        by = {slot.key: timing for slot, timing in rows.items()}
        figures: dict[str, Any] = {"workers": list(cfg.workers), "default_workers": cfg.default_workers,
                                   "passes": cfg.passes, "n": cfg.n, "server_processes": self.processes.describe()}
        say("\n  tool / sequential (e/d), PROVENANCE on:      " + ", ".join(
            f"WORKERS={w}: {by[f'e{w}'].rate / d.rate:.2f}" for w in cfg.workers))
        figures["e_vs_d"] = {w: by[f"e{w}"].rate / d.rate for w in cfg.workers}
        if cfg.provenance_off:
            say("  PROVENANCE off / on (p/e), same WORKERS:     " + ", ".join(
                f"WORKERS={w}: {by[f'p{w}'].rate / by[f'e{w}'].rate:.2f}" for w in cfg.workers))
            say("  tool without Provenance / sequential (p/d): " + ", ".join(
                f"WORKERS={w}: {by[f'p{w}'].rate / d.rate:.2f}" for w in cfg.workers))
            figures["p_vs_e"] = {w: by[f"p{w}"].rate / by[f"e{w}"].rate for w in cfg.workers}
            figures["p_vs_d"] = {w: by[f"p{w}"].rate / d.rate for w in cfg.workers}
        if cfg.bulk:
            fallback, dproxy = by["ffallback"], by["dproxy"]
            bundles = (f"patch bundles {fallback.rate:.1f}/s ({fallback.rate / d.rate:.2f} x d; "
                       f"{fallback.rate / dproxy.rate:.2f} x d through the same proxy)")
            figures["bulk"] = {"fallback_rate": fallback.rate, "fallback_vs_d": fallback.rate / d.rate,
                               "fallback_vs_dproxy": fallback.rate / dproxy.rate, "proxy_cost": d.rate / dproxy.rate}
            if self.job:
                job, hand = by["fjob"], by["fhand"]
                say(f"  bulk_patch: server job {job.rate:.1f} Patients/s ({job.rate / d.rate:.2f} x d), "
                    f"{bundles}; the same job by hand, without Provenance: {hand.rate:.1f}/s "
                    f"({hand.rate / d.rate:.2f} x d)")
                figures["bulk"].update(job_rate=job.rate, job_vs_d=job.rate / d.rate,
                                       hand_rate=hand.rate, hand_vs_d=hand.rate / d.rate)
            else:
                say(f"  bulk_patch (no server job here): {bundles}")
        self.cpu_table(rows)
        cost = self.server_cost(rows)
        if cost:
            figures["server_cost"] = cost
        estimate = self.estimate(rows)
        if estimate:
            figures["estimate_own_cores"] = estimate
        default = by[f"e{cfg.default_workers}"]
        ratio = default.rate / d.rate
        shipped = SHIPPED_WORKERS
        say(f"\n  tool_vs_sequential = e(WORKERS={cfg.default_workers}) / d = {ratio:.2f} "
            f"(goal >= 1.3: {'met' if ratio >= 1.3 else 'MISSED'}); the engine ships WORKERS={shipped}"
            + (f", at which e/d = {by[f'e{shipped}'].rate / d.rate:.2f}" if f"e{shipped}" in by
               and shipped != cfg.default_workers else ""))
        figures["tool_vs_sequential"] = ratio
        figures["engine_default_workers"] = shipped
        bench.figures["throughput"] = figures
        return ratio

    def cpu_table(self, rows: dict[Slot, Timing]) -> None:
        say = self.bench.say
        if not any(t.cpu for t in rows.values()):
            say("  (no CPU split: the server's processes are not on this machine or not found)")
            return
        say(f"\n  Where the CPU went, ms per Patient (both passes); 'waited' = threads runnable but "
            f"without a core; {os.cpu_count()} cores:")
        say(f"  {'row':<52} {'wall':>6} {'client':>7} {'HAPI':>6} {'PG':>6} {'PG bg':>6} {'proxy':>6} "
            f"{'other':>6} {'busy %':>7} {'waited c/s':>11}")
        for slot, timing in rows.items():
            if not timing.cpu:
                continue
            c = timing.cpu
            n = timing.resources
            busy = 100 * c["machine"] / (c["wall"] * (os.cpu_count() or 1)) if c["wall"] else 0.0
            say(f"  {slot.label(self.config.default_workers):<52} {1000 * c['wall'] / n:6.2f} "
                f"{1000 * c['client'] / n:7.2f} {1000 * c['server'] / n:6.2f} {1000 * c['database'] / n:6.2f} "
                f"{1000 * c['database_background'] / n:6.2f} {1000 * c['helper'] / n:6.2f} "
                f"{1000 * c['other'] / n:6.2f} {busy:7.0f} "
                f"{1000 * c['client_waited'] / n:5.2f}/{1000 * c['server_waited'] / n:<5.2f}")

    def server_cost(self, rows: dict[Slot, Timing]) -> dict[str, Any] | None:
        """What each way makes the server do: the server's CPU seconds (HAPI's JVM, or the
        processes BENCH_SERVER_PIDS names, plus PostgreSQL's backends and its background work)
        per 1,000 resources migrated, and that against the sequential client's (d).

        On a machine where client and server share the cores, this is the figure the tool
        controls: parallel bundles buy little wall time there, but every extra entry, request
        or reference it sends is paid for here. Goal: the tool as shipped (PROVENANCE on, the
        default WORKERS) at most 1.15 x (d)."""
        d = rows[Slot("d")]
        if not d.cpu:
            return None
        say = self.bench.say

        def per_1000(timing: Timing) -> tuple[float, float, float]:
            c = timing.cpu or {}
            server, database = c.get("server", 0.0), c.get("database", 0.0) + c.get("database_background", 0.0)
            n = timing.resources or 1
            return 1000 * (server + database) / n, 1000 * server / n, 1000 * database / n

        d_cost = per_1000(d)[0]
        say("\n  Server cost: the server's CPU seconds per 1,000 resources (HAPI + PostgreSQL, from /proc):")
        say(f"  {'row':<52} {'server s':>9} {'HAPI':>6} {'PG':>6} {'vs (d)':>7} {'req/1000':>9}")
        found: dict[str, Any] = {"d": d_cost}
        for slot, timing in rows.items():
            if not timing.cpu or slot.way in ("fjob", "fhand", "ffallback", "dproxy"):
                continue
            total, server, database = per_1000(timing)
            found[slot.key] = total
            requests = 1000 * timing.requests / timing.resources if timing.resources else 0.0
            say(f"  {slot.label(self.config.default_workers):<52} {total:9.2f} {server:6.2f} {database:6.2f} "
                f"{total / d_cost if d_cost else 0.0:7.2f} {requests:9.1f}")
        shipped = f"e{self.config.default_workers}"
        if shipped in found and d_cost:
            ratio = found[shipped] / d_cost
            found["tool_vs_sequential"] = ratio
            say(f"  server cost of the tool as shipped (PROVENANCE on, WORKERS={self.config.default_workers}) / (d) = "
                f"{ratio:.2f} (goal <= 1.15: {'met' if ratio <= 1.15 else 'MISSED'})")
        return found

    def estimate(self, rows: dict[Slot, Timing]) -> dict[str, Any] | None:
        """tool_vs_sequential if the server had cores of its own: an estimate from the CPU split.

        Both ways are taken as bound by CPU alone (no waiting for a core, no I/O):
        (d) does one thing at a time, so its time is at least its client's CPU plus the
        server's (HAPI and PostgreSQL) CPU, one after the other; (e) keeps WORKERS bundles and
        a page read in flight, so its time is at least the busier side: the client's CPU, or
        the server's CPU spread over min(WORKERS + 1, the server's cores). The ratio of those
        floors is an upper estimate (it assumes the server scales perfectly over its cores).
        """
        d = rows[Slot("d")]
        if not d.cpu:
            return None
        dc = d.cpu
        d_floor = dc["client"] + dc["server"] + dc["database"]
        say = self.bench.say
        out: dict[str, Any] = {"d_seconds": dc["wall"], "d_cpu_floor": d_floor}
        say("\n  Estimate, not a measurement: the server on cores of its own, the client on another, "
            "each way bound by CPU alone.")
        say(f"  (d): {dc['wall']:.1f} s measured; CPU one after the other (client + HAPI + PostgreSQL): "
            f"{d_floor:.1f} s")
        for w in self.config.workers:
            e = rows[Slot("e", w)]
            if not e.cpu:
                continue
            ec = e.cpu
            server = ec["server"] + ec["database"]
            estimates = {}
            for cores in (2, 4):
                floor = max(ec["client"], server / min(w + 1, cores))
                estimates[cores] = (e.resources / floor) / (d.resources / d_floor) if floor else 0.0
            out[f"e{w}"] = {"seconds": ec["wall"], "client_cpu": ec["client"], "server_cpu": server,
                            "ratio_2_cores": estimates[2], "ratio_4_cores": estimates[4],
                            "measured_ratio": e.rate / d.rate}
            say(f"  (e) WORKERS={w}: {ec['wall']:.1f} s measured; client CPU {ec['client']:.1f} s, server CPU "
                f"{server:.1f} s -> e/d about {estimates[2]:.2f} with the server on 2 cores of its own, "
                f"{estimates[4]:.2f} on 4 (measured here: {e.rate / d.rate:.2f})")
        return out
