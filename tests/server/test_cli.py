"""The standalone `fhir-migrations` CLI (`python -m django_fhir_migrations`), against the real
server: as a subprocess, the way CI jobs run it, and in-process through `main([...])`."""

from __future__ import annotations

import io
import sys
import textwrap

import pytest

from django_fhir_migrations.arguments import option_strings
from django_fhir_migrations.cli import build_parser, main
from django_fhir_migrations.commands import VERBS

from ..support.helpers import add_patient_migrations as add_patients
from ..support.helpers import create_patient, run
from ..support.helpers import patient_values as values


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return run([sys.executable, "-m", "django_fhir_migrations", *args], stdin=stdin, env=env,
               timeout=120)


@pytest.fixture
def configured(fhir, scripts, clean_env):
    """The environment a CI job would set (seen by main() in-process and by subprocesses)."""
    clean_env.setenv("FHIR_BASE_URL", fhir.base_url)
    clean_env.setenv("MIGRATION_RESOURCE_ID", fhir.state_id)
    clean_env.setenv("MIGRATION_SCRIPTS_DIR", str(scripts.path))
    clean_env.setenv("FHIR_MIGRATIONS_LOCK_TTL", "10")
    return clean_env


def test_migrate_applies_everything_in_order_and_records_it(configured, fhir, scripts):
    revisions = add_patients(scripts, fhir, "one", "two", "three")
    done = cli("migrate", "-v", "2")
    assert done.returncode == 0, done.stderr
    assert "Applying dir/one" in done.stdout and "Applying dir/three" in done.stdout
    assert "INFO django_fhir_migrations" in done.stderr  # -v 2: the engine's log lines
    assert values(fhir) == ["one", "three", "two"]
    assert fhir.applied() == revisions and fhir.state_head() == revisions[-1]
    again = cli("upgrade")  # the seed tool's word, as an alias
    assert again.returncode == 0 and "No migrations to apply" in again.stdout




def test_dry_run_prints_the_writes_and_sends_nothing(configured, fhir, scripts, capsys):
    add_patients(scripts, fhir, "one")
    assert main(["migrate", "--dry-run"]) == 0
    assert "[dry-run] POST Patient" in capsys.readouterr().out
    assert values(fhir) == [] and fhir.state() is None


def test_flags_win_over_the_environment(configured, fhir, scripts, tmp_path):
    first, second = add_patients(scripts, fhir, "one", "two")
    more = tmp_path / "more_scripts"
    more.mkdir()
    third = scripts.add("three", upgrade=create_patient(fhir, "three"))
    (scripts.path / "three.py").rename(more / "three.py")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    configured.setenv("FHIR_BASE_URL", "http://127.0.0.1:9/nothing-here")
    configured.setenv("MIGRATION_RESOURCE_ID", f"{fhir.state_id}-decoy")
    configured.setenv("MIGRATION_SCRIPTS_DIR", str(decoy))
    done = cli("--base-url", fhir.base_url, "migrate", "--state-id", fhir.state_id,
               "--scripts-dir", str(scripts.path), "--scripts-dir", str(more))
    assert done.returncode == 0, done.stderr
    assert fhir.applied() == [first, second, third]
    assert values(fhir) == ["one", "three", "two"]






def test_reset_takes_yes_on_stdin(configured, fhir, scripts, monkeypatch):
    add_patients(scripts, fhir, "one")
    assert main(["migrate"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    assert main(["reset"]) == 0
    assert fhir.state_head() == "None"




def test_showmigrations_offline_needs_no_server(fhir, scripts, clean_env, capsys):
    scripts.add("one")
    assert main(["showmigrations", "--offline", "--scripts-dir", str(scripts.path)]) == 0
    out = capsys.readouterr().out
    assert " [?] dir/one" in out and "(no server)" in out  # offline: unknown, not unapplied


def test_makemigration_chains_after_the_head_and_refuses_while_unapplied(configured, fhir, scripts,
                                                                         capsys):
    first = scripts.add("first")
    assert main(["makemigration", "second"]) == 1
    err = capsys.readouterr().err
    assert "not applied" in err and "--no-check" in err and "(fhir-migrations migrate)" in err
    assert not list(scripts.path.glob("*second.py"))
    assert main(["migrate"]) == 0
    assert main(["makemigration", "second", "-m", "Add the second thing."]) == 0
    source = (scripts.path / "0002_second.py").read_text()  # numbered: 0002, after first.py
    assert f'down_revision = "{first}"' in source and "Add the second thing." in source
    assert main(["makemigration"]) == 1
    assert "fhir-migrations makemigration add_mrn" in capsys.readouterr().err


def test_makemigration_merge_joins_two_heads(configured, fhir, scripts):
    base = scripts.add("base")
    left = scripts.add("left", down=base)
    right = scripts.add("right", down=base)
    assert main(["makemigration", "--merge", "--no-check"]) == 0
    merged = [p for p in scripts.path.glob("*_merge_*.py")]
    assert len(merged) == 1
    assert left in merged[0].read_text() and right in merged[0].read_text()
    assert main(["migrate"]) == 0
    assert len(fhir.applied()) == 4


def test_makemigration_chooses_between_folders_with_dir(configured, scripts, tmp_path, capsys):
    other = tmp_path / "other_scripts"
    other.mkdir()
    configured.setenv("MIGRATION_SCRIPTS_DIR", f"{scripts.path}:{other}")
    assert main(["makemigration", "first", "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "--dir" in err and str(other) in err
    assert main(["makemigration", "first", "--no-check", "--dir", str(tmp_path)]) == 1
    assert "not one of the configured scripts folders" in capsys.readouterr().err
    assert main(["makemigration", "first", "--no-check", "--dir", str(other)]) == 0
    assert (other / "0001_first.py").exists()


def test_a_failing_migration_is_one_message_and_a_nonzero_exit(configured, fhir, scripts):
    first = scripts.add("first", upgrade=create_patient(fhir, "first"))
    second = scripts.add("second", upgrade="raise ValueError('bad data in second')")
    done = cli("migrate")
    assert done.returncode == 1
    # The engine's log record of the failure (Python's last-resort handler), then the message.
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: ") and second in message and "second.py" in message
    assert "ValueError: bad data in second" in done.stderr
    assert "Traceback" not in done.stderr
    assert fhir.applied() == [first]
    shown = cli("migrate", "--traceback")
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "bad data" in shown.stderr




def test_configuration_mistakes_name_the_flag_or_variable(fhir, scripts, clean_env, tmp_path, capsys):
    scripts.add("one")
    cases = [
        (["--base-url", "ftp://x", "--scripts-dir", str(scripts.path), "migrate"], "--base-url"),
        (["--scripts-dir", str(scripts.path), "migrate"], "FHIR_BASE_URL"),
        (["--base-url", fhir.base_url, "migrate"], "--scripts-dir"),
        (["--base-url", fhir.base_url, "--scripts-dir", str(tmp_path / "nope"), "migrate"],
         "--scripts-dir"),
        (["--base-url", fhir.base_url, "--state-id", "has space", "reset", "--yes"], "--state-id"),
    ]
    for argv, named in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("Error: ") and named in err, (argv, err)
        assert "Traceback" not in err
    clean_env.setenv("FHIR_MIGRATIONS_TIMEOUT", "later")
    assert main(["--base-url", fhir.base_url, "reset", "--yes"]) == 1
    assert "FHIR_MIGRATIONS_TIMEOUT" in capsys.readouterr().err
    assert fhir.state() is None


def test_usage_mistakes_exit_2(clean_env, capsys):
    assert main([]) == 2
    assert main(["migrate", "--no-such-flag"]) == 2
    assert main(["downgrade", "--steps", "two"]) == 2
    assert main(["--version"]) == 0
    assert "fhir-migrations 0." in capsys.readouterr().out


def test_commands_take_the_same_flags_as_the_django_commands():
    from django.core.management import load_command_class

    django_names = {"makemigration": "fhirmakemigration", "migrate": "fhirmigrate",
                    "downgrade": "fhirdowngrade", "reset": "fhirreset",
                    "showmigrations": "fhirshowmigrations", "history": "fhirhistory"}
    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in VERBS.values():
        django_command = load_command_class("django_fhir_migrations", django_names[command.name])
        django_parser = django_command.create_parser("manage.py", django_names[command.name])
        django_flags = {s for a in django_parser._actions for s in a.option_strings}
        ours = {s for a in subparsers[command.name]._actions for s in a.option_strings}
        shared = option_strings(command.arguments)
        assert shared <= ours and shared <= django_flags, command.name
        # Django-only: its own standard options and --app; CLI-only: configuration and --dir.
        missing = django_flags - ours - {"--app", "--settings", "--pythonpath", "--force-color",
                                         "--skip-checks", "--version"}
        assert not missing, (command.name, missing)
        django_positionals = [a.dest for a in django_parser._actions if not a.option_strings]
        cli_positionals = [a.dest for a in subparsers[command.name]._actions if not a.option_strings]
        assert django_positionals == cli_positionals, command.name


def test_runs_where_django_is_not_installed(configured, fhir, scripts):
    add_patients(scripts, fhir, "one")
    code = textwrap.dedent("""
        import sys

        class NoDjango:
            def find_spec(self, name, path=None, target=None):
                if name == "django" or name.startswith("django."):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
                return None

        sys.meta_path.insert(0, NoDjango())
        from django_fhir_migrations.cli import main
        code = main(["migrate"])
        assert not any(m == "django" or m.startswith("django.") for m in sys.modules), "django imported"
        sys.exit(code)
    """)
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert values(fhir) == ["one"]
