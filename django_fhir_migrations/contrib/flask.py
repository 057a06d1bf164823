"""The seed tool's Flask front door: `migration_blueprint` and its CLI commands.

    from django_fhir_migrations.contrib.flask import migration_blueprint
    app.register_blueprint(migration_blueprint)

gives, at the top level of the app's CLI (the seed tool's names):

    flask migrate NAME     new script after the head (--merge, --no-check, -m, --dir)
    flask upgrade          apply what is unapplied (TARGET, --plan, --fake, --dry-run, --check, ...)
    flask downgrade        revert the most recent migration (TARGET, --steps N, 'zero')
    flask reset            forget the state (asks; --yes / --noinput)
    flask showmigrations   what exists, what is applied, when, by whom
    flask history          what happened to the state, newest first (AuditEvents)

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

from .. import commands as verbs
from ..arguments import (
    DOWNGRADE,
    HISTORY,
    MAKEMIGRATION,
    MIGRATE,
    RESET,
    SCRIPTS_FOLDER,
    SHOWMIGRATIONS,
    VERBOSITY,
    Arg,
    click_params,
)
from ..console import FLASK, Console, configure_logging
from ..engine import FhirMigrationError, Project, Settings
from ..engine.config import SCRIPTS_DIR_ENV
from ..engine.errors import ConfigurationError
from ..engine.interrupts import exit_code_for, interrupt_text
from ..standalone import build_settings, require_scripts, scripts_folder

CONFIG = "FHIR_MIGRATIONS"
SOURCE = f"app.config[{CONFIG!r}]"
# app.config key (the seed tool's, also its environment variable) -> settings key
TOP_LEVEL_KEYS = {"FHIR_BASE_URL": "BASE_URL", "MIGRATION_RESOURCE_ID": "STATE_ID"}
SCRIPTS_KEY = f"app.config[{SCRIPTS_DIR_ENV!r}]"

Body = Callable[[Project, Console, dict[str, Any]], int]


class CommandFailed(click.ClickException):
    """An engine error: click prints `Error: <message>` on stderr, no traceback."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


STYLES: dict[str, dict[str, Any]] = {
    "heading": {"fg": "cyan", "bold": True}, "success": {"fg": "green"},
    "warning": {"fg": "yellow"}, "error": {"fg": "red"},
}


def click_style(kind: str, text: str) -> str:
    """Colour by kind; click.echo drops the colours when the output is not a terminal."""
    return click.style(text, **STYLES[kind]) if kind in STYLES else text


def click_console(verbosity: int, interactive: bool) -> Console:
    """The console for click: colours dropped by click.echo when not on a terminal."""

    def ask(prompt: str) -> str:
        try:
            return click.prompt(prompt.rstrip(": "), default="", show_default=False)
        except click.Abort:
            raise EOFError from None

    return Console(FLASK, out=click.echo, err=lambda text: click.echo(text, err=True),
                   verbosity=verbosity, styler=click_style, interactive=interactive, ask=ask,
                   stream=sys.stdout)


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
    if not values.get("SIGNING_KEY") and app.config.get("SECRET_KEY"):
        # Flask's own secret signs the Provenance unless FHIR_MIGRATIONS names a key.
        values["SIGNING_KEY"] = app.config["SECRET_KEY"]
        values.setdefault("SIGNING_KEY_FALLBACKS", list(app.config.get("SECRET_KEY_FALLBACKS") or []))
    folders = app.config.get(SCRIPTS_DIR_ENV)
    if folders and not env.get(SCRIPTS_DIR_ENV):
        env[SCRIPTS_DIR_ENV] = os.pathsep.join(_from_root(app, folders))
        renames[f"environment variable {SCRIPTS_DIR_ENV}"] = SCRIPTS_KEY
    return build_settings(values, environ=env, source=SOURCE, renames=renames), renames


def _from_root(app: Flask, folders: Any) -> Any:
    """Relative folders named in app.config are the app's (root_path), not the shell's cwd."""
    if isinstance(folders, (str, os.PathLike)):
        folders = str(folders).split(os.pathsep)
    if not isinstance(folders, (list, tuple)):
        return folders  # Settings.build explains what is wrong with it
    return [str(Path(app.root_path, os.path.expanduser(str(f)))) for f in folders if str(f)]


def _makemigration(project: Project, console: Console, options: dict[str, Any]) -> int:
    location = scripts_folder(project.settings, options.get("dir"), "--dir")
    return verbs.makemigration(project, console, options, location=location)


def _command(name: str, help: str, args: Sequence[Arg], body: Body, *,
             needs_scripts: Callable[[Mapping[str, Any]], bool] = lambda options: True
             ) -> click.Command:
    @with_appcontext
    def callback(**options: Any) -> None:
        verbosity = options.pop("verbosity")
        configure_logging(verbosity)
        console = click_console(verbosity, options.get("interactive", True))
        renames: dict[str, str] = {}
        try:
            settings, renames = flask_settings(current_app)
            if needs_scripts(options):
                require_scripts(settings, SCRIPTS_KEY)
            project = Project(settings, listeners=[console.on_event], command=f"flask {name}",
                              source=current_app.name, stdout=sys.stdout)
            try:
                exit_code = body(project, console, options)
            finally:
                project.close()
        except FhirMigrationError as exc:
            raise CommandFailed(console.error_text(exc, renames), exc.exit_code) from None
        except KeyboardInterrupt as exc:
            click.echo(f"Interrupted ({interrupt_text(exc)}).", err=True)
            click.get_current_context().exit(exit_code_for(exc))
        if exit_code:
            click.get_current_context().exit(exit_code)

    return click.Command(name, callback=callback, params=click_params([*args, VERBOSITY]),
                         help=help, short_help=help.split(". ")[0].rstrip("."))


def commands() -> list[click.Command]:
    return [
        _command("migrate", "Create a new migration script NNNN_NAME.py whose down_revision is the "
                 "current head.", (*MAKEMIGRATION, SCRIPTS_FOLDER), _makemigration),
        _command("upgrade", "Apply every unapplied FHIR migration, in order (or up to TARGET).",
                 MIGRATE, verbs.migrate),
        _command("downgrade", "Revert the most recent FHIR migration (or --steps N, down to "
                 "TARGET, or 'zero' for all).", DOWNGRADE, verbs.downgrade),
        _command("reset", "Forget the FHIR migration state (head := None). Runs no migration and "
                 "changes no data; asks first.", RESET, verbs.reset,
                 needs_scripts=lambda options: False),
        _command("showmigrations", "List every FHIR migration: applied [X] or not [ ], when and "
                 "by whom.", SHOWMIGRATIONS, verbs.showmigrations),
        _command("history", "What happened to the FHIR migration state, newest first "
                 "(AuditEvents).", HISTORY, verbs.history, needs_scripts=lambda options: False),
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
