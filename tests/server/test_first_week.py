"""A Django developer's first week (issue 16): the habits they bring and the mistakes they make,
each as the tool now answers them, against the real HAPI where the server is involved."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys

from django.core import checks as django_checks

from django_fhir_migrations.console import DJANGO, Console
from django_fhir_migrations.engine.events import EventStream

from ..support.helpers import REPO, add_patient_migrations, call, patient_values


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/fhir"


# 1. batch.delete(resource) ----------------------------------------------------------------------


def test_batch_delete_takes_a_resource_or_a_type_and_id_and_refuses_neither(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "a", "b")
    assert call("fhirmigrate")[0] == 0
    scripts.add("wrong", upgrade="with ctx.batch() as b:\n    b.delete('Patient')")
    code, _, err = call("fhirmigrate")
    assert code == 1 and "TypeError" in err and "names no resource" in err
    scripts.add("wrong", revision=scripts.revisions.pop(), down=scripts.revisions[-1], upgrade=(
        f"[a, b] = ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True)\n"
        "with ctx.batch() as batch:\n"
        "    batch.delete(a)\n"
        "    batch.delete('Patient', b['id'])\n"))
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == []


# 2. failures as counts, never bodies ---------------------------------------------------------------


def test_a_failed_batch_reports_counts_and_ids_never_resources(fhir_settings, fhir, scripts):
    secret = "Clinical-Detail-Xq93"
    scripts.add("bad", upgrade=(
        "with ctx.batch() as b:\n"
        "    for i in range(300):\n"
        f"        b.create({{'resourceType': 'Patient', 'birthDate': 'never', 'name': [{{'family': {secret!r}}}], "
        f"'identifier': [{{'system': {fhir.system!r}, 'value': f'x{{i}}'}}]}})\n"))
    code, out, err = call("fhirmigrate")
    assert code == 1
    # An invalid resource: 400 (HAPI) or 422 (Helios, as the spec suggests), the server's choice.
    assert "300 entries failed" in err and re.search(r"\b300 x (400|422)\b", err), err
    assert secret not in out + err
    assert len(out + err) < 4000
    events = fhir.kept_audit_events()
    if events is not None:
        [failed] = [e for e in events if e["outcome"] == "8"]
        assert secret not in str(failed) and len(failed.get("outcomeDesc", "")) < 1500


# 3. a merge needs no server ---------------------------------------------------------------------


def test_a_merge_never_needs_the_server(fhir_settings, settings, fhir, scripts):
    base = scripts.add("base")
    scripts.add("left", down=base)
    scripts.add("right", down=base)
    code, _, err = call("fhirmigrate")
    assert code == 1 and "--merge" in err
    settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=dead_url())
    code, out, err = call("fhirmakemigration", "--merge")
    assert code == 0, err
    merged = sorted(p.name for p in scripts.path.glob("*_merge_*.py"))
    assert merged and merged[0].startswith("0004_")  # the next number
    settings.FHIR_MIGRATIONS = fhir_settings
    assert call("fhirmigrate")[0] == 0 and len(fhir.applied()) == 4


# 5. checksum drift has a way out ------------------------------------------------------------------


def test_accept_checksums_records_the_edit_and_downgrade_warns(fhir_settings, fhir, scripts):
    one = scripts.add("one", downgrade="pass")
    assert call("fhirmigrate")[0] == 0
    scripts.add("one", revision=one, down=None, upgrade="x = 1", downgrade="pass")  # edited
    scripts.revisions.pop()
    code, _, err = call("fhirmigrate", "--ignore-checksums")
    code, out, err = call("fhirmigrate")
    assert code == 1 and "--accept-checksums" in err
    code, out, err = call("fhirmigrate", "--plan")
    assert (out + err).count("edited after they ran") == 1  # warned once
    code, out, err = call("fhirmigrate", "--accept-checksums")
    assert code == 0 and "Accepted the edited" in out
    assert call("fhirmigrate")[0] == 0
    events = fhir.kept_audit_events()
    assert events is None or any(e["subtype"][0]["code"] == "checksums-accepted" for e in events)
    scripts.add("one", revision=one, down=None, upgrade="x = 2", downgrade="pass")  # edited again
    scripts.revisions.pop()
    code, out, err = call("fhirdowngrade")
    assert code == 0 and "edited since it was applied" in out


# 6. makemigration without a server ----------------------------------------------------------------


def test_makemigration_without_a_server_says_to_use_no_check(offline_settings, settings, scripts):
    scripts.add("first")
    code, _, err = call("fhirmakemigration", "second")
    assert code == 1 and "--no-check" in err
    settings.FHIR_MIGRATIONS = {k: v for k, v in offline_settings.items() if k != "BASE_URL"}
    code, _, err = call("fhirmakemigration", "second")
    assert code == 1 and "--no-check" in err
    assert call("fhirmakemigration", "second", "--no-check")[0] == 0


# 7. a syntax error does not stop Django ------------------------------------------------------------


def test_a_broken_script_warns_in_checks_fails_fhir_commands_and_hides_nothing(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "good")
    assert call("fhirmigrate")[0] == 0
    scripts.write("0002_broken", "revision = 'x'\ndef upgrade(:\n")
    everyday = django_checks.run_checks(tags=["fhir_migrations"])
    assert [m.id for m in everyday] == ["fhir_migrations.E003"]
    assert all(m.level == django_checks.WARNING for m in everyday)  # migrate/runserver/test go on
    deploy = django_checks.run_checks(tags=["fhir_migrations"], include_deployment_checks=True)
    assert any(m.id == "fhir_migrations.E010" and m.level == django_checks.ERROR for m in deploy)
    assert call("fhirmigrate")[0] == 1
    code, out, err = call("fhirshowmigrations")
    assert code == 1
    assert " [X] dir/good" in out and "[!] dir/0002_broken" in out  # its folder's label
    assert "All migrations are applied." not in out
    assert "All loadable migrations are applied; 1 script(s) cannot be loaded" in out
    assert "(no migration scripts found)" not in out


# 8. branches in graph order -------------------------------------------------------------------


def test_showmigrations_shows_graph_order_and_the_branches(fhir_settings, fhir, scripts):
    base = scripts.add("zz_base")
    scripts.add("b_left", down=base)
    scripts.add("a_right", down=base)
    code, out, _ = call("fhirshowmigrations")
    rows = [line for line in out.splitlines() if line.startswith(" [")]
    assert rows[0].startswith(" [ ] dir/zz_base")  # the root first, not alphabetical
    assert sum("(branch head)" in r for r in rows) == 2
    assert "Branches: 2 heads" in out and "fhirmakemigration --merge" in out


# 9. offline is unknown, not unapplied ---------------------------------------------------------------


def test_offline_shows_unknown(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    assert call("fhirmigrate")[0] == 0
    code, out, _ = call("fhirshowmigrations", "--offline")
    assert code == 0 and " [?] dir/one" in out and "unknown" in out


# 10. older targets and relative targets --------------------------------------------------------


def test_an_older_target_names_the_downgrade_and_relative_targets_work(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one", "two", "three")
    code, out, _ = call("fhirmigrate", "+1")
    assert code == 0 and patient_values(fhir) == ["one"]
    assert call("fhirmigrate", "+2")[0] == 0 and patient_values(fhir) == ["one", "three", "two"]
    code, out, _ = call("fhirmigrate", "one")
    assert code == 0 and "below the head" in out and "fhirdowngrade one" in out
    assert call("fhirdowngrade", "-2")[0] == 0 and patient_values(fhir) == ["one"]
    code, _, err = call("fhirdowngrade", "+1")
    assert code == 1 and "relative target for migrate" in err


# 11. fhirhistory ----------------------------------------------------------------------------------


def test_history_lists_what_happened_newest_first(fhir_settings, fhir, scripts):
    add_patient_migrations(scripts, fhir, "one")
    scripts.add("boom", upgrade="raise ValueError('no')")
    call("fhirmigrate")
    assert call("fhirreset", "--noinput")[0] == 0
    code, out, _ = call("fhirhistory")
    assert code == 0
    events = [line.split()[2] for line in out.splitlines() if line.startswith("  20")]
    if fhir.keeps_audit_events:
        assert events[:3] == ["reset", "failed", "applied"]
        assert "FAILED" in out and "ValueError: no" in out and "by " in out
    else:  # Helios: the state is all there is, and reset emptied it; history says why
        assert events == [] and "keeps no AuditEvents from clients" in out
        assert "(nothing recorded yet)" in out


# 13. the CLI inside a Django project ---------------------------------------------------------------


def test_the_cli_inside_a_django_project_says_to_use_manage_py(fhir, scripts, tmp_path):
    (tmp_path / "manage.py").write_text("# a Django project\n")
    env = dict(os.environ, FHIR_BASE_URL=fhir.base_url, MIGRATION_SCRIPTS_DIR=str(scripts.path),
               PYTHONPATH=str(REPO))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("MIGRATION_RESOURCE_ID", None)
    env.pop("FHIR_MIGRATIONS_STATE_ID", None)
    result = subprocess.run([sys.executable, "-m", "django_fhir_migrations", "migrate", "--plan"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "manage.py" not in result.stderr  # --plan changes nothing: no warning
    result = subprocess.run([sys.executable, "-m", "django_fhir_migrations", "migrate", "--state-id",
                             fhir.state_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Warning" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "django_fhir_migrations", "reset", "--noinput"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "python manage.py fhir" in result.stderr and "--state-id" in result.stderr


# 14. the admin page ---------------------------------------------------------------------------------


def test_the_admin_page_does_not_offer_apply_while_the_lock_is_held(fhir_settings, fhir, scripts, admin_client):
    from .test_admin import hold_lock

    add_patient_migrations(scripts, fhir, "one")
    project, lock = hold_lock(fhir, "someone")
    try:
        page = admin_client.get("/admin/django_fhir_migrations/migrationstatus/").content.decode()
        assert 'id="migrate-action"' not in page and 'id="apply-blocked"' in page
        assert "holds the lock" in page
    finally:
        lock.release()
        project.close()
    page = admin_client.get("/admin/django_fhir_migrations/migrationstatus/").content.decode()
    assert 'id="migrate-action"' in page


def test_the_readme_names_the_admin_page_and_its_permission():
    readme = (REPO / "README.md").read_text()
    assert "/admin/django_fhir_migrations/migrationstatus/" in readme
    assert "manage.py migrate` creates it" in readme


# 15. progress -----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_one_summary_line_a_bar_once_and_lines_without_a_terminal(fhir_settings, fhir, scripts,
                                                                            monkeypatch):
    add_patient_migrations(scripts, fhir, "one", "two")
    code, out, _ = call("fhirmigrate")
    assert out.strip().splitlines()[-1].startswith("Applied 2 migrations in ")
    from django_fhir_migrations import console as console_module
    from django_fhir_migrations.engine.context import MigrationContext

    terminal = Terminal()
    shown = Console(DJANGO, out=lambda t: None, err=lambda t: None, stream=terminal)
    ctx = MigrationContext(None, None, events=EventStream([shown.on_event]))  # type: ignore[arg-type]
    assert list(ctx.progress(range(3), total=3, desc="walk")) == [0, 1, 2]
    assert terminal.getvalue().count("3/3") == 1  # the final state of the bar, once

    monkeypatch.setattr(console_module, "PROGRESS_LINE_EVERY", 0.0)
    lines: list[str] = []
    piped = Console(DJANGO, out=lines.append, err=lines.append, stream=io.StringIO())
    ctx = MigrationContext(None, None, events=EventStream([piped.on_event]))  # type: ignore[arg-type]
    monkeypatch.setattr("django_fhir_migrations.engine.context.PROGRESS_INTERVAL", 0.0)
    list(ctx.progress(range(5), total=5, desc="walk"))
    assert any("walk: 5/5 done" in line or "walk: 5 done" in line for line in lines)
