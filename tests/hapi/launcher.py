"""Build (only when needed), start, wait for, and stop the local HAPI FHIR JPA server.

The server's sources (pom.xml and a few Java classes) are the package's own
(django_fhir_migrations/testserver/hapi/, what `fhir-migrations testserver` ships to users);
this launcher builds them into tests/hapi/target/ and adds what the test suite and the benchmark
need on top: a PostgreSQL cluster, the full JIT, the run files under .hapi/.

    python -m tests.hapi start     # build if the jar is missing or built from other sources
    python -m tests.hapi status
    python -m tests.hapi stop      # stops the server this launcher started (by its pid)

The server runs in the background; its log is `.hapi/hapi-<port>.log` and its pid
`.hapi/hapi-<port>.pid` at the repository root. HAPI_PORT (default 8080) picks the port, HAPI_XMX the heap (1g),
HAPI_JIT=full the full JIT compiler (for long runs), HAPI_GC=g1 the JVM's default collector
instead of the serial one (for latency), HAPI_START_TIMEOUT how long to wait for
`/fhir/metadata`. HAPI_DB picks the database: `h2` (default, in memory) or `postgres` (a private
PostgreSQL cluster started and stopped with the server, see postgres.py; `make bench` uses it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from django_fhir_migrations import testserver

from .postgres import USER as POSTGRES_USER
from .postgres import Cluster, PostgresError, file_tail, port_from_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGET = HERE / "target"
JAR = TARGET / testserver.JAR_NAME
RUN_DIR = REPO / ".hapi"


class LauncherError(RuntimeError):
    pass


def port() -> int:
    return int(os.environ.get("HAPI_PORT", "8080"))


def pid_file() -> Path:
    """One pid file per port: starting or stopping one server never touches another's."""
    return RUN_DIR / f"hapi-{port()}.pid"


def log_file() -> Path:
    return RUN_DIR / f"hapi-{port()}.log"


def database() -> str:
    """HAPI_DB: which database the server this launcher starts keeps its data in."""
    choice = os.environ.get("HAPI_DB", "h2").strip().lower() or "h2"
    if choice not in ("h2", "postgres"):
        raise LauncherError(f"HAPI_DB={choice!r} is not a database the test server knows: "
                            "use `h2` (the default) or `postgres`.")
    return choice


def cluster_file() -> Path:
    """Names the PostgreSQL cluster started with the server on this port, so stop() stops it too."""
    return RUN_DIR / f"hapi-{port()}.pg"


def base_url() -> str:
    return f"http://127.0.0.1:{port()}/fhir"


def is_up(timeout: float = 2.0) -> bool:
    return testserver.is_up(base_url(), timeout)


def needs_build() -> bool:
    return testserver.needs_build(TARGET)


def build() -> None:
    try:
        testserver.build(TARGET, say=lambda text: print(text, flush=True))
    except testserver.TestServerError as exc:
        raise LauncherError(str(exc)) from None


def _pid() -> int | None:
    return testserver.running_pid(pid_file())


def start(timeout: float | None = None) -> bool:
    """Start the server unless it already answers. Returns True if this call started it."""
    if is_up():
        print(f"HAPI FHIR is already answering at {base_url()}", flush=True)
        return False
    use_postgres = database() == "postgres"  # a wrong HAPI_DB fails before anything is done
    # A server of ours that does not answer, or a PostgreSQL cluster left by a server that was
    # killed from outside: stop both before starting afresh.
    stop()
    if needs_build():
        build()
    RUN_DIR.mkdir(exist_ok=True)
    timeout = timeout or float(os.environ.get("HAPI_START_TIMEOUT", "240"))
    # Long runs (the benchmark) want the full JIT: HAPI_JIT=full. See tests/hapi/README.md.
    try:
        command = testserver.java_command(JAR, port(), heap=os.environ.get("HAPI_XMX", "1g"),
                                          full_jit=os.environ.get("HAPI_JIT") == "full",
                                          serial_gc=os.environ.get("HAPI_GC", "serial") == "serial")
    except testserver.TestServerError as exc:
        raise LauncherError(str(exc)) from None
    env = dict(os.environ)
    if use_postgres:
        cluster = Cluster(RUN_DIR, port_from_env())
        cluster_file().write_text(str(cluster.port))
        try:
            env.update(HAPI_DB_URL=cluster.start(), HAPI_DB_USER=POSTGRES_USER, HAPI_DB_PASSWORD="")
        except PostgresError as exc:
            _stop_cluster()
            raise LauncherError(str(exc)) from None
        print(f"PostgreSQL for HAPI at {cluster.jdbc_url} (log {cluster.log_file})", flush=True)
    log = open(log_file(), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=RUN_DIR,
                               start_new_session=True, env=env)
    pid_file().write_text(str(process.pid))
    started = time.monotonic()
    print(f"Starting HAPI FHIR (pid {process.pid}, log {log_file()}) ...", flush=True)
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise LauncherError(f"The HAPI server exited with status {process.returncode} while "
                                f"starting. Last log lines:\n{log_tail()}")
        if is_up():
            print(f"HAPI FHIR is up at {base_url()} after {time.monotonic() - started:.1f}s",
                  flush=True)
            return True
        time.sleep(1)
    stop()
    raise LauncherError(f"The HAPI server did not answer {base_url()}/metadata within {timeout:.0f}s. "
                        f"Last log lines:\n{log_tail()}")


def stop() -> None:
    _stop_server()
    _stop_cluster()


def _stop_cluster() -> None:
    try:
        cluster_port = int(cluster_file().read_text().strip())
    except (OSError, ValueError):
        return
    try:
        Cluster(RUN_DIR, cluster_port).stop()
    except PostgresError as exc:
        raise LauncherError(str(exc)) from None
    cluster_file().unlink(missing_ok=True)
    print(f"Stopped PostgreSQL on port {cluster_port}.", flush=True)


def _stop_server() -> None:
    testserver.stop_process(pid_file(), lambda text: print(text, flush=True))


def ensure_running() -> bool:
    return start()


def log_tail(lines: int = 40) -> str:
    return file_tail(log_file(), lines)


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "status"
    try:
        if action == "start":
            start()
        elif action == "stop":
            stop()
        elif action == "build":
            build() if needs_build() else print("The HAPI server is up to date.")
        elif action == "status":
            up = is_up()
            print(f"HAPI FHIR at {base_url()}: {'up' if up else 'down'} (pid {_pid() or '-'})")
            return 0 if up else 1
        else:
            print("usage: python -m tests.hapi start|stop|status|build", file=sys.stderr)
            return 2
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
