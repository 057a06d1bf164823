"""`fhir-migrations testserver`: a throw-away HAPI FHIR server for a project's migration tests,
built from the package's own sources with Maven into a cache folder."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import requests

from django_fhir_migrations import testserver

from ..support.helpers import run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(*args: str, env: dict[str, str], timeout: float = 900):
    return run([sys.executable, "-m", "django_fhir_migrations", "testserver", *args], env=env, timeout=timeout)


def test_the_package_ships_the_servers_sources_and_never_imports_tests():
    assert (testserver.SOURCES / "pom.xml").is_file()
    java = {p.name for p in (testserver.SOURCES / "src").rglob("*.java")}
    assert {"HapiTestServer.java", "ServerConfig.java"} <= java
    assert "hapi.build.directory" in (testserver.SOURCES / "pom.xml").read_text()
    source = (testserver.SOURCES.parent / "__init__.py").read_text()
    assert "from tests" not in source and "import tests" not in source


def test_without_maven_it_says_what_to_install(tmp_path):
    env = {"PATH": str(tmp_path), "FHIR_MIGRATIONS_TESTSERVER_HOME": str(tmp_path / "home")}
    result = cli("build", env=env)
    assert result.returncode == 1
    assert "Error: Maven (mvn) is not on PATH" in result.stderr and "Java 17" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_a_server_that_is_not_running(tmp_path):
    port = free_port()
    result = cli("status", "--port", str(port), "--cache-dir", str(tmp_path), env={})
    assert result.returncode == 1
    assert f"at http://127.0.0.1:{port}/fhir: down" in result.stdout
    stopped = cli("stop", "--port", str(port), "--cache-dir", str(tmp_path), env={})
    assert stopped.returncode == 0 and "No test server of ours runs" in stopped.stdout


@pytest.mark.slow
def test_testserver_builds_into_the_cache_starts_answers_and_stops(tmp_path):
    """Needs Java 17 and Maven (and Maven Central, or a warm ~/.m2): about a minute."""
    port = free_port()
    home = tmp_path / "cache"
    env = {"FHIR_MIGRATIONS_TESTSERVER_HOME": str(home)}
    started = cli("start", "--port", str(port), env=env)
    try:
        assert started.returncode == 0, started.stderr
        base_url = f"http://127.0.0.1:{port}/fhir"
        assert f"HAPI FHIR is up at {base_url}" in started.stdout
        assert f"FHIR_MIGRATIONS_TEST_BASE_URL={base_url}" in started.stdout
        assert (home / f"hapi-{testserver.source_digest()}" / testserver.JAR_NAME).is_file()
        reply = requests.post(f"{base_url}/Patient", json={"resourceType": "Patient"}, timeout=30,
                              headers={"Content-Type": "application/fhir+json"})
        assert reply.status_code == 201
        status = cli("status", "--port", str(port), env=env)
        assert status.returncode == 0 and ": up (pid " in status.stdout and "built: yes" in status.stdout
    finally:
        stopped = cli("stop", "--port", str(port), env=env)
    assert stopped.returncode == 0 and "Stopped HAPI FHIR" in stopped.stdout
    assert not testserver.is_up(f"http://127.0.0.1:{port}/fhir")
    assert not os.path.exists(home / "run" / f"hapi-{port}.pid")
