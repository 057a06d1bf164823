"""Loading a long history: chained scripts, as a whole command and inside one process.

Two measurements, each against a baseline taken in the same run on the same files:

* `measure_process` (what a user waits for): `python -m django_fhir_migrations showmigrations
  --offline` with MIGRATION_SCRIPTS_DIR pointing at N generated scripts, as a whole process,
  against (1) starting the interpreter and importing the package's CLI (`python -c "import
  django_fhir_migrations.cli"`: the floor of any command) and (2) a process that reads and
  `compile()`s every file (what any loader that parses every file pays). Commands alternate
  (A B C A B C ...) after a warm-up of each, and the medians are compared, so a drift of the
  machine's speed hits all three alike.
* `measure` (inside one process, used by run.py): `MigrationLoader(...).valid_graph()` +
  `forwards_plan`, which imports and validates every script (what `fhirmigrate` does before it
  touches the server), and, since status reads metadata only, `loader.graph.validate()` +
  `forwards_plan` alone; against read + `compile()` of the same files. Each round uses fresh
  copies (the loader caches by path) and the best round is kept.

    python -m benchmarks.graph_load                      # 2,000 and 20,000 scripts, 5 rounds
    python -m benchmarks.graph_load --scripts 2000 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCRIPT = '''"""Step {index}: tag Observations of code {index}.

Revision: {revision}   Revises: {down}   Created: 2026-11-26T12:00:00Z
"""

revision = "{revision}"
down_revision = {down_literal}

SYSTEM = "urn:example:step:{index}"


def upgrade(ctx):
    with ctx.batch() as batch:
        for observation in ctx.search("Observation", as_dict=True, code=SYSTEM + "|{index}"):
            observation.setdefault("category", []).append({{"text": "step {index}"}})
            batch.update(observation)


def downgrade(ctx):
    with ctx.batch() as batch:
        for observation in ctx.search("Observation", as_dict=True, code=SYSTEM + "|{index}"):
            observation["category"] = [c for c in observation.get("category", [])
                                       if c.get("text") != "step {index}"]
            batch.update(observation)
'''


@dataclass
class GraphTiming:
    scripts: int
    load_seconds: float  # MigrationLoader(...).valid_graph() + forwards_plan(set()): every script imported
    compile_seconds: float  # read + compile() of the same files
    planned: int
    checksum_seconds: float = 0.0  # the token checksums of the files alone (computed lazily, not in the load)
    graph_seconds: float = 0.0  # of the load: building, validating and planning the graph alone
    read_seconds: float = 0.0  # loader.graph.validate() + forwards_plan(set()): metadata only, as status reads

    @property
    def ratio(self) -> float:
        return self.load_seconds / self.compile_seconds if self.compile_seconds else 0.0


def write_chain(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    down = None
    for index in range(count):
        revision = uuid.uuid4().hex
        (folder / f"m{index:05d}_step.py").write_text(SCRIPT.format(
            index=index, revision=revision, down=down or "None", down_literal=repr(down)))
        down = revision


def _compile_all(folder: Path) -> float:
    started = time.perf_counter()
    for path in sorted(folder.glob("*.py")):
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    return time.perf_counter() - started


def _load_and_plan(folder: Path) -> tuple[float, int, float, float, float]:
    """Seconds to read and plan (metadata only), then to validate every script, the plan's
    length; and two parts of the load, alone."""
    from django_fhir_migrations.engine.checksum import source_checksum
    from django_fhir_migrations.engine.config import ScriptLocation
    from django_fhir_migrations.engine.graph import RevisionGraph
    from django_fhir_migrations.engine.loader import MigrationLoader

    started = time.perf_counter()
    loader = MigrationLoader([ScriptLocation(path=folder, label="bench")])
    loader.graph.validate().forwards_plan(set())
    read = time.perf_counter() - started
    graph = loader.valid_graph()
    plan = graph.forwards_plan(set())
    seconds = time.perf_counter() - started

    started = time.perf_counter()
    for script in loader.scripts:
        source_checksum(script.path.read_bytes())
    checksums = time.perf_counter() - started
    started = time.perf_counter()
    RevisionGraph.build(loader.scripts).validate().forwards_plan(set())
    graph_only = time.perf_counter() - started
    return seconds, len(plan), checksums, graph_only, read


def measure(workdir: Path, count: int, rounds: int = 3) -> GraphTiming:
    loads, compiles, checksums, graphs, reads, planned = [], [], [], [], [], 0
    for round_number in range(rounds):
        folder = workdir / f"chain{round_number}"
        write_chain(folder, count)
        compiles.append(_compile_all(folder))
        seconds, planned, checksum_seconds, graph_seconds, read_seconds = _load_and_plan(folder)
        loads.append(seconds)
        checksums.append(checksum_seconds)
        graphs.append(graph_seconds)
        reads.append(read_seconds)
        if planned != count:
            from .patients import BenchError

            raise BenchError(f"the loader planned {planned} of {count} chained scripts.")
    return GraphTiming(count, min(loads), min(compiles), planned, min(checksums), min(graphs), min(reads))


# --- whole processes ------------------------------------------------------------------------------

COMPILE_ALL = ("import os, sys\n"
               "folder = sys.argv[1]\n"
               "for name in sorted(os.listdir(folder)):\n"
               "    if name.endswith('.py'):\n"
               "        path = os.path.join(folder, name)\n"
               "        with open(path, 'rb') as f:\n"
               "            compile(f.read(), path, 'exec', dont_inherit=True)\n")


@dataclass
class ProcessTiming:
    """Medians of whole-process wall and CPU seconds (user + sys)."""

    scripts: int
    rounds: int
    show_seconds: float  # showmigrations --offline
    start_seconds: float  # interpreter + `import django_fhir_migrations.cli`
    compile_seconds: float  # a process that reads and compile()s every file
    show_cpu: float = 0.0
    start_cpu: float = 0.0
    compile_cpu: float = 0.0
    listed: int = 0  # scripts showmigrations printed (checked: all of them)

    @property
    def vs_start(self) -> float:
        return self.show_seconds / self.start_seconds if self.start_seconds else 0.0

    @property
    def vs_compile(self) -> float:
        return self.show_seconds / self.compile_seconds if self.compile_seconds else 0.0

    def describe(self) -> str:
        return (f"{self.scripts:,} scripts: showmigrations --offline {self.show_seconds:.2f} s "
                f"(cpu {self.show_cpu:.2f} s); interpreter + package import {self.start_seconds:.2f} s, "
                f"ratio {self.vs_start:.2f}; read + compile() every file {self.compile_seconds:.2f} s, "
                f"ratio {self.vs_compile:.2f} (medians of {self.rounds} whole-process runs)")


def _clean_environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FHIR_MIGRATIONS_", "MIGRATION_")) and k not in ("FHIR_BASE_URL",
                                                                                  "DJANGO_SETTINGS_MODULE")}
    env["MIGRATION_SCRIPTS_DIR"] = str(folder)
    env["FHIR_MIGRATIONS_SIGNING_KEY"] = "benchmark-only-signing-key"  # the CLI has no SECRET_KEY
    return env


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, bytes]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def measure_process(workdir: Path, count: int, rounds: int = 5) -> ProcessTiming:
    folder = workdir / f"process{count}"
    write_chain(folder, count)
    env = _clean_environment(folder)
    python = sys.executable
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    commands = {
        "show": [python, "-m", "django_fhir_migrations", "showmigrations", "--offline"],
        "start": [python, "-c", "import django_fhir_migrations.cli"],
        "compile": [python, "-c", COMPILE_ALL, str(folder)],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    listed = 0
    for round_number in range(rounds + 1):  # round 0 warms the page cache and is not counted
        for name, command in commands.items():
            wall, cpu, out = _timed(command, env, workdir)
            if name == "show":
                listed = out.count(b"dir/m")
                if listed != count:
                    raise RuntimeError(f"showmigrations listed {listed} of {count} scripts.")
            if round_number:
                walls[name].append(wall)
                cpus[name].append(cpu)
    med = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    return ProcessTiming(count, rounds, med["show"], med["start"], med["compile"],
                         cpu["show"], cpu["start"], cpu["compile"], listed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.graph_load", description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, nargs="+", default=[2000, 20000], help="chain lengths")
    parser.add_argument("--rounds", type=int, default=5, help="counted runs of each command")
    parser.add_argument("--in-process", action="store_true", help="also the in-process figures (run.py's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fhir-graph-load-") as temporary:
        workdir = Path(temporary)
        for count in args.scripts:
            print(measure_process(workdir, count, args.rounds).describe(), flush=True)
            if args.in_process:
                timing = measure(workdir / f"inprocess{count}", count)
                print(f"  in one process: read + plan (metadata, as status) {timing.read_seconds:.2f} s; "
                      f"valid_graph (every script imported) + plan {timing.load_seconds:.2f} s; "
                      f"read + compile() {timing.compile_seconds:.2f} s; checksums alone "
                      f"{timing.checksum_seconds:.2f} s; graph alone {timing.graph_seconds:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
