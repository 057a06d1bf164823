"""The whole cycle, as a user does it: a new Django project, real manage.py processes."""

from __future__ import annotations

import re
import sys

from ..support.helpers import run


def manage(project, *args, stdin=None):
    return run([sys.executable, "manage.py", *args], cwd=project, stdin=stdin)


def test_full_cycle_from_a_new_django_project(tmp_path, fhir, clean_env):
    assert run([sys.executable, "-m", "django", "startproject", "clinicsite", str(tmp_path)]).returncode == 0
    assert manage(tmp_path, "startapp", "clinic").returncode == 0
    settings = tmp_path / "clinicsite" / "settings.py"
    settings.write_text(settings.read_text() + (
        '\nINSTALLED_APPS += ["django_fhir_migrations", "clinic"]\n'
        f'FHIR_MIGRATIONS = {{"BASE_URL": {fhir.base_url!r}, "STATE_ID": {fhir.state_id!r}}}\n'
    ))

    made = manage(tmp_path, "fhirmakemigration", "add_demo_patient", "--app", "clinic")
    assert made.returncode == 0, made.stderr
    script = tmp_path / "clinic" / "fhir_migrations" / "0001_add_demo_patient.py"
    source = script.read_text()
    revision = re.search(r'^revision = "([0-9a-f]{32})"$', source, re.M).group(1)
    assert "down_revision = None" in source

    # The user edits the generated script.
    query = f"{fhir.system}|demo"
    source = re.sub(
        r"def upgrade\(ctx\):.*",
        f"def upgrade(ctx):\n    ctx.conditional_create({fhir.patient_code('demo')}, {{'identifier': {query!r}}})\n\n\n"
        f"def downgrade(ctx):\n    for p in ctx.search('Patient', identifier={query!r}):\n        ctx.delete(p)\n",
        source, flags=re.S,
    )
    script.write_text(source)

    migrated = manage(tmp_path, "fhirmigrate")
    assert migrated.returncode == 0, migrated.stderr
    assert len(fhir.patients()) == 1

    shown = manage(tmp_path, "fhirshowmigrations")
    assert shown.returncode == 0
    row = next(line for line in shown.stdout.splitlines() if "add_demo_patient" in line)
    assert row.startswith(" [X] clinic/0001_add_demo_patient") and "(head)" in row

    # The state, read with plain HTTP: head in code.coding[0].code, and the applied list.
    state = fhir.state()
    assert state["code"]["coding"][0] == {"system": "http://our.migration.system", "code": revision}
    applied = [e for e in state["extension"] if e["url"].endswith("/applied-migration")]
    fields = {sub["url"]: next(v for k, v in sub.items() if k.startswith("value"))
              for sub in applied[0]["extension"]}
    assert fields["revision"] == revision
    assert fields["name"] == "0001_add_demo_patient"
    assert fields["checksum"].startswith("sha256:")
    assert fields["appliedAt"].startswith("20") and "appliedBy" in fields and "durationMs" in fields

    reverted = manage(tmp_path, "fhirdowngrade")
    assert reverted.returncode == 0, reverted.stderr
    assert fhir.patients() == []
    assert fhir.state_head() == "None"

    again = manage(tmp_path, "fhirmigrate")
    assert again.returncode == 0, again.stderr
    assert len(fhir.patients()) == 1
    assert fhir.state_head() == revision

    # A user mistake: a clear one-line error, exit 1, no traceback (unless asked for).
    wrong = manage(tmp_path, "fhirmigrate", "no_such_migration")
    assert wrong.returncode == 1
    assert "No migration matches 'no_such_migration'" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    traced = manage(tmp_path, "fhirmigrate", "no_such_migration", "--traceback")
    assert "Traceback" in traced.stderr
