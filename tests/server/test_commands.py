"""The management commands against the real server, each test in its own namespace."""

from __future__ import annotations

import pytest

from django_fhir_migrations.conf import get_settings
from django_fhir_migrations.engine import Project

from ..support.helpers import GRAPH_BREAKAGES, add_patient_migrations, break_graph, call, create_patient, patient_values


def test_migrate_applies_all_in_order_and_records_state(fhir_settings, fhir, scripts):
    revisions = add_patient_migrations(scripts, fhir, "one", "two", "three")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "Applying dir/one" in out and "Applying dir/three" in out
    assert patient_values(fhir) == ["one", "three", "two"]
    assert fhir.state_head() == revisions[-1]
    assert fhir.applied() == revisions
    state = fhir.state()
    assert not any(e["url"].endswith("/migration-lock") for e in state.get("extension", []))


def test_nothing_pending_reads_the_state_once_and_takes_no_lock(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    assert call("fhirmigrate")[0] == 0
    version_before = fhir.state()["meta"]["versionId"]
    project = Project(get_settings())
    outcome = project.migrate()
    assert outcome.done == [] and outcome.exit_code == 0
    assert project.connection.request_count == 1
    assert fhir.state()["meta"]["versionId"] == version_before


def test_failing_migration_stops_the_run_and_is_not_recorded(fhir_settings, fhir, scripts):
    first = scripts.add("first", upgrade=create_patient(fhir, "first"))
    second = scripts.add("second", upgrade="raise ValueError('bad data in second')")
    third = scripts.add("third", upgrade=create_patient(fhir, "third"))
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "second" in err and second in err and "ValueError: bad data in second" in err
    assert "Traceback" not in err
    assert fhir.applied() == [first]
    assert fhir.state_head() == first
    assert patient_values(fhir) == ["first"]
    events = fhir.kept_audit_events()
    if events is not None:  # (Helios keeps none: test_audit.py's no_audit_server tests)
        failed = [e for e in events if e["subtype"][0]["code"] == "failed"]
        assert failed and "bad data in second" in failed[0]["outcomeDesc"]

    # Fix the script; the re-run applies exactly the remaining two.
    scripts.add("second", revision=second, down=first, upgrade=create_patient(fhir, "second"))
    scripts.revisions.pop()
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert out.count("Applying dir/") == 2
    assert fhir.applied() == [first, second, third]
    assert patient_values(fhir) == ["first", "second", "third"]


def test_plan_fake_and_check(fhir_settings, fhir, scripts):
    first, second = add_patient_migrations(scripts, fhir, "one", "two")
    code, out, _ = call("fhirmigrate", "--check")
    assert code == 1 and "one" in out and "two" in out
    code, out, _ = call("fhirmigrate", "--plan")
    assert code == 0 and "upgrade dir/one" in out
    assert fhir.state() is None  # --plan and --check write nothing
    code, out, _ = call("fhirmigrate", first[:8], "--fake")
    assert code == 0 and "FAKED" in out
    assert patient_values(fhir) == []
    assert fhir.applied() == [first]
    code, _, _ = call("fhirmigrate")
    assert patient_values(fhir) == ["two"]
    assert call("fhirmigrate", "--check")[0] == 0


def test_downgrade_one_step_steps_target_and_zero(fhir_settings, fhir, scripts):
    a, b, c, d = add_patient_migrations(scripts, fhir, "a", "b", "c", "d")
    assert call("fhirmigrate")[0] == 0
    code, out, err = call("fhirdowngrade")
    assert code == 0, err
    assert fhir.applied() == [a, b, c] and fhir.state_head() == c
    assert patient_values(fhir) == ["a", "b", "c"]
    assert call("fhirdowngrade", "--steps", "2")[0] == 0
    assert fhir.applied() == [a] and patient_values(fhir) == ["a"]
    assert call("fhirmigrate")[0] == 0
    assert call("fhirdowngrade", "b")[0] == 0  # keep b as the head
    assert fhir.applied() == [a, b]
    assert call("fhirdowngrade", "zero")[0] == 0
    assert fhir.applied() == [] and fhir.state_head() == "None"
    assert patient_values(fhir) == []
    code, out, _ = call("fhirdowngrade")
    assert code == 0 and "No migrations to revert" in out


def test_irreversible_migration_refuses_downgrade(fhir_settings, fhir, scripts):
    scripts.add("one", upgrade=create_patient(fhir, "one"), header="irreversible = True")
    assert call("fhirmigrate")[0] == 0
    code, _, err = call("fhirdowngrade")
    assert code == 1 and "irreversible" in err
    assert len(fhir.applied()) == 1 and patient_values(fhir) == ["one"]


def test_reset_asks_and_then_forgets_without_running_anything(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one", "two")
    assert call("fhirmigrate")[0] == 0
    code, out, _ = call("fhirreset", stdin="no\n")
    assert code == 1 and "cancelled" in out
    assert "ctx.undo() of migrations applied so far will not be possible" in out  # what is lost
    assert "re-adopted with `fhirmigrate --fake`" in out
    assert len(fhir.applied()) == 2
    code, out, err = call("fhirreset", "--noinput")
    assert code == 0, err
    assert fhir.state_head() == "None" and fhir.applied() == []
    assert patient_values(fhir) == ["one", "two"]  # reset changes no data
    events = fhir.kept_audit_events()
    assert events is None or any(e["subtype"][0]["code"] == "reset" for e in events)


def test_showmigrations_lists_applied_pending_and_head(fhir_settings, fhir, scripts):
    a, b = add_patient_migrations(scripts, fhir, "one", "two")
    assert call("fhirmigrate", a)[0] == 0
    code, out, _ = call("fhirshowmigrations")
    assert code == 0
    lines = [line for line in out.splitlines() if "dir/" in line]
    assert lines[0].startswith(" [X] dir/one") and "(head)" in lines[0] and "applied 20" in lines[0]
    assert lines[1].startswith(" [ ] dir/two")
    assert "1 unapplied" in out


def test_makemigration_refuses_while_unapplied_unless_no_check(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    code, _, err = call("fhirmakemigration", "next_step")
    assert code == 1 and "not applied" in err and "--no-check" in err
    assert not list(scripts.path.glob("*next_step.py"))
    assert call("fhirmakemigration", "next_step", "--no-check")[0] == 0
    assert (scripts.path / "0002_next_step.py").exists()


def test_state_naming_an_unknown_revision_is_an_error_and_left_alone(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    assert call("fhirmigrate")[0] == 0
    (scripts.path / "one.py").unlink()
    scripts.revisions.clear()
    add_patient_migrations(scripts, fhir, "other")  # a different history
    version = fhir.state()["meta"]["versionId"]
    code, _, err = call("fhirmigrate")
    assert code == 1 and "no migration script declares" in err
    assert fhir.state()["meta"]["versionId"] == version
    assert patient_values(fhir) == ["one"]


@pytest.mark.parametrize("breakage", ["duplicate", "dangling", "cycle", "two_roots", "two_heads",
                                      "syntax", "missing_upgrade", "import_error"])
def test_graph_and_script_errors_name_the_file_and_write_nothing(fhir_settings, fhir, scripts,
                                                                 breakage):
    a = scripts.add("base_one", upgrade=create_patient(fhir, "x"))
    if breakage in GRAPH_BREAKAGES:
        break_graph(scripts, a, breakage)
    elif breakage == "syntax":
        scripts.write("broken", "revision = 'x'\ndown_revision = None\ndef upgrade(ctx)\n    pass\n")
    elif breakage == "missing_upgrade":
        scripts.write("broken", f"revision = 'x1'\ndown_revision = {a!r}\ndef downgrade(ctx): pass\n")
    elif breakage == "import_error":
        scripts.write("broken", "import no_such_module_here\n")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "Traceback" not in err
    message = err.strip()
    assert message.startswith("CommandError:")
    named = {"duplicate": "copy.py", "dangling": "orphan.py", "cycle": "loop_a.py",
             "two_roots": "another_root.py", "two_heads": "left.py", "syntax": "broken.py",
             "missing_upgrade": "broken.py", "import_error": "broken.py"}[breakage]
    assert named in message
    assert fhir.state() is None
    assert patient_values(fhir) == []


def test_dry_run_prints_writes_and_sends_nothing(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate", "--dry-run")
    assert code == 0, err
    assert "[dry-run] POST Patient" in out
    assert patient_values(fhir) == []
    assert fhir.state() is None


def test_lock_held_by_another_process_times_out_naming_the_holder(fhir_settings, fhir, scripts):
    from django_fhir_migrations.engine.lock import MigrationLock
    from django_fhir_migrations.engine.recorder import StateRecorder

    add_patient_migrations(scripts, fhir, "one")
    project = Project(get_settings())
    recorder = StateRecorder(project.connection, fhir.state_id)
    other = MigrationLock(recorder, ttl=30, command="another deploy", user="alice")
    other.acquire(recorder.read(), timeout=5)
    try:
        code, out, err = call("fhirmigrate", "--lock-timeout", "2")
        assert code == 3
        assert "alice@" in err and "another deploy" in err and "--break-lock" in err
        assert patient_values(fhir) == []
    finally:
        other.release()
    assert call("fhirmigrate")[0] == 0
    assert patient_values(fhir) == ["one"]


def test_break_lock_asks_and_removes_a_dead_holders_lease(fhir_settings, fhir, scripts):
    from django_fhir_migrations.engine.lock import MigrationLock
    from django_fhir_migrations.engine.recorder import StateRecorder

    add_patient_migrations(scripts, fhir, "one")
    project = Project(get_settings())
    recorder = StateRecorder(project.connection, fhir.state_id)
    dead = MigrationLock(recorder, ttl=300, command="crashed deploy", user="bob")
    dead.acquire(recorder.read(), timeout=5)
    dead._stop.set()  # simulate a holder that stopped renewing (it "died")
    code, out, _ = call("fhirmigrate", "--break-lock", stdin="no\n")
    assert code == 1 and "bob@" in out
    assert "its lease was renewed 0s ago, so its holder is probably still running" in out
    assert patient_values(fhir) == []
    code, out, err = call("fhirmigrate", "--break-lock", "--noinput", "--lock-timeout", "1")
    assert code == 0, err
    assert "Broke the migration lock" in out and "Applied 1 migration" in out  # in one run
    assert patient_values(fhir) == ["one"]
    events = fhir.kept_audit_events()
    assert events is None or any(e["subtype"][0]["code"] == "lock-broken" for e in events)
