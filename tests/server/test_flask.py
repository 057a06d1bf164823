"""The seed-compatible Flask blueprint, through Flask's own CLI runner, against the real server."""

from __future__ import annotations

import sys
import textwrap

import pytest
from flask import Flask

from django_fhir_migrations.contrib.flask import create_blueprint, migration_blueprint

from ..support.helpers import REPO, run
from ..support.helpers import add_patient_migrations as add_patients
from ..support.helpers import patient_values as values


def make_app(fhir, scripts, **config) -> Flask:
    """A Flask app configured the seed tool's way (top-level app.config keys)."""
    app = Flask("clinic_app")
    app.config.update(
        FHIR_BASE_URL=fhir.base_url, MIGRATION_RESOURCE_ID=fhir.state_id,
        MIGRATION_SCRIPTS_DIR=str(scripts.path), FHIR_MIGRATIONS={"LOCK_TTL": 10, "RETRIES": 1},
    )
    app.config.update(config)
    app.register_blueprint(migration_blueprint)
    return app


class Flask_CLI:
    def __init__(self, app: Flask):
        self.app = app
        self.runner = app.test_cli_runner()

    def __call__(self, *args: str, input: str | None = None):
        result = self.runner.invoke(args=list(args), input=input)
        # Anything but a clean exit (0, or click's own error exit) is a crash with a traceback.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result


@pytest.fixture
def flask(fhir, scripts, clean_env):
    return Flask_CLI(make_app(fhir, scripts))


def test_commands_are_registered_at_the_top_level(flask):
    assert migration_blueprint.cli_group is None
    listed = flask("--help").stdout
    for name in ("migrate", "upgrade", "downgrade", "reset", "showmigrations"):
        assert f"  {name} " in listed
    assert " upgrade [OPTIONS] [TARGET]" in flask("upgrade", "--help").stdout


def test_commands_can_be_nested_in_a_group_where_the_names_are_taken(fhir, scripts, clean_env):
    app = Flask("other_app")
    app.config.update(FHIR_BASE_URL=fhir.base_url, MIGRATION_RESOURCE_ID=fhir.state_id,
                      MIGRATION_SCRIPTS_DIR=str(scripts.path))
    app.register_blueprint(create_blueprint("fhir_data", cli_group="fhir"))
    cli = Flask_CLI(app)
    add_patients(scripts, fhir, "one")
    assert cli("upgrade").exit_code == 2  # not at the top level: a usage error
    result = cli("fhir", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert values(fhir) == ["one"]


def test_upgrade_applies_everything_in_order_and_records_it(flask, fhir, scripts):
    revisions = add_patients(scripts, fhir, "one", "two", "three")
    result = flask("upgrade")
    assert result.exit_code == 0, result.stderr
    assert "Applying dir/one" in result.stdout and "Applying dir/three" in result.stdout
    assert values(fhir) == ["one", "three", "two"]
    assert fhir.applied() == revisions and fhir.state_head() == revisions[-1]
    # Who applied it: the Flask command, from this app.
    events = fhir.kept_audit_events()
    if events is not None:  # (Helios keeps none: test_history_on_a_server_that_keeps_no_audit_events...)
        event = next(e for e in events if e["subtype"][0]["code"] == "applied")
        assert "flask upgrade" in str(event)
    assert "No migrations to apply" in flask("upgrade").stdout






def test_reset_takes_yes_on_stdin_or_the_seed_tools_yes_flag(flask, fhir, scripts):
    """(Asking, and a "no", are the same in every front door: unit/test_front_doors.py.)"""
    add_patients(scripts, fhir, "one", "two")
    assert flask("upgrade").exit_code == 0
    agreed = flask("reset", input="yes\n")
    assert agreed.exit_code == 0, agreed.stderr
    assert fhir.state_head() == "None" and fhir.applied() == []
    assert values(fhir) == ["one", "two"]  # reset changes no data
    assert flask("upgrade").exit_code == 0
    assert flask("reset", "--yes").exit_code == 0 and fhir.applied() == []
    events = fhir.kept_audit_events()
    assert events is None or any(e["subtype"][0]["code"] == "reset" for e in events)


def test_history_on_a_server_that_keeps_no_audit_events_says_so_and_shows_the_state(
        no_audit_server, fhir, scripts, clean_env):
    flask = Flask_CLI(make_app(fhir, scripts, FHIR_BASE_URL=no_audit_server.base_url))
    add_patients(scripts, fhir, "one", "two")
    assert flask("upgrade").exit_code == 0
    result = flask("history")
    assert result.exit_code == 0, result.stderr
    assert "keeps no AuditEvents from clients" in result.stdout
    assert "(nothing recorded yet)" not in result.stdout
    applied = [line for line in result.stdout.splitlines() if line.startswith("  2")]
    assert [line.split()[2] for line in applied] == ["applied", "applied"]
    assert all(" by " in line and line.endswith("ok") for line in applied)


def test_migrate_name_creates_a_script_after_the_head(flask, fhir, scripts):
    first = scripts.add("first")
    refused = flask("migrate", "second")
    assert refused.exit_code == 1
    assert "not applied" in refused.stderr and "--no-check" in refused.stderr
    assert not list(scripts.path.glob("*second.py"))
    assert flask("upgrade").exit_code == 0
    made = flask("migrate", "second", "-m", "Recode the second thing.")
    assert made.exit_code == 0, made.stderr
    source = (scripts.path / "0002_second.py").read_text()
    assert f'down_revision = "{first}"' in source and "Recode the second thing." in source
    unnamed = flask("migrate")
    assert unnamed.exit_code == 1 and "flask migrate add_mrn" in unnamed.stderr




def test_the_fhir_migrations_dict_configures_everything_else(fhir, scripts, clean_env):
    app = Flask("dict_app")
    app.config["FHIR_MIGRATIONS"] = {"BASE_URL": fhir.base_url, "STATE_ID": fhir.state_id,
                                     "SCRIPTS_DIRS": [str(scripts.path)], "AUDIT_EVENTS": False}
    app.register_blueprint(migration_blueprint)
    add_patients(scripts, fhir, "one")
    result = Flask_CLI(app)("upgrade")
    assert result.exit_code == 0, result.stderr
    assert values(fhir) == ["one"] and len(fhir.applied()) == 1
    assert fhir.audit_events() == []  # AUDIT_EVENTS came from the dict


def test_environment_wins_over_app_config(fhir, scripts, clean_env):
    add_patients(scripts, fhir, "one")
    app = make_app(fhir, scripts, FHIR_BASE_URL="http://127.0.0.1:9/nothing-here",
                   MIGRATION_RESOURCE_ID=f"{fhir.state_id}-decoy")
    clean_env.setenv("FHIR_BASE_URL", fhir.base_url)
    clean_env.setenv("MIGRATION_RESOURCE_ID", fhir.state_id)
    result = Flask_CLI(app)("upgrade")
    assert result.exit_code == 0, result.stderr
    assert values(fhir) == ["one"] and len(fhir.applied()) == 1


def test_relative_scripts_folder_is_taken_from_the_app_root(fhir, scripts, clean_env):
    app = Flask("rooted_app", root_path=str(scripts.path.parent))
    app.config.update(FHIR_BASE_URL=fhir.base_url, MIGRATION_RESOURCE_ID=fhir.state_id,
                      MIGRATION_SCRIPTS_DIR=scripts.path.name)
    app.register_blueprint(migration_blueprint)
    add_patients(scripts, fhir, "one")
    assert Flask_CLI(app)("upgrade").exit_code == 0
    assert values(fhir) == ["one"]


@pytest.mark.parametrize("config, named", [
    ({"FHIR_BASE_URL": None}, "app.config['FHIR_BASE_URL']"),
    ({"FHIR_BASE_URL": "ftp://fhir.example.org"}, "app.config['FHIR_BASE_URL']"),
    ({"MIGRATION_SCRIPTS_DIR": None}, "app.config['MIGRATION_SCRIPTS_DIR']"),
    ({"MIGRATION_SCRIPTS_DIR": "/no/such/folder"}, "app.config['MIGRATION_SCRIPTS_DIR']"),
    ({"MIGRATION_RESOURCE_ID": "two words"}, "app.config['MIGRATION_RESOURCE_ID']"),
    ({"FHIR_MIGRATIONS": {"LOCK_TTL": "soon"}}, "app.config['FHIR_MIGRATIONS']['LOCK_TTL']"),
    ({"FHIR_MIGRATIONS": {"NO_SUCH_KEY": 1}}, "app.config['FHIR_MIGRATIONS']['NO_SUCH_KEY']"),
    ({"FHIR_MIGRATIONS": "http://x"}, "app.config['FHIR_MIGRATIONS']"),
])
def test_configuration_mistakes_name_the_app_config_key(fhir, scripts, clean_env, config, named):
    scripts.add("one")
    result = Flask_CLI(make_app(fhir, scripts, **config))("upgrade")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert fhir.state() is None


def test_blueprint_works_where_django_is_not_installed(fhir, scripts, clean_env):
    add_patients(scripts, fhir, "one", "two")
    code = textwrap.dedent(f"""
        import sys

        class NoDjango:
            def find_spec(self, name, path=None, target=None):
                if name == "django" or name.startswith("django."):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
                return None

        sys.meta_path.insert(0, NoDjango())
        import django_fhir_migrations
        from flask import Flask
        from django_fhir_migrations.contrib.flask import migration_blueprint

        app = Flask("no_django_app")
        app.config.update(FHIR_BASE_URL={fhir.base_url!r}, MIGRATION_RESOURCE_ID={fhir.state_id!r},
                          MIGRATION_SCRIPTS_DIR={str(scripts.path)!r})
        app.register_blueprint(migration_blueprint)
        result = app.test_cli_runner().invoke(args=["upgrade"])
        print(result.stdout)
        print(result.stderr, file=sys.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert not [m for m in sys.modules if m == "django" or m.startswith("django.")]
        try:
            import django  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("the django import was not blocked")
        sys.exit(result.exit_code)
    """)
    done = run([sys.executable, "-c", code], cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Applying dir/two" in done.stdout
    assert values(fhir) == ["one", "two"]
