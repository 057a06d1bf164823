"""The example project (what `make demo` runs): its scripts work up and down on the server."""

from __future__ import annotations

import sys

from ..support.helpers import REPO, run

COHORT = "urn:example:fhir-migrations-cohort"
STUDY = "http://example.org/fhir/sid/study-2026"
DEMO = "urn:example:fhir-migrations-demo|demo-patient-1"


def manage(fhir, *args):
    env = {"FHIR_BASE_URL": fhir.base_url, "FHIR_MIGRATIONS_STATE_ID": fhir.state_id}
    result = run([sys.executable, "manage.py", *args], cwd=REPO / "example_project", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_example_migrations_apply_and_revert(fhir):
    out = manage(fhir, "fhirmigrate")
    assert "Applying 5 migration(s)" in out
    cohort = fhir.search("Patient", identifier=f"{COHORT}|")
    assert len(cohort) == 200
    assert all(any(i["system"] == STUDY for i in p["identifier"]) for p in cohort)
    [demo] = fhir.search("Patient", identifier=DEMO)
    assert {i["system"] for i in demo["identifier"]} >= {
        "http://example.org/fhir/sid/national-id", "http://hospital.example.org/mrn"}

    manage(fhir, "fhirdowngrade", "--steps", "4")
    assert fhir.search("Patient", identifier=DEMO) == []
    assert fhir.search("Patient", identifier=f"{STUDY}|") == []
    untagged = fhir.search("Patient", identifier=f"{COHORT}|")
    assert len(untagged) == 200
    # tag_cohort's downgrade is ctx.undo(): each Patient has its created content back (as version 3)
    assert {p["meta"]["versionId"] for p in untagged} == {"3"}
    assert all([i["system"] for i in p["identifier"]] == [COHORT] for p in untagged)
    manage(fhir, "fhirdowngrade", "zero")
    assert fhir.search("Patient", identifier=f"{COHORT}|") == []


def test_the_example_projects_own_tests_use_the_testing_helper_on_the_test_server(fhir, dead_url):
    # BASE_URL (the "development" server) is down; the tests run on the TEST server only.
    env = {"FHIR_BASE_URL": dead_url, "FHIR_MIGRATIONS_TEST_BASE_URL": fhir.base_url}
    result = run([sys.executable, "manage.py", "test", "patients"], cwd=REPO / "example_project", env=env)
    assert result.returncode == 0, result.stderr
    assert "Ran 1 test" in result.stderr and "OK" in result.stderr
    assert fhir.search("Patient", identifier=DEMO) == []  # the tester reverted what it applied


def test_the_example_projects_tests_refuse_the_development_server(fhir, tmp_path):
    (tmp_path / "no_test_server.py").write_text(
        "from example_project.settings import *  # noqa\n"
        "FHIR_MIGRATIONS = {k: v for k, v in FHIR_MIGRATIONS.items() if k != 'TEST'}\n")
    env = {"FHIR_BASE_URL": fhir.base_url, "DJANGO_SETTINGS_MODULE": "no_test_server",
           "PYTHONPATH": str(tmp_path)}
    result = run([sys.executable, "manage.py", "test", "patients"], cwd=REPO / "example_project", env=env)
    assert result.returncode != 0
    assert "TestServerRequiredError" in result.stderr and "allow_dev_server=True" in result.stderr
    assert fhir.search("Patient", identifier=DEMO) == []  # nothing ran on it
