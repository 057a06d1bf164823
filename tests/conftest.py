"""Fixtures: the FHIR server (FHIR_BASE_URL, or the local HAPI started once per session),
one isolated namespace per test, a scripts folder, and Django settings pointing at both."""

from __future__ import annotations

import os
import signal
import socket
import uuid

import pytest
import requests

from .support.helpers import FhirNamespace, ScriptsDir
from .support.hostile import HostileProxy, refuse_audit_events

# The CLI, Flask and the facade have no SECRET_KEY to fall back on: every process the tests
# start signs (and verifies) Provenance with this key, as Django's test settings do with theirs.
TEST_SIGNING_KEY = "tests-only-signing-key"
os.environ.setdefault("FHIR_MIGRATIONS_SIGNING_KEY", TEST_SIGNING_KEY)


def pytest_collection_modifyitems(items):
    """A test needs a FHIR server exactly when it uses the server fixture (directly or through
    fhir, fhir_settings ...): mark it so, and `pytest -m "not server"` runs everything else
    without HAPI (or Java)."""
    for item in items:
        if "fhir_base_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def fhir_base_url():
    """Any FHIR server given by FHIR_BASE_URL; otherwise the local test server, started here:
    HAPI, or Helios with FHIR_TEST_SERVER=hfs (`make test-hfs`)."""
    given = os.environ.get("FHIR_BASE_URL")
    if given:
        yield given.rstrip("/")
        return
    server = os.environ.get("FHIR_TEST_SERVER", "hapi").strip().lower() or "hapi"
    if server == "hfs":
        from .hfs import launcher
    elif server == "hapi":
        from .hapi import launcher  # type: ignore[no-redef]
    else:
        raise pytest.UsageError(f"FHIR_TEST_SERVER={server!r}: use `hapi` (default) or `hfs`.")

    started = launcher.ensure_running()
    try:
        yield launcher.base_url()
    finally:
        if started:
            launcher.stop()


@pytest.fixture
def fhir(fhir_base_url):
    token = uuid.uuid4().hex[:12]
    session = requests.Session()
    namespace = FhirNamespace(
        base_url=fhir_base_url,
        state_id=f"test-{token}",
        system=f"urn:django-fhir-migrations:test:{token}",
        http=session,
    )
    yield namespace
    try:
        namespace.cleanup()
    except requests.RequestException:
        pass
    session.close()


@pytest.fixture
def scripts(tmp_path):
    folder = tmp_path / "fhir_scripts"
    folder.mkdir()
    return ScriptsDir(folder)


@pytest.fixture
def clean_env(monkeypatch):
    """No FHIR_*/MIGRATION_* variables from the outside world leak into a test, nor
    pytest-django's DJANGO_SETTINGS_MODULE (the CLI warns inside a Django project)."""
    for name in list(os.environ):
        if name.startswith(("FHIR_MIGRATIONS_", "MIGRATION_")) or name in ("FHIR_BASE_URL",
                                                                          "DJANGO_SETTINGS_MODULE"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FHIR_MIGRATIONS_SIGNING_KEY", TEST_SIGNING_KEY)  # the project's secret
    return monkeypatch


@pytest.fixture
def dead_url():
    """A base URL nothing listens on (a port just bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/fhir"


@pytest.fixture
def offline_settings(settings, scripts, clean_env, dead_url):
    """Django settings for a test about a server that is down: no real server is needed."""
    settings.FHIR_MIGRATIONS = {
        "BASE_URL": dead_url,
        "STATE_ID": f"offline-{uuid.uuid4().hex[:12]}",
        "SCRIPTS_DIRS": [str(scripts.path)],
        "RETRIES": 0,
        "TIMEOUT": 2,
    }
    return settings.FHIR_MIGRATIONS


@pytest.fixture
def fhir_settings(settings, fhir, scripts, clean_env):
    """Django settings for a test that talks to the server in its own namespace."""
    settings.FHIR_MIGRATIONS = {
        "BASE_URL": fhir.base_url,
        "STATE_ID": fhir.state_id,
        "SCRIPTS_DIRS": [str(scripts.path)],
        "LOCK_TIMEOUT": 20,
        "LOCK_TTL": 10,
        "RETRIES": 2,
        "TIMEOUT": 30,
    }
    return settings.FHIR_MIGRATIONS


NO_AUDIT_EVENTS = ("the server keeps no AuditEvents from clients (its CapabilityStatement offers no "
                   "create for AuditEvent; Helios refuses them, 405): what the tool does there is "
                   "tested with the no_audit_server fixture")


@pytest.fixture
def keeps_audit_events(fhir):
    """For tests of what the AuditEvents say: skipped, saying why, on a server that keeps none."""
    if not fhir.keeps_audit_events:
        pytest.skip(NO_AUDIT_EVENTS)


@pytest.fixture
def catcher():
    """Another origin on loopback that records every request reaching it (tests/support/hostile.py)."""
    from .support.hostile import Catcher

    server = Catcher().start()
    yield server
    server.stop()


@pytest.fixture
def background_settings(fhir_settings, fhir, scripts, clean_env):
    """fhir_settings, also for the processes the admin page starts in the background: they read
    the settings module and the environment, not this test's overrides."""
    clean_env.setenv("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    clean_env.setenv("FHIR_BASE_URL", fhir.base_url)
    clean_env.setenv("FHIR_MIGRATIONS_STATE_ID", fhir.state_id)
    clean_env.setenv("MIGRATION_SCRIPTS_DIR", str(scripts.path))
    for key in ("LOCK_TIMEOUT", "LOCK_TTL", "RETRIES", "TIMEOUT"):
        clean_env.setenv(f"FHIR_MIGRATIONS_{key}", str(fhir_settings[key]))
    return fhir_settings


@pytest.fixture
def launches(monkeypatch):
    """Every background run a test starts; any still running at the end is stopped."""
    from django_fhir_migrations import background

    started: list[background.Launch] = []
    start = background.start

    def recording(*args, **kwargs):
        launch = start(*args, **kwargs)
        started.append(launch)
        return launch

    monkeypatch.setattr(background, "start", recording)
    yield started
    for launch in started:
        if launch.how == "process":
            try:
                os.killpg(int(launch.ref), signal.SIGKILL)  # its own session: the pid is the group
            except OSError:
                pass


@pytest.fixture
def no_audit_server(fhir_settings, fhir):
    """A server that keeps no AuditEvents from clients: the server itself where it refuses them
    (Helios: 405, no `create` in its CapabilityStatement), else the real server behind a proxy
    that does the same. Always behind the proxy, which counts the requests; fhir_settings'
    BASE_URL is the proxy's."""
    proxy = HostileProxy(fhir.base_url).start()
    if fhir.keeps_audit_events:
        refuse_audit_events(proxy)
    fhir_settings["BASE_URL"] = proxy.base_url
    yield proxy
    proxy.stop()
