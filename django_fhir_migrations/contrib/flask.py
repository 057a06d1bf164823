"""The seed tool's Flask front door: `migration_blueprint` and its CLI commands.

    from django_fhir_migrations.contrib.flask import migration_blueprint
    app.register_blueprint(migration_blueprint)

gives, at the top level of the app's CLI (the seed tool's names):

    flask migrate NAME     new script after the head (--merge, --no-check, -m, --dir)
    flask upgrade          apply what is unapplied (TARGET, --plan, --fake, --dry-run, --check, ...)
    flask downgrade        revert the most recent migration (TARGET, --steps N, 'zero')
    flask reset            forget the state (asks; --yes / --noinput)
    flask showmigrations   what exists, what is applied, when, by whom

Configuration is read when a command runs, from `app.config`: FHIR_BASE_URL,
MIGRATION_SCRIPTS_DIR, MIGRATION_RESOURCE_ID (the seed tool's names), and optionally a
FHIR_MIGRATIONS dict with the Django setting's keys (AUTH, LOCK_TIMEOUT, ...). The top-level keys
win over the dict; environment variables win over both, as they win over Django settings.
Relative script folders in app.config are taken from the app's root_path.

No Django is imported, here or in the engine this calls.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from flask import Blueprint, Flask, current_app
from flask.cli import with_appcontext

from .. import runner
from ..arguments import (
    DOWNGRADE,
    MAKEMIGRATION,
    MIGRATE,
    RESET,
    SCRIPTS_FOLDER,
    SHOWMIGRATIONS,
    VERBOSITY,
    Arg,
    click_params,
)
from ..engine import FhirMigrationError, Project, Reporter, Settings
from ..engine.config import SCRIPTS_DIR_ENV
from ..engine.errors import ConfigurationError
from ..engine.interrupts import exit_code_for
from ..engine.redaction import scrub

CONFIG = "FHIR_MIGRATIONS"
SOURCE = f"app.config[{CONFIG!r}]"
# app.config key (the seed tool's, also its environment variable) -> settings key
TOP_LEVEL_KEYS = {"FHIR_BASE_URL": "BASE_URL", "MIGRATION_RESOURCE_ID": "STATE_ID"}
SCRIPTS_KEY = f"app.config[{SCRIPTS_DIR_ENV!r}]"

# Each Django command's name -> the seed tool's Flask command, for advice in engine messages.
DJANGO_EQUIVALENTS = {"fhirmakemigration": "flask migrate", "fhirmigrate": "flask upgrade",
                      "fhirdowngrade": "flask downgrade", "fhirreset": "flask reset",
                      "fhirshowmigrations": "flask showmigrations"}

Body = Callable[[Project, dict[str, Any], int], int]


class CommandFailed(click.ClickException):
    """An engine error: click prints `Error: <message>` on stderr, no traceback."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


STYLES: dict[str, dict[str, Any]] = {
    "heading": {"fg": "cyan", "bold": True}, "success": {"fg": "green"},
    "warning": {"fg": "yellow"}, "error": {"fg": "red"},
}


def click_style(kind: str, text: str) -> str:
    """Colour by kind; click.echo drops the colours when the output is not a terminal."""
    return click.style(text, **STYLES[kind]) if kind in STYLES else text


class ClickReporter(Reporter):
    """Engine output through click: errors on stderr."""

    def __init__(self, verbosity: int):
        super().__init__(sys.stdout, verbosity)

    def style(self, kind: str, text: str) -> str:
        return click_style(kind, text)

    def _write(self, kind: str, text: str, level: int) -> None:
        if self.verbosity >= level:
            click.echo(self.style(kind, scrub(text)), err=kind == "error")


def flask_settings(app: Flask, environ: Mapping[str, str] | None = None
                   ) -> tuple[Settings, dict[str, str]]:
    """Settings from app.config and the environment, and the renames that make an error name
    the app.config key the user set."""
    env = dict(os.environ if environ is None else environ)
    raw = app.config.get(CONFIG) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(SOURCE, "must be a dict with the keys of the Django setting "
                                         "FHIR_MIGRATIONS (BASE_URL, AUTH, STATE_ID, ...).")
    values = dict(raw)
    renames: dict[str, str] = {}
    if "SCRIPTS_DIRS" in values:
        values["SCRIPTS_DIRS"] = _from_root(app, values["SCRIPTS_DIRS"])
    for config_key, key in TOP_LEVEL_KEYS.items():
        if app.config.get(config_key) not in (None, ""):
            values[key] = app.config[config_key]
            renames[f"{SOURCE}[{key!r}]"] = f"app.config[{config_key!r}]"
        elif key not in values:
            renames[f"{SOURCE}[{key!r}]"] = f"app.config[{config_key!r}]"
    folders = app.config.get(SCRIPTS_DIR_ENV)
    if folders and not env.get(SCRIPTS_DIR_ENV):
        env[SCRIPTS_DIR_ENV] = os.pathsep.join(_from_root(app, folders))
        renames[f"environment variable {SCRIPTS_DIR_ENV}"] = SCRIPTS_KEY
    return runner.build_settings(values, environ=env, source=SOURCE, renames=renames), renames


def _from_root(app: Flask, folders: Any) -> Any:
    """Relative folders named in app.config are the app's (root_path), not the shell's cwd."""
    if isinstance(folders, (str, os.PathLike)):
        folders = str(folders).split(os.pathsep)
    if not isinstance(folders, (list, tuple)):
        return folders  # Settings.build explains what is wrong with it
    return [str(Path(app.root_path, os.path.expanduser(str(f)))) for f in folders if str(f)]


def click_confirm(options: Mapping[str, Any]) -> runner.Confirm | None:
    """A yes/no prompt, or None (meaning yes) with --yes / --noinput."""
    if not options.get("interactive", True):
        return None

    def ask(question: str) -> bool:
        click.echo(question)
        try:
            answer = click.prompt("Type 'yes' to continue, or 'no' to cancel", default="",
                                  show_default=False)
        except click.Abort:
            click.echo("No answer (stdin closed); pass --yes to confirm without asking.", err=True)
            return False
        return answer.strip().lower() == "yes"

    return ask


def _emit(kind: str, line: str) -> None:
    click.echo(click_style(kind, line))


def _makemigration(project: Project, options: dict[str, Any], verbosity: int) -> int:
    return runner.makemigration(project, options, example="flask migrate add_mrn", folder_flag="--dir")


def _upgrade(project: Project, options: dict[str, Any], verbosity: int) -> int:
    return runner.migrate(project, options, click_confirm(options))


def _downgrade(project: Project, options: dict[str, Any], verbosity: int) -> int:
    return runner.downgrade(project, options)


def _reset(project: Project, options: dict[str, Any], verbosity: int) -> int:
    return runner.reset(project, options, click_confirm(options), migrate_command="flask upgrade")


def _showmigrations(project: Project, options: dict[str, Any], verbosity: int) -> int:
    return runner.showmigrations(project, options, _emit, verbosity)


def _command(name: str, help: str, args: Sequence[Arg], body: Body, *,
             needs_scripts: Callable[[Mapping[str, Any]], bool] = lambda options: True
             ) -> click.Command:
    @with_appcontext
    def callback(**options: Any) -> None:
        verbosity = options.pop("verbosity")
        runner.configure_logging(verbosity)
        renames: dict[str, str] = {}
        try:
            settings, renames = flask_settings(current_app)
            if needs_scripts(options):
                runner.require_scripts(settings, SCRIPTS_KEY)
            project = Project(settings, reporter=ClickReporter(verbosity), command=f"flask {name}",
                              source=current_app.name)
            try:
                exit_code = body(project, options, verbosity)
            finally:
                project.close()
        except FhirMigrationError as exc:
            raise CommandFailed(runner.error_message(exc, renames, DJANGO_EQUIVALENTS),
                                exc.exit_code) from None
        except KeyboardInterrupt as exc:
            click.echo(f"Interrupted ({exc or 'SIGINT'}).", err=True)
            click.get_current_context().exit(exit_code_for(exc))
        if exit_code:
            click.get_current_context().exit(exit_code)

    return click.Command(name, callback=callback, params=click_params([*args, VERBOSITY]),
                         help=help, short_help=help.split(". ")[0].rstrip("."))


def commands() -> list[click.Command]:
    return [
        _command("migrate", "Create a new migration script NAME.py whose down_revision is the "
                 "current head.", (*MAKEMIGRATION, SCRIPTS_FOLDER), _makemigration),
        _command("upgrade", "Apply every unapplied FHIR migration, in order (or up to TARGET).",
                 MIGRATE, _upgrade, needs_scripts=lambda options: not options.get("break_lock")),
        _command("downgrade", "Revert the most recent FHIR migration (or --steps N, down to "
                 "TARGET, or 'zero' for all).", DOWNGRADE, _downgrade),
        _command("reset", "Forget the FHIR migration state (head := None). Runs no migration and "
                 "changes no data; asks first.", RESET, _reset, needs_scripts=lambda options: False),
        _command("showmigrations", "List every FHIR migration: applied [X] or not [ ], when and "
                 "by whom.", SHOWMIGRATIONS, _showmigrations),
    ]


def create_blueprint(name: str = "fhir_migrations", *, cli_group: str | None = None) -> Blueprint:
    """A blueprint carrying the commands; `cli_group="fhir"` would nest them (`flask fhir upgrade`)
    for apps where the top-level names are taken (e.g. another `migrate`)."""
    blueprint = Blueprint(name, __name__, cli_group=cli_group)
    for command in commands():
        blueprint.cli.add_command(command)
    return blueprint


migration_blueprint = create_blueprint()

__all__ = ["create_blueprint", "flask_settings", "migration_blueprint"]
