"""Apply from the admin page through Django's tasks framework, for real: a web server process
(`runserver`) and django-tasks' `db_worker` process share a SQLite database (the database
backend), a browser-like client clicks Apply, the worker runs the migration against the FHIR
server, and the README's chat webhook example hears about it through the signals."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ..support.helpers import REPO
from .test_admin import STATUS_URL, launch_phase, states
from .test_admin_background import slow_append
from .test_large_migrations import appended

pytest.importorskip("django_tasks.backends.database", reason="needs django-tasks with its database backend "
                                                              "(the [test] extra)")

PASSWORD = "pw-tasks-root"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def chat():
    """A chat webhook on loopback: the texts posted to it."""
    posted: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", posted
    server.shutdown()
    server.server_close()


@pytest.fixture
def site(tmp_path, fhir, scripts, clean_env, chat):
    """(base URL of the running web server, the worker process) for a project with a task backend."""
    url, _ = chat
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django_settings_tasks",
           "FHIR_MIGRATIONS_TEST_DB": str(tmp_path / "db.sqlite3"), "CHAT_WEBHOOK_URL": url,
           "FHIR_BASE_URL": fhir.base_url, "FHIR_MIGRATIONS_STATE_ID": fhir.state_id,
           "MIGRATION_SCRIPTS_DIR": str(scripts.path), "FHIR_MIGRATIONS_LOCK_TTL": "10",
           "DJANGO_SUPERUSER_PASSWORD": PASSWORD, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    django = [sys.executable, "-m", "django"]
    for setup in (["migrate", "--noinput", "-v", "0"],
                  ["createsuperuser", "--noinput", "--username", "root", "--email", "root@example.org"]):
        done = subprocess.run([*django, *setup], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    port = free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("web", "worker")}
    web = subprocess.Popen([*django, "runserver", f"127.0.0.1:{port}", "--noreload"], cwd=REPO, env=env,
                           stdout=logs["web"], stderr=subprocess.STDOUT)
    worker = subprocess.Popen([*django, "db_worker", "--interval", "0.5"], cwd=REPO, env=env,
                              stdout=logs["worker"], stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/admin/login/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and web.poll() is None, (tmp_path / "web.log").read_text()
            time.sleep(0.3)
        yield base, worker, tmp_path
    finally:
        for process in (web, worker):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs.values():
            log.close()


def log_in(base: str) -> requests.Session:
    browser = requests.Session()
    form = browser.get(base + "/admin/login/", timeout=10).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    reply = browser.post(base + "/admin/login/?next=" + STATUS_URL, timeout=10, data={
        "username": "root", "password": PASSWORD, "csrfmiddlewaretoken": token, "next": STATUS_URL})
    assert reply.url.endswith(STATUS_URL), reply.url
    return browser


def test_apply_goes_to_the_task_worker_and_the_page_follows_it(site, chat, fhir, scripts):
    base, worker, folder = site
    _, posted = chat
    revision = slow_append(fhir, scripts, 50, 0.2)
    browser = log_in(base)
    confirm = browser.get(base + STATUS_URL + "migrate/", timeout=10).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', confirm).group(1)

    asked = time.monotonic()
    reply = browser.post(base + STATUS_URL + "migrate/", data={"confirm": "yes", "csrfmiddlewaretoken": token},
                         timeout=10, allow_redirects=False)
    took = time.monotonic() - asked
    assert reply.status_code == 302 and took < 2.0, (reply.status_code, took)
    html = browser.get(base + STATUS_URL, timeout=10).text
    assert re.search(r"Applying 1 migration\(s\) in the background \(as task [0-9a-f-]+\)", html), html

    seen = []
    deadline = time.monotonic() + 180
    while not (states(html) == ["applied"] and launch_phase(html) == "finished"):
        assert time.monotonic() < deadline and worker.poll() is None, (
            seen, (folder / "worker.log").read_text()[-3000:])
        time.sleep(0.3)
        html = browser.get(base + STATUS_URL, timeout=10).text
        seen.append((tuple(states(html)), launch_phase(html)))
    assert (("running",), "running") in seen  # the worker ran it while the page watched
    assert fhir.applied() == [revision]
    assert all(len(appended(p)) == 1 for p in fhir.patients())
    assert fhir.appliers() == ["root (Django admin)"]
    # The README's receiver ran in the worker, where the migration was applied.
    assert len(posted) == 1 and posted[0].startswith(f"FHIR migration append applied on {fhir.state_id} "
                                                     "by root (Django admin) in ")
