"""Users of the seed tool switch without re-running old migrations."""

from __future__ import annotations

import io

import pytest

from django_fhir_migrations import Migration
from django_fhir_migrations.engine.errors import ConfigurationError, MigrationFailedError


def seed_state(fhir, head: str) -> dict:
    """A state resource exactly as the seed tool wrote it: identifier + head in code only."""
    body = {
        "resourceType": "Basic",
        "identifier": [{"system": "http://fhir.migration.system", "value": fhir.state_id}],
        "code": {"coding": [{"system": "http://our.migration.system", "code": head}]},
    }
    reply = fhir.http.post(fhir.url("Basic"), json=body, timeout=30,
                           headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 201
    return reply.json()


def seed_script(fhir, scripts, name: str) -> str:
    """A seed-style script: no-argument functions that talk to the server themselves."""
    return scripts.add(
        name, takes_ctx=False,
        upgrade=(
            "import requests\n"
            f"requests.post({fhir.url('Patient')!r}, json={fhir.patient_code(name)},"
            " headers={'Content-Type': 'application/fhir+json'}, timeout=30).raise_for_status()"
        ),
    )


def facade(fhir, scripts, clean_env) -> Migration:
    clean_env.setenv("FHIR_BASE_URL", fhir.base_url)
    clean_env.setenv("MIGRATION_RESOURCE_ID", fhir.state_id)
    return Migration(migrations_dir=str(scripts.path), stdout=io.StringIO())


def values(fhir) -> list[str]:
    return sorted(p["identifier"][0]["value"] for p in fhir.patients())


def test_seed_state_is_adopted_and_nothing_applied_runs_again(fhir, scripts, clean_env):
    a = seed_script(fhir, scripts, "first")
    b = seed_script(fhir, scripts, "second")
    c = seed_script(fhir, scripts, "third")
    seed_state(fhir, head=b)  # the seed tool applied first and second
    outcome = facade(fhir, scripts, clean_env).run_migrations(direction="upgrade")
    assert [s.revision for s in outcome.done] == [c]
    assert values(fhir) == ["third"]
    # The head field is still where the seed tool reads it; the full list is now recorded.
    assert fhir.state_head() == c
    assert fhir.applied() == [a, b, c]


def test_seed_none_head_string_means_nothing_applied(fhir, scripts, clean_env):
    seed_script(fhir, scripts, "first")
    seed_state(fhir, head="None")
    facade(fhir, scripts, clean_env).run_migrations("upgrade")
    assert values(fhir) == ["first"]


def test_facade_downgrade_reverts_one_and_generate_writes_a_script(fhir, scripts, clean_env):
    a = scripts.add("first")
    b = scripts.add("second")
    migration = facade(fhir, scripts, clean_env)
    migration.run_migrations("upgrade")
    migration.run_migrations("downgrade")
    assert fhir.applied() == [a]
    with pytest.raises(Exception, match="not applied"):
        migration.generate_migration_script(migration_name="third")
    migration.run_migrations("upgrade")
    path = migration.generate_migration_script(migration_name="third")
    assert path.endswith("third.py")
    text = open(path).read()
    assert f'down_revision = "{b}"' in text


def test_facade_failure_raises_with_the_script_named(fhir, scripts, clean_env):
    scripts.add("explodes", upgrade="raise KeyError('missing code')")
    with pytest.raises(MigrationFailedError) as info:
        facade(fhir, scripts, clean_env).run_migrations("upgrade")
    assert info.value.script.name == "explodes"
    assert fhir.applied() == []


def test_facade_uses_migration_scripts_dir_when_no_dir_is_given(fhir, scripts, clean_env):
    scripts.add("only")
    clean_env.setenv("FHIR_BASE_URL", fhir.base_url)
    clean_env.setenv("MIGRATION_RESOURCE_ID", fhir.state_id)
    clean_env.setenv("MIGRATION_SCRIPTS_DIR", str(scripts.path))
    Migration(stdout=io.StringIO()).run_migrations()
    assert len(fhir.applied()) == 1


def test_facade_needs_a_scripts_folder(clean_env):
    with pytest.raises(ConfigurationError, match="MIGRATION_SCRIPTS_DIR"):
        Migration()
