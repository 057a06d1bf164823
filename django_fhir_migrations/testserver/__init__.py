"""A throw-away HAPI FHIR server for a project's own migration tests: `fhir-migrations testserver`.

`manage.py test` never touches the real database; a project's FHIR migration tests should not
touch the real FHIR server either (MigrationTester refuses to, unless told). For users with
Java 17 and Maven, this builds the HAPI FHIR JPA server this project tests against (HAPI's own
artifacts from Maven Central, the pom and a few Java classes shipped as package data in
`hapi/`) into a cache folder, and starts and stops it:

    fhir-migrations testserver start      # builds once (about 350 MB of Maven downloads)
    fhir-migrations testserver status
    fhir-migrations testserver stop

It listens on 127.0.0.1 only (port 8090 unless `--port`), keeps its data in memory (gone when
it stops) and answers at `http://127.0.0.1:<port>/fhir`: put that in
`FHIR_MIGRATIONS["TEST"]["BASE_URL"]` or `FHIR_MIGRATIONS_TEST_BASE_URL`. The cache folder is
`$FHIR_MIGRATIONS_TESTSERVER_HOME`, else `$XDG_CACHE_HOME/django-fhir-migrations/testserver`,
else `~/.cache/django-fhir-migrations/testserver`; a build is kept per version of the sources,
so an upgrade of this package rebuilds once. The repository's own test launcher (tests/hapi)
uses the same sources and helpers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from ..engine.errors import FhirMigrationError

SOURCES = Path(__file__).resolve().parent / "hapi"
JAR_NAME = "hapi-test-server.jar"
DEFAULT_PORT = 8090
DEFAULT_HEAP = "1g"
START_TIMEOUT = 240.0  # seconds: a first start on a busy 2-core machine takes 40-60 s
HOME_ENV = "FHIR_MIGRATIONS_TESTSERVER_HOME"

Say = Callable[[str], None]


class TestServerError(FhirMigrationError):
    """The test server could not be built, started or stopped (what to install, the log)."""

    __test__ = False  # not a pytest test class, whatever its name


def default_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "django-fhir-migrations" / "testserver"


# --- building ------------------------------------------------------------------------------


def source_files() -> list[Path]:
    return [SOURCES / "pom.xml", *sorted(p for p in (SOURCES / "src").rglob("*") if p.is_file())]


def source_digest() -> str:
    """Which version of the sources a build came from (paths and contents)."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(str(path.relative_to(SOURCES)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def needs_build(build_dir: Path) -> bool:
    """No jar, no lib/, or built from other sources than these."""
    stamp = build_dir / "sources.sha256"
    if not (build_dir / JAR_NAME).is_file() or not (build_dir / "lib").is_dir():
        return True
    try:
        return stamp.read_text().strip() != source_digest()
    except OSError:
        return True


def build(build_dir: Path, say: Say = print) -> None:
    """`mvn package` of the shipped sources into `build_dir` (the jar and its lib/)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise TestServerError("Maven (mvn) is not on PATH; it builds the HAPI FHIR test server from "
                              "Maven Central. Install Maven 3.8+ and Java 17, or run any FHIR R4 "
                              "server for tests yourself (e.g. `docker run -p 8090:8080 "
                              "hapiproject/hapi`).")
    build_dir.mkdir(parents=True, exist_ok=True)
    say(f"Building the HAPI FHIR test server into {build_dir} (the first build downloads about "
        "350 MB from Maven Central) ...")
    started = time.monotonic()
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(SOURCES / "pom.xml"), f"-Dhapi.build.directory={build_dir}",
         "-DskipTests", "package"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise TestServerError(f"Building the HAPI test server failed (mvn exit {result.returncode}):\n{tail}")
    (build_dir / "sources.sha256").write_text(source_digest() + "\n")
    say(f"Built in {time.monotonic() - started:.0f}s.")


# --- running ------------------------------------------------------------------------------


def java_command(jar: Path, port: int, *, heap: str = DEFAULT_HEAP, full_jit: bool = False,
                 serial_gc: bool = True) -> list[str]:
    """How the server is started. C1 only (TieredStopAtLevel=1) halves the CPU it needs to start
    and is faster on short test workloads; the serial GC keeps it near 600 MB. A server run as
    in production (`full_jit`, `serial_gc=False`: the JVM's default collector, G1) is what a
    benchmark of other users' latency needs: the serial collector stops every request while it
    collects."""
    java = shutil.which("java")
    if java is None:
        raise TestServerError("Java (java) is not on PATH; Java 17 runs the HAPI FHIR test server.")
    jit = [] if full_jit else ["-XX:TieredStopAtLevel=1"]
    gc = ["-XX:+UseSerialGC"] if serial_gc else []
    return [java, f"-Xmx{heap}", *gc, *jit, "-Djava.awt.headless=true",
            f"-Dhapi.port={port}", "-jar", str(jar)]


def is_up(base_url: str, timeout: float = 2.0) -> bool:
    """Whether a FHIR server answers `metadata` there."""
    try:
        reply = requests.get(f"{base_url}/metadata", timeout=timeout,
                             headers={"Accept": "application/fhir+json"})
    except requests.RequestException:
        return False
    return reply.status_code == 200 and '"CapabilityStatement"' in reply.text


def running_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file`, if that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_process(pid_file: Path, say: Say = print, what: str = "HAPI FHIR") -> bool:
    """SIGTERM the process group started with `pid_file` (SIGKILL after 20 s); False if none ran."""
    pid = running_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    for _ in range(40):
        time.sleep(0.5)
        if running_pid_of(pid) is None:
            break
    else:
        os.killpg(pid, signal.SIGKILL)
    say(f"Stopped {what} (pid {pid}).")
    return True


def running_pid_of(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def file_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class TestServer:
    """One throw-away server: built into `home`/hapi-<digest>/, run files in `home`/run/."""

    __test__ = False

    port: int = DEFAULT_PORT
    home: Path | None = None
    heap: str = DEFAULT_HEAP

    def __post_init__(self) -> None:
        self.home = (self.home or default_home()).expanduser().resolve()

    @property
    def build_dir(self) -> Path:
        assert self.home is not None
        return self.home / f"hapi-{source_digest()}"

    @property
    def run_dir(self) -> Path:
        assert self.home is not None
        return self.home / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"hapi-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"hapi-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def pid(self) -> int | None:
        return running_pid(self.pid_file)

    def ensure_built(self, say: Say = print) -> None:
        if needs_build(self.build_dir):
            build(self.build_dir, say)

    def start(self, *, timeout: float = START_TIMEOUT, say: Say = print) -> bool:
        """Build if needed, start in the background, wait until it answers. False when a server
        already answers on the port (nothing is started)."""
        if is_up(self.base_url):
            say(f"A FHIR server already answers at {self.base_url}.")
            return False
        stop_process(self.pid_file, say)  # ours, not answering: start afresh
        self.ensure_built(say)
        command = java_command(self.build_dir / JAR_NAME, self.port, heap=self.heap)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        say(f"Starting the HAPI FHIR test server (pid {process.pid}, log {self.log_file}) ...")
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise TestServerError(f"The HAPI test server exited with status {process.returncode} "
                                      f"while starting (port {self.port} taken?). Last log lines:\n"
                                      f"{file_tail(self.log_file)}")
            if is_up(self.base_url):
                say(f"HAPI FHIR is up at {self.base_url} after {time.monotonic() - started:.0f}s.")
                return True
            time.sleep(1)
        stop_process(self.pid_file, say)
        raise TestServerError(f"The HAPI test server did not answer {self.base_url}/metadata within "
                              f"{timeout:.0f}s. Last log lines:\n{file_tail(self.log_file)}")

    def stop(self, say: Say = print) -> bool:
        stopped = stop_process(self.pid_file, say)
        if not stopped:
            say(f"No test server of ours runs on port {self.port}.")
        return stopped


ACTIONS = ("start", "stop", "status", "build")


def run(action: str, *, port: int = DEFAULT_PORT, home: Path | None = None, timeout: float = START_TIMEOUT,
        say: Say = print) -> int:
    """The `fhir-migrations testserver` command: an exit status."""
    server = TestServer(port=port, home=home)
    if action == "start":
        server.start(timeout=timeout, say=say)
        say(f"Point the tests at it: FHIR_MIGRATIONS['TEST'] = {{'BASE_URL': '{server.base_url}'}} "
            f"or FHIR_MIGRATIONS_TEST_BASE_URL={server.base_url}; stop it with "
            f"`fhir-migrations testserver stop{'' if port == DEFAULT_PORT else f' --port {port}'}`.")
        return 0
    if action == "stop":
        server.stop(say)
        return 0
    if action == "build":
        if needs_build(server.build_dir):
            build(server.build_dir, say)
        else:
            say(f"The HAPI test server in {server.build_dir} is up to date.")
        return 0
    up = is_up(server.base_url)
    pid = server.pid()
    say(f"HAPI FHIR test server at {server.base_url}: {'up' if up else 'down'}"
        f"{f' (pid {pid})' if pid else ''}; built: {'no' if needs_build(server.build_dir) else 'yes'} "
        f"({server.build_dir})")
    return 0 if up else 1


__all__ = ["ACTIONS", "DEFAULT_PORT", "TestServer", "TestServerError", "build", "is_up", "java_command",
           "needs_build", "run", "source_digest"]
