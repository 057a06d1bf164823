"""Loading and checking a long history: 2,000 chained scripts, against compiling the same files.

The loader imports each file once (compile + exec), validates it, fingerprints its tokens,
builds the doubly linked graph, validates it (roots, heads, cycles, dangling parents) and plans.
The baseline, measured on the same files in the same run, is the least any loader must do:
read and `compile()` each file. Each measurement is repeated on fresh copies (the loader caches
by path) and the best of the rounds is kept, which filters out noise from other processes.
"""

from __future__ import annotations

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
    load_seconds: float  # MigrationLoader(...).valid_graph() + forwards_plan(set())
    compile_seconds: float  # read + compile() of the same files
    planned: int
    checksum_seconds: float = 0.0  # of the load: the token checksums of the files alone
    graph_seconds: float = 0.0  # of the load: building, validating and planning the graph alone

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


def _load_and_plan(folder: Path) -> tuple[float, int, float, float]:
    """Seconds to load, validate and plan; the plan's length; and two parts of the load, alone."""
    from django_fhir_migrations.engine.config import ScriptLocation
    from django_fhir_migrations.engine.graph import RevisionGraph
    from django_fhir_migrations.engine.loader import MigrationLoader
    from django_fhir_migrations.engine.script import source_checksum

    started = time.perf_counter()
    loader = MigrationLoader([ScriptLocation(path=folder, label="bench")])
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
    return seconds, len(plan), checksums, graph_only


def measure(workdir: Path, count: int, rounds: int = 3) -> GraphTiming:
    loads, compiles, checksums, graphs, planned = [], [], [], [], 0
    for round_number in range(rounds):
        folder = workdir / f"chain{round_number}"
        write_chain(folder, count)
        compiles.append(_compile_all(folder))
        seconds, planned, checksum_seconds, graph_seconds = _load_and_plan(folder)
        loads.append(seconds)
        checksums.append(checksum_seconds)
        graphs.append(graph_seconds)
        if planned != count:
            from .patients import BenchError

            raise BenchError(f"the loader planned {planned} of {count} chained scripts.")
    return GraphTiming(count, min(loads), min(compiles), planned, min(checksums), min(graphs))
