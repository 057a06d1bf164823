"""The three front doors (the Django management commands, the `fhir-migrations` CLI, the Flask
blueprint's commands) run the same verbs from commands.VERBS: one parametrised test of what they
share (exit codes, prompts, each error said once in the door's own command names), against a
scripted connection. What only one door does (the CLI's flags over the environment, Flask's
app.config keys, Django's --app) stays in test_cli.py, test_flask.py and test_commands.py.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import pytest

from django_fhir_migrations.console import CLI, DJANGO, FLASK, Vocabulary
from django_fhir_migrations.engine.project import Project
from tests.support.fake_connection import BASE_URL, FakeConnection, echo_write, status
from tests.unit.test_executor import STATE, state

from ..support.helpers import call

Result = tuple[int, str, str]  # exit status, stdout, stderr


class Door:
    def __init__(self, name: str, vocabulary: Vocabulary, run: Callable[..., Result]):
        self.name = name
        self.vocabulary = vocabulary
        self.run = run  # (verb, *args, stdin=None) -> Result

    def command(self, verb: str) -> str:
        return self.vocabulary.command(verb)


def django_door(settings, scripts) -> Door:
    settings.FHIR_MIGRATIONS = {"BASE_URL": BASE_URL, "STATE_ID": STATE, "AUDIT_EVENTS": False,
                                "SCRIPTS_DIRS": [str(scripts.path)], "LOCK_TIMEOUT": 2}

    def run(verb: str, *args: str, stdin: str | None = None) -> Result:
        return call(DJANGO.command(verb), *args, stdin=stdin)

    return Door("django", DJANGO, run)


def cli_door(monkeypatch, capsys, scripts) -> Door:
    from django_fhir_migrations.cli import main

    for name, value in (("FHIR_BASE_URL", BASE_URL), ("MIGRATION_RESOURCE_ID", STATE),
                        ("MIGRATION_SCRIPTS_DIR", str(scripts.path)),
                        ("FHIR_MIGRATIONS_AUDIT_EVENTS", "false"), ("FHIR_MIGRATIONS_LOCK_TIMEOUT", "2")):
        monkeypatch.setenv(name, value)

    def run(verb: str, *args: str, stdin: str | None = None) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main([verb, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return Door("cli", CLI, run)


def flask_door(scripts) -> Door:
    from flask import Flask

    from django_fhir_migrations.contrib.flask import create_blueprint

    app = Flask("clinic_app")
    app.config.update(FHIR_BASE_URL=BASE_URL, MIGRATION_RESOURCE_ID=STATE,
                      MIGRATION_SCRIPTS_DIR=str(scripts.path),
                      FHIR_MIGRATIONS={"AUDIT_EVENTS": False, "LOCK_TIMEOUT": 2})
    app.register_blueprint(create_blueprint())
    runner = app.test_cli_runner()

    def run(verb: str, *args: str, stdin: str | None = None) -> Result:
        name = FLASK.command(verb).removeprefix("flask ")
        result = runner.invoke(args=[name, *args], input=stdin or "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return Door("flask", FLASK, run)


@pytest.fixture
def connection(monkeypatch) -> FakeConnection:
    fake = FakeConnection()
    monkeypatch.setattr(Project, "connection", property(lambda project: fake))
    return fake


@pytest.fixture(params=["django", "cli", "flask"])
def door(request, settings, monkeypatch, capsys, scripts, clean_env, connection) -> Door:
    if request.param == "django":
        return django_door(settings, scripts)
    if request.param == "cli":
        return cli_door(monkeypatch, capsys, scripts)
    return flask_door(scripts)


def test_check_exits_1_and_lists_what_is_unapplied(door, scripts, connection):
    scripts.add("add_mrn")
    connection.on("GET", r"Basic", state(None))
    code, out, err = door.run("migrate", "--check")
    assert code == 1, err
    assert "Unapplied migrations:" in out and "add_mrn" in out


def test_nothing_to_apply_exits_0_after_one_read(door, scripts, connection):
    head = scripts.add("add_mrn")
    connection.on("GET", r"Basic", state(head))
    code, out, err = door.run("migrate")
    assert (code, err) == (0, "") and "No migrations to apply." in out
    assert len(connection.calls) == 1


def test_a_failing_migration_is_said_once_in_one_paragraph_and_exits_1(door, scripts, connection):
    scripts.add("add_mrn", upgrade="raise ValueError('bad data in row 7')")
    connection.on("GET", r"Basic", state(None))
    connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=4))
    code, out, err = door.run("migrate", "--noinput")
    assert code == 1
    [paragraph] = [line for line in (out + err).splitlines() if "bad data in row 7" in line]
    assert "failed during upgrade" in paragraph and "not recorded" in paragraph and paragraph in err


def test_a_remedy_names_the_front_doors_own_command_once(door, scripts):
    base = scripts.add("base")
    scripts.add("left", down=base)
    scripts.add("right", down=base)
    code, out, err = door.run("migrate")
    assert code == 1 and out == ""
    assert err.count("more than one head") == 1
    assert f"`{door.command('makemigration')} --merge NAME`" in err


def test_a_lock_held_elsewhere_times_out_with_exit_3_naming_the_holder(door, scripts, connection):
    scripts.add("add_mrn")
    connection.on("GET", r"Basic", state(None, holder="theirs"))
    connection.on("PUT", r"Basic/1", status(412))
    code, out, err = door.run("migrate", "--lock-timeout", "0")
    assert code == 3
    assert "bob@web-2" in err and f"`{door.command('migrate')} --break-lock`" in err


def test_break_lock_with_a_lockless_run_is_a_usage_error_before_any_request(door, scripts, connection):
    scripts.add("add_mrn")
    code, out, err = door.run("migrate", "--break-lock", "--plan")
    assert code == 1 and "--plan takes no lock" in err
    assert connection.calls == []


def test_reset_asks_in_the_doors_words_and_no_changes_nothing(door, connection):
    code, out, err = door.run("reset", stdin="no\n")
    assert code == 1 and "Reset cancelled." in out
    assert f"`{door.command('migrate')} --fake`" in out and f"state {STATE!r}" in out
    assert connection.calls == []


def test_reset_without_an_answer_says_how_to_confirm(door, connection):
    code, out, err = door.run("reset", stdin="")
    assert code == 1 and "pass --noinput to confirm without asking" in (out + err).replace("--yes", "--noinput")
    assert connection.calls == []


def test_makemigration_without_a_name_says_the_doors_example(door):
    code, out, err = door.run("makemigration")
    assert code == 1 and f"`{door.vocabulary.example}`" in err


def test_showmigrations_offline_needs_no_server(door, scripts, connection):
    scripts.add("add_mrn")
    code, out, err = door.run("showmigrations", "--offline")
    assert code == 0 and "add_mrn" in out
    assert connection.calls == []


def test_typed_options_reach_the_verb_the_same_way_through_each_door(door, scripts, connection):
    a = scripts.add("first")
    b = scripts.add("second", down=a)
    c = scripts.add("third", down=b)
    connection.on("GET", r"Basic", state(c))
    code, out, err = door.run("downgrade", "--steps", "2", "--plan")
    assert code == 0, err
    planned = [line.split()[1] for line in out.splitlines() if line.startswith("  downgrade ")]
    assert planned == ["dir/third", "dir/second"]
