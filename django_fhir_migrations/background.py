"""`fhirmigrate --noinput` away from the web request, for the admin page's buttons.

A data migration can run for hours; a web request is cut by the server's timeout and holds a
worker meanwhile. So the admin page never runs one itself: `start` hands it to Django's tasks
framework when a backend that runs tasks elsewhere is configured (`django.tasks` on Django 6,
the `django-tasks` package below it; the default ImmediateBackend would run it inside the
request, the DummyBackend never), and otherwise starts a detached `manage.py fhirmigrate
--noinput` process with its output in a log file. Either way the run is exactly what the
command runs (commands.migrate, with the console and the signals listening), as the person who
clicked.

The page follows the run from the state on the FHIR server (the lease, the attempt's progress),
which is true however and wherever the run was started. What `start` returns, a `Launch`, only
covers what the state cannot show: the seconds before the run takes the lease, and a run that
stopped before it could record anything (bad settings, a broken worker). It is kept in the
clicking user's session.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings

from . import commands
from .conf import get_settings
from .console import DJANGO, Console, stream_writer
from .engine import FhirMigrationError, Project
from .engine.redaction import scrub
from .signals import SignalSender

logger = logging.getLogger("django_fhir_migrations")
ACTIONS = {"migrate": (), "cancel": ("--cancel",)}  # what the page can start, as fhirmigrate flags
LOG_TAIL_BYTES = 4096
EXIT_LINE = "(fhirmigrate exited with status "
# Backends that would not run the task elsewhere: the first inside the web request, the second never.
NOT_IN_BACKGROUND = ("ImmediateBackend", "DummyBackend")


class BackgroundRunFailed(Exception):
    """A background run ended with a non-zero status; its message is what the console said
    (scrubbed), so a task backend stores no traceback of a script's exception."""


@dataclass
class Launch:
    """How a background run was started: `how` is "task" (`ref` the task result id) or
    "process" (`ref` the pid, on `host`, output in `log`)."""

    action: str
    how: str
    ref: str
    started_at: float
    by: str
    host: str = ""
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Launch | None:
        try:
            return cls(**data)
        except TypeError:  # an older session's shape, or none
            return None

    def check(self) -> tuple[str, str]:
        """(phase, detail): phase "queued", "running", "finished", "failed" or "unknown";
        detail the task's error or the log's last line."""
        if self.how == "task":
            return _task_phase(self.ref)
        return _process_phase(self)

    @property
    def active(self) -> bool:
        return self.check()[0] in ("queued", "running")


# --- starting ------------------------------------------------------------------------------


def start(action: str, *, applied_by: str) -> Launch:
    """Start `fhirmigrate --noinput` (plus the action's flags) in the background, as `applied_by`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown background action {action!r}")
    backend = task_backend()
    if backend is not None:
        from .tasks import fhirmigrate

        result = fhirmigrate.using(backend=backend.alias).enqueue(applied_by, action == "cancel")
        return Launch(action, "task", str(result.id), time.time(), applied_by)
    return _start_process(action, applied_by)


def task_backend() -> Any | None:
    """The default task backend, when one is configured that runs tasks outside this process."""
    try:
        from django.tasks import task_backends  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from django_tasks import task_backends  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            return None
    try:
        backend = task_backends["default"]
    except Exception as exc:  # noqa: BLE001 - misconfigured: the process way still works
        logger.warning("The default task backend cannot be used (%s); the admin page runs migrations "
                       "as a detached process instead.", exc)
        return None
    return None if type(backend).__name__ in NOT_IN_BACKGROUND else backend


def _start_process(action: str, applied_by: str) -> Launch:
    command, cwd = manage_command()
    env = dict(os.environ, FHIR_MIGRATIONS_USER=applied_by, PYTHONUNBUFFERED="1")
    # (None under override_settings, as in tests: then the environment's, which they set.)
    settings_module = getattr(django_settings, "SETTINGS_MODULE", None) or os.environ.get("DJANGO_SETTINGS_MODULE")
    if settings_module:
        env["DJANGO_SETTINGS_MODULE"] = settings_module
        root = _import_root(settings_module)
        if root:  # `python -m django` must import the settings as this process did
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    folder = Path(tempfile.gettempdir()) / "django-fhir-migrations"
    folder.mkdir(mode=0o700, exist_ok=True)
    state_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in get_settings().state_id)
    log = folder / f"fhirmigrate-{action}-{state_id}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as out:
        process = subprocess.Popen(
            [*command, "fhirmigrate", "--noinput", *ACTIONS[action]], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the web server's process group: its signals are not ours
        )
    # Reaped here, so it leaves no zombie behind; its exit status ends the log.
    threading.Thread(target=_reap, args=(process, log), daemon=True, name="fhirmigrate-reaper").start()
    return Launch(action, "process", str(process.pid), time.time(), applied_by,
                  host=socket.gethostname(), log=str(log))


def manage_command() -> tuple[list[str], str]:
    """(argv prefix, working directory) that runs a management command of this project:
    manage.py when this process was started by it, else `python -m django`."""
    python = python_executable()
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "manage.py" and script.is_file():
        script = script.resolve()
        return [python, str(script)], str(script.parent)
    return [python, "-m", "django"], os.getcwd()


def python_executable() -> str:
    """This interpreter, even under an embedding server (uWSGI's sys.executable is uwsgi)."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    for name in ("python3", "python"):
        candidate = Path(sys.exec_prefix) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return shutil.which("python3") or sys.executable


def _import_root(module: str) -> str:
    """The folder the settings module's top package was imported from."""
    package = sys.modules.get(module.split(".")[0])
    origin = getattr(package, "__file__", None)
    if not origin:
        return ""
    path = Path(origin).resolve().parent
    return str(path.parent if path.name == module.split(".")[0] else path)


def _reap(process: subprocess.Popen, log: Path) -> None:
    code = process.wait()
    try:
        with open(log, "a") as out:
            out.write(f"\n{EXIT_LINE}{code})\n")
    except OSError:
        pass


# --- following -------------------------------------------------------------------------------


def _task_phase(result_id: str) -> tuple[str, str]:
    backend = task_backend()
    if backend is None or not getattr(backend, "supports_get_result", False):
        return "unknown", ""
    try:
        result = backend.get_result(result_id)
    except Exception:  # noqa: BLE001 - pruned, or the backend changed since
        return "unknown", ""
    status = str(getattr(result.status, "value", result.status)).upper()
    if status in ("SUCCEEDED", "SUCCESSFUL", "COMPLETE"):
        return "finished", ""
    if status == "FAILED":
        errors = getattr(result, "errors", None) or []
        text = errors[-1].traceback.strip().splitlines()[-1] if errors and errors[-1].traceback else ""
        return "failed", scrub(text)
    if status == "RUNNING":
        return "running", ""
    return "queued", ""


def _process_phase(launch: Launch) -> tuple[str, str]:
    last = _last_line(launch.log)
    if last.startswith(EXIT_LINE):
        code = last[len(EXIT_LINE):].rstrip(")")
        before = _last_line(launch.log, skip=1)
        return ("finished" if code == "0" else "failed"), before
    if launch.host != socket.gethostname():
        return "unknown", last
    try:
        os.kill(int(launch.ref), 0)
    except (OSError, ValueError):
        return "unknown", last  # gone without its status written (the web worker was restarted)
    return "running", last


def _last_line(path: str, skip: int = 0) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LOG_TAIL_BYTES))
            lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return scrub(lines[-1 - skip].strip()) if len(lines) > skip else ""


# --- what the task runs ----------------------------------------------------------------------


def run_fhirmigrate(applied_by: str, *, cancel: bool = False) -> int:
    """`manage.py fhirmigrate --noinput [--cancel]`, in this process: the same verb, console and
    signals, as `applied_by`. Raises BackgroundRunFailed when it would exit non-zero."""
    errors: list[str] = []

    def err(text: str) -> None:
        errors.append(text)
        sys.stderr.write(text + "\n")

    console = Console(DJANGO, out=stream_writer(sys.stdout), err=err, interactive=False)
    try:
        settings = get_settings().with_overrides(applied_by=applied_by)
        project = Project(settings, listeners=[console.on_event, SignalSender(settings)],
                          command="manage.py fhirmigrate (task)", source=source_name())
        try:
            code = commands.migrate(project, console, {"cancel": cancel, "interactive": False})
        finally:
            project.close()
    except FhirMigrationError as exc:
        raise BackgroundRunFailed(console.error_text(exc)) from None
    if code:
        raise BackgroundRunFailed(errors[-1] if errors else f"fhirmigrate ended with status {code}")
    return code


def source_name() -> str:
    """The application named in AuditEvents: the project package, as the commands name it."""
    return getattr(django_settings, "ROOT_URLCONF", "").split(".")[0] or "django project"


__all__ = ["BackgroundRunFailed", "Launch", "run_fhirmigrate", "start", "task_backend"]
