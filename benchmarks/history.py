"""A long history applied in one run: BENCH_HISTORY trivial migrations (upgrade is `pass`).

`fhir-migrations migrate` as a whole process (the console script, or `python -m
django_fhir_migrations` where the script is not installed), on a state of its own, with the
chain of scripts in a temp folder. The process's output is read line by line as it comes
(PYTHONUNBUFFERED): the time each `OK` line arrives is when that migration was recorded. From
those: the time per migration, and the time of the last 500 migrations over that of the first
500 (1.0 = linear: the 2,000th migration costs what the 1st did). The whole process's time
includes starting Python, loading and checking every script, the lock, and releasing it.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cpu import CpuSplit, Meter, ServerProcesses
from .overhead import _chain, _head
from .patients import BenchError, PlainServer

OK_LINE = re.compile(rb"^\s+OK \(")
HEADER_LINE = re.compile(rb"^Applying \d+ migration")
BLOCK = 500


@dataclass
class HistoryTiming:
    migrations: int
    seconds: float  # the whole process
    first_ok_after: float  # from the start of the process to the first migration recorded
    applying_seconds: float  # from the "Applying N migration(s)" line to the last OK
    block: int  # migrations in the first and last blocks compared
    first_block_seconds: float
    last_block_seconds: float
    cpu: dict[str, float] | None = None
    tail: list[str] = field(default_factory=list)  # the process's last output lines

    @property
    def per_migration(self) -> float:
        return self.seconds / self.migrations

    @property
    def growth(self) -> float:
        return self.last_block_seconds / self.first_block_seconds if self.first_block_seconds else 0.0


def command() -> list[str]:
    script = Path(sys.executable).with_name("fhir-migrations")
    if script.exists():
        return [str(script)]
    found = shutil.which("fhir-migrations")
    return [found] if found else [sys.executable, "-m", "django_fhir_migrations"]


def measure(base_url: str, workdir: Path, state_id: str, count: int, server: PlainServer,
            processes: ServerProcesses | None = None) -> HistoryTiming:
    folder = workdir / "history"
    revisions = _chain(folder, count)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FHIR_MIGRATIONS_", "MIGRATION_")) and k != "FHIR_BASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env["FHIR_MIGRATIONS_SIGNING_KEY"] = "benchmark-only-signing-key"  # the CLI has no SECRET_KEY
    args = [*command(), "migrate", "--base-url", base_url, "--scripts-dir", str(folder),
            "--state-id", state_id, "--noinput"]
    meter = Meter(processes) if processes and processes.known else None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if meter:
        meter.start()
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    assert process.stdout is not None
    header_at = None
    oks: list[float] = []
    tail: list[bytes] = []
    for line in process.stdout:
        now = time.perf_counter()
        if OK_LINE.match(line):
            oks.append(now)
        elif header_at is None and HEADER_LINE.match(line):
            header_at = now
        tail = (tail + [line])[-5:]
    status = process.wait()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    split: CpuSplit | None = meter.stop(seconds, client) if meter else None
    text = [t.decode(errors="replace").rstrip() for t in tail]
    if status != 0 or len(oks) != count:
        raise BenchError(f"{' '.join(args[:2])} of {count} trivial migrations exited {status} after "
                         f"{len(oks)} were applied: {' / '.join(text)}")
    if _head(server, state_id) != revisions[-1]:
        raise BenchError(f"after migrating {count} trivial migrations the state {state_id!r} does not name "
                         "the last one as its head.")
    block = max(1, min(BLOCK, count // 4))
    start = header_at if header_at is not None else started
    first_block = oks[block - 1] - start
    last_block = oks[-1] - oks[-block - 1] if count > block else oks[-1] - start
    return HistoryTiming(count, seconds, oks[0] - started, oks[-1] - start, block, first_block, last_block,
                         split.as_dict() if split else None, text)
