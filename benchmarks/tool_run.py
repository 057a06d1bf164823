"""Way (b): the migration as a real migration script, applied by the product's front door.

The parent writes the script into a fresh folder and starts this file as a child process, which
builds `Project(Settings)` (what `fhirmigrate` does) with its own STATE_ID and calls
`Project.migrate()`. A child process per run gives a clean peak RSS (`ru_maxrss`), and with
`trace` on it also measures the Python heap peak with tracemalloc (slower, so the timed run
and the traced run are separate runs on the same Patients, each adding its own identifier).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SCRIPT = '''"""Benchmark: add {new_system}|<id> to every Patient tagged {tag_system}."""

revision = "{revision}"
down_revision = None

TAG = "{tag_system}|"
SYSTEM = "{new_system}"


def upgrade(ctx):
    with ctx.{kind}() as batch:
        for patient in ctx.search("Patient", as_dict=True, identifier=TAG):
            patient.setdefault("identifier", []).append({{"system": SYSTEM, "value": patient["id"]}})
            batch.update(patient)


def downgrade(ctx):
    with ctx.batch() as batch:
        for patient in ctx.search("Patient", as_dict=True, identifier=SYSTEM + "|"):
            patient["identifier"] = [i for i in patient["identifier"] if i.get("system") != SYSTEM]
            batch.update(patient)
'''


# ctx.bulk_patch: the same change as a FHIRPath Patch, one constant value for every Patient (a
# patch cannot name the resource's own id), as patch bundles (the default) or through the
# server's job (kind "bulk-job": server_job=True).
BULK_SCRIPT = '''"""Benchmark: add {new_system}|bulk to every Patient tagged {tag_system}, by ctx.bulk_patch."""

revision = "{revision}"
down_revision = None

TAG = "{tag_system}|"
SYSTEM = "{new_system}"


def upgrade(ctx):
    ctx.bulk_patch("Patient", [{{"type": "add", "path": "Patient", "name": "identifier",
                                "value": {{"valueIdentifier": {{"system": SYSTEM, "value": "bulk"}}}}}}],
                   identifier=TAG{job})


def downgrade(ctx):
    ctx.undo()
'''


@dataclass
class ToolRun:
    """What the child reported: the applied migration, its time, requests and memory."""

    applied: list[str]
    seconds: float
    cpu_seconds: float  # this process's CPU time during migrate: the client side's own cost
    requests: int
    maxrss_kib: int
    rss_before_kib: int
    traced_peak: int | None
    calls: dict[str, int] | None = None  # requests by "METHOD what" (see _kind)
    cpu: dict[str, float] | None = None  # benchmarks.cpu.CpuSplit.as_dict() around migrate()


def write_script(folder: Path, tag_system: str, new_system: str, kind: str = "batch") -> str:
    """The migration script of way (b); `kind` "transaction" makes it use ctx.transaction(),
    "bulk" ctx.bulk_patch() (patch bundles), "bulk-job" ctx.bulk_patch(..., server_job=True)."""
    revision = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    template = BULK_SCRIPT if kind.startswith("bulk") else SCRIPT
    (folder / "add_benchmark_identifier.py").write_text(
        template.format(revision=revision, tag_system=tag_system, new_system=new_system, kind=kind,
                        job=", server_job=True" if kind == "bulk-job" else "")
    )
    return revision


def run_tool(base_url: str, scripts_dir: Path, state_id: str, size: int, *, trace: bool = False,
             workers: int | None = None, provenance: bool | None = None,
             server_pids: dict[str, list[int]] | None = None) -> ToolRun:
    """Apply the folder's migrations in a child process; raise with its message if it fails.

    `workers` and `provenance` set WORKERS and PROVENANCE (None: the defaults as shipped);
    `server_pids` ({"java": [...], "database": [...]}) makes the child report the CPU split
    of its migrate() (benchmarks/cpu.py).
    """
    args = {"base_url": base_url, "scripts_dir": str(scripts_dir), "state_id": state_id,
            "size": size, "trace": trace, "workers": workers, "provenance": provenance,
            "server_pids": server_pids}
    result = subprocess.run([sys.executable, str(Path(__file__)), json.dumps(args)],
                            capture_output=True, text=True, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        from .patients import BenchError

        raise BenchError(f"way b (fhirmigrate in a child process) failed with exit "
                         f"{result.returncode}: {(result.stderr or result.stdout).strip()[-1500:]}")
    return ToolRun(**json.loads(lines[-1]))


def _rss_kib() -> int:
    """The resident set size now (not the peak), from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def child(args: dict) -> int:
    import io
    import resource
    import time
    import tracemalloc

    sys.path.insert(0, str(REPO))
    from benchmarks.cpu import Meter, ServerProcesses
    from django_fhir_migrations.engine import FhirMigrationError, Project
    from django_fhir_migrations.engine.config import Settings

    given = {"BASE_URL": args["base_url"], "STATE_ID": args["state_id"],
             "SCRIPTS_DIRS": [args["scripts_dir"]], "PAGE_SIZE": args["size"],
             "BUNDLE_SIZE": args["size"], "SIGNING_KEY": "benchmark-only-signing-key"}
    if args.get("workers") is not None:
        given["WORKERS"] = args["workers"]
    if args.get("provenance") is not None:
        given["PROVENANCE"] = args["provenance"]
    settings = Settings.build(
        given,
        environ={},  # the benchmark decides every setting; nothing leaks in from the shell
        source="benchmark",
    )
    project = Project(settings, command="benchmark", stdout=io.StringIO())
    project.loader.valid_graph()  # import the script before measuring, as any command does first
    calls: dict[str, int] = {}
    base = project.connection.base_url.rstrip("/")

    def observer(method: str, url: str, status: int | None) -> None:
        key = f"{method} {_kind(url.removeprefix(base))}"
        calls[key] = calls.get(key, 0) + 1  # the GIL makes this safe enough for counting

    project.connection.observers.append(observer)
    meter = Meter(ServerProcesses(**args["server_pids"])) if args.get("server_pids") else None
    rss_before = _rss_kib()
    if args["trace"]:
        tracemalloc.start()
    if meter:
        meter.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        outcome = project.migrate()
    except FhirMigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    split = meter.stop(seconds, cpu_seconds) if meter else None
    traced_peak = tracemalloc.get_traced_memory()[1] if args["trace"] else None
    requests = project.connection.request_count
    project.close()
    print(json.dumps({
        "applied": [s.revision for s in outcome.done], "seconds": seconds, "cpu_seconds": cpu_seconds,
        "requests": requests,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_before_kib": rss_before, "traced_peak": traced_peak, "calls": calls,
        "cpu": split.as_dict() if split else None,
    }))
    return 0


def _kind(path: str) -> str:
    """What a request was for, from its path below the base URL: "bundle" (a POST to the base),
    "search page" (a _getpages link), else the resource type or operation."""
    path = path.lstrip("/")
    if not path:
        return "bundle"
    if path.startswith("?_getpages") or "_getpages=" in path.split("/", 1)[0]:
        return "search page"
    head = path.split("?", 1)[0].split("/", 1)[0]
    return head + ("?" if "?" in path.split("/", 1)[0] else "")


if __name__ == "__main__":
    sys.exit(child(json.loads(sys.argv[1])))
