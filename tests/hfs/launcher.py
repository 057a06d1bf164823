"""Build (once per machine), start, wait for, and stop the Helios FHIR Server behind nginx.

    python -m tests.hfs build     # cargo install helios-hfs into the cache folder (20-35 min)
    python -m tests.hfs start     # builds first if the binary is missing
    python -m tests.hfs status
    python -m tests.hfs stop      # stops what this launcher started (by its pids)
    python -m tests.hfs built     # exit 0 if the binary is in the cache (for CI), 1 if not
    python -m tests.hfs url       # the base URL the tests use

Helios (https://github.com/HeliosSoftware/hfs, Rust, SQLite) is the second, independent FHIR R4
server the tool is tested against (INTEROP.md). It is built with `cargo install` from crates.io
into `$XDG_CACHE_HOME/django-fhir-migrations/` (default `~/.cache/...`): the binary at
`hfs-<version>/bin/hfs`, cargo's build folder at `hfs-target/`. The cache outlives the checkout,
so the build (20-35 minutes on 2 cores) happens once per machine, not once per clone.

Helios serves FHIR at `/`; nginx (nginx.py) serves it under `/fhir`, as a deployment behind a
gateway would, and as the tests' HAPI does. Settings:

    HFS_PORT            the port clients use (nginx; default 8091)
    HFS_BACKEND_PORT    Helios' own port (default 8090)
    HFS_PATH            the base path (default /fhir); `/` runs Helios alone on HFS_PORT, no nginx
    HFS_START_TIMEOUT   seconds to wait for `<base>/metadata` (default 120)

Each start begins with an empty SQLite database (`.hfs/hfs-<port>.db`), writes Helios' log to
`.hfs/hfs-<port>.log` and its pids to `.hfs/`. Helios runs with `HFS_VALIDATION_MODE=enforce`
(an invalid resource is refused, as HAPI does), its web UI off, and the R4 search parameters
taken from HAPI's `hapi-fhir-validation-resources-r4` jar (the same HL7 definitions Helios
ships in its repository, which the crate does not carry).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests

from . import nginx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUN_DIR = REPO / ".hfs"
VERSION = "0.2.7"
CRATE = "helios-hfs"
FEATURES = "R4,sqlite"
# The R4 SearchParameter bundle Helios needs in its data folder: in HAPI's validation resources,
# already in the Maven cache once tests/hapi is built (the version tests/hapi/pom.xml uses).
SP_ARTIFACT = ("ca.uhn.hapi.fhir", "hapi-fhir-validation-resources-r4", "8.8.0")
SP_ENTRY = "org/hl7/fhir/r4/model/sp/search-parameters.json"


class LauncherError(RuntimeError):
    pass


# --- where things are ----------------------------------------------------------------------


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/django-fhir-migrations`, shared by every checkout on the machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "django-fhir-migrations"


def install_root() -> Path:
    return cache_root() / f"hfs-{VERSION}"


def binary() -> Path:
    return install_root() / "bin" / "hfs"


def target_dir() -> Path:
    return cache_root() / "hfs-target"


def data_dir() -> Path:
    return install_root() / "data"


def public_port() -> int:
    return _port("HFS_PORT", 8091)


def backend_port() -> int:
    return _port("HFS_BACKEND_PORT", 8090)


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LauncherError(f"{name}={raw!r} is not a TCP port.")
    return int(raw)


def base_path() -> str:
    """HFS_PATH as `/fhir` (one leading slash, none trailing), or `` for the root."""
    path = os.environ.get("HFS_PATH", "/fhir").strip().strip("/")
    return f"/{path}" if path else ""


def proxied() -> bool:
    return bool(base_path())


def base_url() -> str:
    return f"http://127.0.0.1:{public_port()}{base_path()}"


def _server_port() -> int:
    """The port Helios itself listens on: behind nginx its own, alone the public one."""
    return backend_port() if proxied() else public_port()


def run_file(kind: str) -> Path:
    """One set of files per public port: starting or stopping one server never touches another's."""
    return RUN_DIR / f"hfs-{public_port()}.{kind}"


# --- build ---------------------------------------------------------------------------------


def is_built() -> bool:
    return binary().is_file() and os.access(binary(), os.X_OK)


def build() -> None:
    """`cargo install` the pinned version into the cache (cargo waits if another build holds
    the build folder, so two launchers never build it twice at once)."""
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).is_file():
        raise LauncherError("cargo is not on PATH; Rust (cargo, from rustup or Debian's `cargo`) "
                            f"is needed to build {CRATE} {VERSION}.")
    install_root().mkdir(parents=True, exist_ok=True)
    log = install_root() / "build.log"
    command = [cargo, "install", CRATE, "--version", VERSION, "--locked", "--no-default-features",
               "--features", FEATURES, "--root", str(install_root())]
    print(f"Building {CRATE} {VERSION} into {install_root()} (20-35 minutes on 2 cores, once per "
          f"machine; log {log}) ...", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CARGO_TARGET_DIR": str(target_dir())})
    if result.returncode != 0 or not is_built():
        raise LauncherError(f"Building {CRATE} failed (cargo exit {result.returncode}). Last log "
                            f"lines:\n{file_tail(log, 30)}")
    print(f"Built in {(time.monotonic() - started) / 60:.1f} min: {binary()}", flush=True)


def ensure_search_parameters() -> Path:
    """`data/search-parameters-r4.json`, from HAPI's validation-resources jar in the Maven cache
    (fetched there by Maven, `mvn dependency:get`, if tests/hapi has not been built)."""
    target = data_dir() / "search-parameters-r4.json"
    if target.is_file() and target.stat().st_size > 0:
        return target
    group, artifact, version = SP_ARTIFACT
    repo = Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")
    jar = repo.joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.jar")
    if not jar.is_file():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LauncherError(f"{jar} is missing and Maven (mvn) is not on PATH to fetch it.")
        print(f"Fetching {group}:{artifact}:{version} with Maven ...", flush=True)
        subprocess.run([mvn, "-q", "-B", "dependency:get", f"-Dartifact={group}:{artifact}:{version}",
                        f"-Dmaven.repo.local={repo}"], check=False, capture_output=True)
        if not jar.is_file():
            raise LauncherError(f"Maven could not fetch {group}:{artifact}:{version} into {repo}.")
    data_dir().mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar) as archive:
        partial = target.with_suffix(".part")
        partial.write_bytes(archive.read(SP_ENTRY))
        partial.rename(target)
    return target


# --- run -----------------------------------------------------------------------------------


def is_up(timeout: float = 2.0) -> bool:
    try:
        reply = requests.get(f"{base_url()}/metadata", timeout=timeout,
                             headers={"Accept": "application/fhir+json"})
    except requests.RequestException:
        return False
    return reply.status_code == 200 and '"CapabilityStatement"' in reply.text


def server_env() -> dict[str, str]:
    """Helios' settings (its own HFS_* variables; ours are not passed on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFS_")}
    env.update(
        HFS_SERVER_HOST="127.0.0.1",
        HFS_SERVER_PORT=str(_server_port()),
        HFS_BASE_URL=base_url(),  # the public address: links and Locations lead back through nginx
        HFS_DATABASE_URL=str(run_file("db")),  # (not DATABASE_URL, whatever its README says)
        HFS_DATA_DIR=str(data_dir()),
        HFS_VALIDATION_MODE="enforce",
        HFS_UI_ENABLED="false",
        HFS_NL_SEARCH_ENABLED="false",
        HFS_LOG_LEVEL=os.environ.get("HFS_LOG_LEVEL", "warn"),
    )
    return env


def start(timeout: float | None = None) -> bool:
    """Start Helios (and nginx) unless the base URL already answers. True if this call started it."""
    if is_up():
        print(f"Helios is already answering at {base_url()}", flush=True)
        return False
    stop()
    if not is_built():
        build()
    ensure_search_parameters()
    RUN_DIR.mkdir(exist_ok=True)
    timeout = timeout or float(os.environ.get("HFS_START_TIMEOUT", "120"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run_file('db')}{suffix}").unlink(missing_ok=True)
    processes = {"hfs": _spawn([str(binary())], run_file("log"), server_env())}
    run_file("pid").write_text(str(processes["hfs"].pid))
    if proxied():
        proxy = nginx.ensure(cache_root())
        conf = nginx.write_config(listen_port=public_port(), upstream_port=backend_port(),
                                  prefix=base_path(), run_dir=RUN_DIR)
        processes["nginx"] = _spawn(nginx.command(proxy, conf), run_file("nginx.log"), dict(os.environ))
        run_file("nginx-pid").write_text(str(processes["nginx"].pid))
    started = time.monotonic()
    print(f"Starting Helios {VERSION} (pid {processes['hfs'].pid}, log {run_file('log')}) "
          f"{'behind nginx ' if proxied() else ''}...", flush=True)
    while time.monotonic() - started < timeout:
        for name, process in processes.items():
            if process.poll() is not None:
                logs = run_file("log") if name == "hfs" else RUN_DIR / f"nginx-{public_port()}.stderr"
                stop()
                raise LauncherError(f"{name} exited with status {process.returncode} while starting. "
                                    f"Last log lines:\n{file_tail(logs, 30)}")
        if is_up():
            print(f"Helios is up at {base_url()} after {time.monotonic() - started:.1f}s", flush=True)
            return True
        time.sleep(0.5)
    stop()
    raise LauncherError(f"Helios did not answer {base_url()}/metadata within {timeout:.0f}s. "
                        f"Last log lines:\n{file_tail(run_file('log'), 30)}")


def _spawn(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=RUN_DIR,
                                start_new_session=True, env=env)


def stop() -> None:
    """nginx first (no request reaches a stopping Helios), then Helios."""
    _stop("nginx-pid", "nginx")
    _stop("pid", f"Helios {VERSION}")


def _pid(kind: str) -> int | None:
    try:
        pid = int(run_file(kind).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _stop(kind: str, name: str) -> None:
    pid = _pid(kind)
    if pid is None:
        run_file(kind).unlink(missing_ok=True)
        return
    os.killpg(pid, signal.SIGTERM)
    for _ in range(40):
        time.sleep(0.25)
        try:
            os.kill(pid, 0)
        except OSError:
            break
    else:
        os.killpg(pid, signal.SIGKILL)
    run_file(kind).unlink(missing_ok=True)
    print(f"Stopped {name} (pid {pid}).", flush=True)


def ensure_running() -> bool:
    return start()


def file_tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "status"
    try:
        if action == "start":
            start()
        elif action == "stop":
            stop()
        elif action == "build":
            build() if not is_built() else print(f"{binary()} is already built.")
        elif action == "built":
            print(f"{CRATE} {VERSION}: {binary()} {'is built' if is_built() else 'is not built'}")
            return 0 if is_built() else 1
        elif action == "url":
            print(base_url())
        elif action == "status":
            up = is_up()
            proxy = f", nginx pid {_pid('nginx-pid') or '-'}" if proxied() else ""
            print(f"Helios at {base_url()}: {'up' if up else 'down'} (pid {_pid('pid') or '-'}{proxy})")
            return 0 if up else 1
        else:
            print("usage: python -m tests.hfs build|start|stop|status|built|url", file=sys.stderr)
            return 2
    except (LauncherError, nginx.NginxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
