"""A private PostgreSQL cluster under `.hapi/` for the test HAPI server (HAPI_DB=postgres).

HAPI's default in-memory H2 is fine for correctness tests but is not what anyone runs in
production, and it answers some of HAPI's queries by full table scans (benchmarks/README.md,
"Why H2 stops at about 3x"). With HAPI_DB=postgres the launcher starts a cluster of the
machine's own PostgreSQL server (Debian's `postgresql` package) on 127.0.0.1, with a fresh,
empty database for every HAPI start, and stops it with HAPI.

    HAPI_PG_PORT     TCP port of the cluster (default 5433, so a system server on 5432 is left alone)
    HAPI_PG_BINDIR   directory holding initdb and pg_ctl (default: found on PATH or under
                     /usr/lib/postgresql/<version>/bin, newest version first)

The cluster lives in `.hapi/pg-<port>/` (trust authentication, TCP on 127.0.0.1 only, no Unix
socket, PostgreSQL's default durable settings). PostgreSQL refuses to run as root; when the
launcher is root, the cluster's commands run as the `postgres` user the package created.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DATABASE = "hapi"
USER = "postgres"
TOOLS = ("initdb", "pg_ctl", "createdb", "dropdb")


class PostgresError(RuntimeError):
    pass


def port_from_env() -> int:
    return int(os.environ.get("HAPI_PG_PORT", "5433"))


def bindir() -> Path:
    """Where initdb and pg_ctl are: Debian keeps them off PATH, under /usr/lib/postgresql."""
    given = os.environ.get("HAPI_PG_BINDIR")
    if given:
        if _has_tools(Path(given)):
            return Path(given)
        raise PostgresError(f"HAPI_PG_BINDIR={given!r} does not hold PostgreSQL's "
                            f"{', '.join(TOOLS)}. Point it at the server's bin directory.")
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True))
    for candidate in candidates:
        if _has_tools(candidate):
            return candidate
    raise PostgresError(
        f"HAPI_DB=postgres needs a PostgreSQL server ({', '.join(TOOLS)}), found none on PATH or "
        "in /usr/lib/postgresql/*/bin. Install Debian's `postgresql` package, set HAPI_PG_BINDIR, "
        "or unset HAPI_DB to use H2.")


def _has_tools(directory: Path) -> bool:
    return all((directory / tool).is_file() for tool in TOOLS)


def _version(bin_dir: Path) -> list[int]:
    """/usr/lib/postgresql/15/bin -> [15]: the newest installed server first."""
    return [int(part) for part in re.findall(r"\d+", bin_dir.parent.name)] or [0]


def file_tail(path: Path, lines: int) -> str:
    """The last lines of a server's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _owner_prefix() -> list[str]:
    """PostgreSQL will not run as root: run its commands as the package's `postgres` user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or shutil.which("/usr/sbin/runuser")
    if runuser is None:
        raise PostgresError("Running as root, but `runuser` is missing: cannot start PostgreSQL "
                            "as the `postgres` user. Run as an ordinary user, or unset HAPI_DB.")
    return [runuser, "-u", USER, "--"]


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user=USER)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run([*_owner_prefix(), *command], capture_output=True, text=True)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise PostgresError(f"{what} failed (exit {result.returncode}):\n{output}")


@dataclass(frozen=True)
class Cluster:
    """One cluster: its files under run_dir, named by its port."""

    run_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.run_dir / f"pg-{self.port}"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"pg-{self.port}.log"

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{DATABASE}"

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def start(self) -> str:
        """Start (creating it on first use) with an empty `hapi` database; return its JDBC URL."""
        bin_ = bindir()
        data = self.data_dir
        self.run_dir.mkdir(exist_ok=True)
        if not (data / "PG_VERSION").exists():
            if data.exists():
                shutil.rmtree(data)
            data.mkdir(mode=0o700)
            _give_to_owner(data)
            _run([str(bin_ / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync"], f"Creating the PostgreSQL cluster in {data}")
        if not self.is_running():
            self.log_file.touch()
            _give_to_owner(self.log_file)
            options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k ''"
            try:
                _run([str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(self.log_file), "-o", options,
                      "-w", "-t", "60", "start"],
                     f"Starting PostgreSQL on 127.0.0.1:{self.port} (HAPI_PG_PORT)")
            except PostgresError as exc:
                raise PostgresError(f"{exc}\nLast lines of {self.log_file}:\n{file_tail(self.log_file, 10)}") from None
        client = ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
        _run([str(bin_ / "dropdb"), *client, "--if-exists", "--force", DATABASE],
             f"Dropping the old `{DATABASE}` database")
        _run([str(bin_ / "createdb"), *client, DATABASE], f"Creating the `{DATABASE}` database")
        return self.jdbc_url

    def stop(self) -> None:
        if self.is_running():
            _run([str(bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                 "Stopping PostgreSQL")
