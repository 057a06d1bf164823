"""background.py without a server: which task backends count, how the detached process is
started, and what the page reads back from a run's log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from django_fhir_migrations import background
from django_fhir_migrations.background import EXIT_LINE, BackgroundRunFailed, Launch

try:
    from django_tasks.backends.dummy import DummyBackend
except ImportError:  # the [test] extra is not installed: the tests that need it skip
    DummyBackend = object  # type: ignore[assignment,misc]


class QueueBackend(DummyBackend):
    """Stands for any backend with workers (the database one needs its app installed)."""


@pytest.mark.parametrize("backend, counts", [
    (None, False),  # no TASKS: django-tasks' default, the ImmediateBackend
    ("django_tasks.backends.immediate.ImmediateBackend", False),  # would run inside the request
    ("django_tasks.backends.dummy.DummyBackend", False),  # would never run it
    ("tests.system.test_background.QueueBackend", True),
])
def test_only_a_backend_that_runs_tasks_elsewhere_counts(settings, backend, counts):
    pytest.importorskip("django_tasks")
    if backend is None:
        del settings.TASKS
    else:
        settings.TASKS = {"default": {"BACKEND": backend}}
    assert (background.task_backend() is not None) is counts


def test_a_misconfigured_task_backend_falls_back_to_the_process_and_says_so(settings, caplog):
    pytest.importorskip("django_tasks")
    settings.TASKS = {"default": {"BACKEND": "no.such.Backend"}}
    assert background.task_backend() is None
    assert "no.such.Backend" in caplog.text and "detached process" in caplog.text


def test_the_process_is_manage_py_when_the_server_was_started_by_it(tmp_path, monkeypatch):
    manage = tmp_path / "manage.py"
    manage.write_text("")
    monkeypatch.setattr(sys, "argv", [str(manage), "runserver"])
    assert background.manage_command() == ([sys.executable, str(manage)], str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/gunicorn", "project.wsgi"])
    assert background.manage_command() == ([sys.executable, "-m", "django"], os.getcwd())


def launch_with_log(tmp_path, text: str, pid: int = 0) -> Launch:
    log = tmp_path / "run.log"
    log.write_text(text)
    return Launch("migrate", "process", str(pid or os.getpid()), time.time(), "admin (Django admin)",
                  host=socket.gethostname(), log=str(log))


def test_the_page_reads_a_finished_or_failed_run_from_its_log(tmp_path):
    done = launch_with_log(tmp_path, f"Applying 1 migration(s)...\nApplied 1 migration in 2.0 s.\n\n{EXIT_LINE}0)\n")
    assert done.check() == ("finished", "Applied 1 migration in 2.0 s.")
    failed = launch_with_log(tmp_path, f"CommandError: Migration bad failed.\n\n{EXIT_LINE}1)\n")
    assert failed.check() == ("failed", "CommandError: Migration bad failed.")
    assert not failed.active


def test_a_run_without_its_exit_line_is_running_while_its_process_lives(tmp_path):
    assert launch_with_log(tmp_path, "Applying dir/one...\n").check() == ("running", "Applying dir/one...")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert launch_with_log(tmp_path, "Applying dir/one...\n", pid=gone.pid).check()[0] == "unknown"


def test_a_session_value_of_another_shape_is_no_launch():
    assert Launch.from_dict(None) is None
    assert Launch.from_dict({"action": "migrate"}) is None


def test_the_task_body_fails_with_the_commands_message(settings, clean_env):
    settings.FHIR_MIGRATIONS = {}
    with pytest.raises(BackgroundRunFailed, match="no FHIR server is configured"):
        background.run_fhirmigrate("admin (Django admin)")
