"""Django system checks: `manage.py check` finds broken settings, scripts and histories without
touching the network; `check --deploy` asks the real server what is pending."""

from __future__ import annotations

import socket
import time

import pytest
from django.apps import apps
from django.core.checks import run_checks

from django_fhir_migrations import checks as fhir_checks

from ..support.helpers import break_graph, call


def messages(*, deploy: bool = False, app_configs=None):
    return [m for m in run_checks(app_configs=app_configs, tags=[fhir_checks.TAG],
                                  include_deployment_checks=deploy)]


def ids(found) -> list[str]:
    return sorted(m.id for m in found)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_healthy_project_passes_every_check(fhir_settings, fhir, scripts):
    scripts.add("one")
    scripts.add("two")
    assert messages() == []
    assert call("fhirmigrate")[0] == 0
    assert messages(deploy=True) == []


def test_an_invalid_setting_is_an_error_naming_it(settings, fhir_settings):
    settings.FHIR_MIGRATIONS = {**fhir_settings, "BASE_URL": "ftp://fhir.example.org"}
    found = messages()
    assert ids(found) == ["fhir_migrations.E001"]
    assert "FHIR_MIGRATIONS['BASE_URL']" in found[0].msg and "ftp://" in found[0].msg
    assert found[0].hint


def test_an_invalid_environment_override_names_the_variable(fhir_settings, clean_env):
    clean_env.setenv("FHIR_MIGRATIONS_LOCK_TIMEOUT", "soon")
    found = messages()
    assert ids(found) == ["fhir_migrations.E001"]
    assert "FHIR_MIGRATIONS_LOCK_TIMEOUT" in found[0].msg


def test_a_setting_that_is_not_a_dict_is_an_error(settings, clean_env):
    settings.FHIR_MIGRATIONS = ["http://127.0.0.1:8080/fhir"]
    assert ids(messages()) == ["fhir_migrations.E001"]


def test_every_missing_scripts_folder_is_reported(settings, fhir_settings, clean_env, tmp_path):
    settings.FHIR_MIGRATIONS = {**fhir_settings,
                                "SCRIPTS_DIRS": [*fhir_settings["SCRIPTS_DIRS"], str(tmp_path / "gone")]}
    clean_env.setenv("MIGRATION_SCRIPTS_DIR", str(tmp_path / "also_gone"))
    found = messages()
    assert ids(found) == ["fhir_migrations.E002", "fhir_migrations.E002"]
    text = " ".join(m.msg for m in found)
    assert "gone" in text and "also_gone" in text
    assert "SCRIPTS_DIRS" in text and "MIGRATION_SCRIPTS_DIR" in text


def test_scripts_that_cannot_be_imported_are_errors_naming_each_file(fhir_settings, scripts):
    first = scripts.add("first")
    scripts.write("syntax_slip", f"revision = 'aa11'\ndown_revision = {first!r}\ndef upgrade(ctx)\n")
    scripts.write("missing_dep", "import no_such_module_anywhere\n")
    scripts.add("child", down="aa11")  # would look dangling while syntax_slip cannot be read
    found = messages()
    assert ids(found) == ["fhir_migrations.E003", "fhir_migrations.E003"]
    text = " ".join(m.msg for m in found)
    assert "syntax_slip.py" in text and "missing_dep.py" in text


@pytest.mark.parametrize("breakage, expected, named", [
    ("duplicate", "E004", "copy.py"),
    ("dangling", "E005", "orphan.py"),
    ("cycle", "E006", "loop_a.py"),
    ("two_roots", "E007", "another_root.py"),
    ("two_heads", "E008", "left.py"),
])
def test_graph_problems_have_stable_ids(fhir_settings, scripts, breakage, expected, named):
    base = scripts.add("base_one")
    break_graph(scripts, base, breakage)
    found = messages()
    assert f"fhir_migrations.{expected}" in ids(found)
    problem = next(m for m in found if m.id == f"fhir_migrations.{expected}")
    assert named in problem.msg and problem.hint
    if breakage == "two_heads":
        assert "--merge" in problem.hint


def test_no_server_configured_is_a_warning(settings, fhir_settings, scripts):
    scripts.add("one")
    settings.FHIR_MIGRATIONS = {k: v for k, v in fhir_settings.items() if k != "BASE_URL"}
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W001"]
    assert "FHIR_BASE_URL" in found[0].hint


def test_pending_migrations_are_a_deploy_warning_only(fhir_settings, fhir, scripts):
    scripts.add("one")
    scripts.add("two")
    assert messages() == []  # the everyday checks never ask the server
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W002"]
    assert "2 FHIR migration(s)" in found[0].msg and "dir/one" in found[0].msg
    assert fhir.state_id in found[0].msg
    assert call("fhirmigrate", scripts.revisions[0])[0] == 0
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W002"] and "dir/two" in found[0].msg
    assert "dir/one" not in found[0].msg


def test_an_unreachable_server_is_a_deploy_warning_not_a_crash(settings, fhir_settings, scripts):
    scripts.add("one")
    settings.FHIR_MIGRATIONS = {**fhir_settings, "BASE_URL": f"http://127.0.0.1:{unused_port()}/fhir",
                                "RETRIES": 3}
    assert messages() == []
    started = time.monotonic()
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W003"]
    assert "Could not ask the FHIR server" in found[0].msg
    assert time.monotonic() - started < 10  # no retries with back-off in a deploy check


def test_tls_verification_off_is_a_deploy_warning(settings, fhir_settings, fhir, scripts, clean_env):
    scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    settings.FHIR_MIGRATIONS = {**fhir_settings, "VERIFY_TLS": False}
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W004"]
    assert "FHIR_MIGRATIONS['VERIFY_TLS']" in found[0].msg
    settings.FHIR_MIGRATIONS = fhir_settings
    clean_env.setenv("FHIR_MIGRATIONS_VERIFY_TLS", "false")
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W004"]
    assert "FHIR_MIGRATIONS_VERIFY_TLS" in found[0].msg
    assert messages() == []


def test_a_state_naming_unknown_revisions_is_a_deploy_warning(fhir_settings, fhir, scripts):
    scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    (scripts.path / "one.py").unlink()
    scripts.revisions.clear()
    scripts.add("other")
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W005"]
    assert "no migration script declares" in found[0].msg


def test_an_applied_script_edited_afterwards_is_a_deploy_warning(fhir_settings, fhir, scripts):
    revision = scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    scripts.revisions.clear()
    scripts.add("one", revision=revision, down=None, upgrade="x = 'edited'")
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W006"]
    assert "one.py" in found[0].msg


def test_check_command_fails_on_errors_and_reports_deploy_warnings(fhir_settings, fhir, scripts):
    base = scripts.add("base_one")
    scripts.add("left", down=base)
    scripts.add("right", down=base)
    code, _, err = call("check")
    assert code == 1 and "fhir_migrations.E008" in err
    (scripts.path / "right.py").unlink()
    assert call("check")[0] == 0
    code, out, err = call("check", "--deploy")
    assert code == 0  # warnings do not fail a deploy check unless --fail-level says so
    assert "fhir_migrations.W002" in out + err
    code, _, err = call("check", "--deploy", "--fail-level", "WARNING")
    assert code == 1 and "fhir_migrations.W002" in err


def test_checks_of_other_apps_leave_ours_out(fhir_settings, scripts):
    scripts.add("left", down=None)
    scripts.add("right", down="0123456789abcdef")
    assert messages(app_configs=[apps.get_app_config("auth")]) == []
    ours = apps.get_app_config("django_fhir_migrations")
    assert "fhir_migrations.E005" in ids(messages(app_configs=[ours]))


def test_a_check_that_crashes_reports_instead_of_raising(fhir_settings, monkeypatch):
    def broken():
        raise RuntimeError("unexpected, token=s3cr3t-value")

    monkeypatch.setattr(fhir_checks, "get_settings", broken)
    found = messages(deploy=True)
    assert ids(found) == ["fhir_migrations.W000", "fhir_migrations.W000"]
    assert all("RuntimeError" in m.msg and "s3cr3t-value" not in m.msg for m in found)
