"""Where the CPU went during a timed way: the client, the FHIR server, its database, the rest.

On a machine where the client and the server share the cores, a ratio of wall times says
little about a server with cores of its own. So each timed way also records CPU seconds from
/proc: the client's own (`time.process_time()` in the process that ran the way), HAPI's java
process (utime + stime of /proc/<pid>/stat, all its threads), the PostgreSQL cluster behind it
(the postmaster and every backend it started), and the whole machine's busy time from
/proc/stat (so whatever else ran, another developer's tests for one, shows as "other").

The server's processes are found from the launcher's files for a local server (`.hapi/hapi-<port>.pid`,
`.hapi/hapi-<port>.pg` and the cluster's `postmaster.pid`), or named with BENCH_SERVER_PIDS
(comma-separated pids; each with its child processes). Where none is found (another machine,
no /proc) the split is simply not reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".hapi"
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2:].split()


def process_cpu(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process (all threads), in seconds; with `children`, also what its
    exited and waited-for children used (cutime + cstime). 0.0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17), so index n-3.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` (one scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[1] == str(parent):
            found.append(int(entry))
    return found


def run_delays(pid: int | str) -> dict[str, float]:
    """Seconds each thread of a process (those alive now) spent runnable but waiting for a
    core (/proc/<pid>/task/*/schedstat, second field): the cost of sharing the cores."""
    found: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found[f"{pid}/{tid}"] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return found


def waited_since(before: dict[str, float], after: dict[str, float]) -> float:
    """Run-queue wait between two run_delays() samples: threads that started meanwhile count
    from zero, threads that ended meanwhile are lost (so this is a lower bound)."""
    return sum(value - before.get(tid, 0.0) for tid, value in after.items())


def machine_busy() -> float:
    """Core-seconds the whole machine spent busy (not idle, not waiting for I/O) since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    values = [int(v) for v in first[1:8]] + [0] * (8 - len(first[1:8]))
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]  # guest time is inside user
    return (user + nice + system + irq + softirq) / TICKS


@dataclass
class ServerProcesses:
    """The FHIR server's processes: HAPI's JVM and the database cluster's postmaster."""

    java: list[int] = field(default_factory=list)
    database: list[int] = field(default_factory=list)  # postmasters: they and their children count

    @property
    def known(self) -> bool:
        return bool(self.java or self.database)

    def describe(self) -> str:
        if not self.known:
            return "unknown (no local server processes found; BENCH_SERVER_PIDS names them)"
        return f"java pid {self.java or '-'}, PostgreSQL postmaster pid {self.database or '-'}"

    @classmethod
    def find(cls, base_url: str, environ: dict[str, str] | os._Environ = os.environ) -> ServerProcesses:
        named = environ.get("BENCH_SERVER_PIDS", "").strip()
        if named:
            return cls(java=[int(p) for p in named.replace(" ", "").split(",") if p])
        parts = urlsplit(base_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not Path("/proc").is_dir():
            return cls()
        port = parts.port or 80
        found = cls()
        pid = _read_int(RUN_DIR / f"hapi-{port}.pid")
        if pid and _stat_fields(pid) is not None:
            found.java.append(pid)
        pg_port = _read_int(RUN_DIR / f"hapi-{port}.pg")
        if pg_port:
            postmaster = _read_int(RUN_DIR / f"pg-{pg_port}" / "postmaster.pid")
            if postmaster and _stat_fields(postmaster) is not None:
                found.database.append(postmaster)
        return found

    def sample(self) -> tuple[float, float, float, dict[str, float]]:
        """(java CPU seconds, database backends' CPU seconds, the database's background CPU
        seconds, the run-queue waits of java's and the backends' threads) so far.

        Backends are the processes serving HAPI's connections; background is the rest of the
        cluster (checkpointer, WAL writer, autovacuum ...), with whatever exited children used
        (autovacuum workers, mostly: HAPI keeps its connections open)."""
        java = sum(process_cpu(pid) for pid in self.java)
        waited: dict[str, float] = {}
        for pid in self.java:
            waited.update(run_delays(pid))
        database = background = 0.0
        for postmaster in self.database:
            background += process_cpu(postmaster, children=True)
            for child in child_pids(postmaster):
                if _is_background(child):
                    background += process_cpu(child)
                else:
                    database += process_cpu(child)
                    waited.update(run_delays(child))
        return java, database, background, waited


BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical replication",
              "stats collector", "archiver", "startup", "io worker", "walsummarizer", "walreceiver", "walsender")


def _is_background(pid: int) -> bool:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return title.removeprefix("postgres: ").startswith(BACKGROUND)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class CpuSplit:
    """CPU seconds of one timed way, by who spent them."""

    wall: float
    client: float
    server: float  # HAPI's JVM
    database: float  # PostgreSQL behind it
    machine: float  # every core's busy time, whoever it was
    helper: float = 0.0  # the benchmark's own process, when it did work in the timed part (a proxy)
    server_waited: float = 0.0  # run-queue wait of the server's and database backends' threads
    client_waited: float = 0.0  # run-queue wait of the client's threads
    database_background: float = 0.0  # checkpointer, WAL writer, autovacuum ...

    FIELDS = ("wall", "client", "server", "database", "machine", "helper", "server_waited", "client_waited",
              "database_background")

    @property
    def other(self) -> float:
        """Busy time nobody here accounts for: other processes on the machine."""
        return max(0.0, self.machine - self.client - self.server - self.database - self.database_background
                   - self.helper)

    def as_dict(self) -> dict[str, float]:
        return {**{name: getattr(self, name) for name in self.FIELDS}, "other": self.other}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> CpuSplit:
        return cls(**{k: v for k, v in data.items() if k != "other"})

    def __add__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(*(getattr(self, f) + getattr(other, f) for f in self.FIELDS))

    def describe(self) -> str:
        return (f"cpu s: client {self.client:.1f}, HAPI {self.server:.1f}, PostgreSQL {self.database:.1f} "
                f"(+ {self.database_background:.1f} in the background)"
                + (f", proxy {self.helper:.1f}" if self.helper else "")
                + f", other {self.other:.1f} (machine busy {self.machine:.1f} of "
                f"{self.wall * (os.cpu_count() or 1):.1f}); "
                f"waited for a core: client {self.client_waited:.1f}, server {self.server_waited:.1f}")


class Meter:
    """Samples the server's processes, this process and the machine around a timed part."""

    def __init__(self, processes: ServerProcesses):
        self.processes = processes
        self._start: tuple[Any, ...] | None = None

    def start(self) -> None:
        self._start = (*self.processes.sample(), run_delays(os.getpid()), machine_busy())

    def stop(self, wall: float, client: float, helper: float = 0.0) -> CpuSplit | None:
        """The split since start(); `client` is the CPU time of the code that ran the way,
        `helper` what the benchmark spent on something else meanwhile (the proxy's threads)."""
        if self._start is None or not self.processes.known:
            return None
        java, database, background, waited = self.processes.sample()
        java0, database0, background0, waited0, client_waited0, machine0 = self._start
        self._start = None
        return CpuSplit(wall, client, java - java0, database - database0, machine_busy() - machine0,
                        helper, waited_since(waited0, waited), waited_since(client_waited0, run_delays(os.getpid())),
                        background - background0)
