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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import Blueprint, Flask, current_app
from flask.cli import with_appcontext

from ..arguments import SCRIPTS_FOLDER, VERBOSITY, click_params
from ..commands import VERBS, Verb, run_verb
from ..console import FLASK, Console, configure_logging
from ..engine import FhirMigrationError, Settings
from ..engine.config import SCRIPTS_DIR_ENV
from ..engine.errors import ConfigurationError
from ..standalone import build_settings, require_scripts, scripts_folder

CONFIG = "FHIR_MIGRATIONS"
SOURCE = f"app.config[{CONFIG!r}]"
# app.config key (the seed tool's, also its environment variable) -> settings key
TOP_LEVEL_KEYS = {"FHIR_BASE_URL": "BASE_URL", "MIGRATION_RESOURCE_ID": "STATE_ID"}
SCRIPTS_KEY = f"app.config[{SCRIPTS_DIR_ENV!r}]"

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


def _command(verb: Verb) -> click.Command:
    @with_appcontext
    def callback(**options: Any) -> None:
        verbosity = options.pop("verbosity")
        configure_logging(verbosity)
        exit_code = run_verb(
            verb, options, click_console(verbosity, options.get("interactive", True)),
            settings=lambda: flask_settings(current_app), command=FLASK.command(verb.name),
            source=current_app.name, stdout=sys.stdout,
            locate=lambda settings, options: scripts_folder(settings, options.get("dir"), "--dir"),
            require_scripts=lambda settings: require_scripts(settings, SCRIPTS_KEY),
            on_error=command_failed)
        if exit_code:
            click.get_current_context().exit(exit_code)

    args = (*verb.arguments, SCRIPTS_FOLDER) if verb.folder else verb.arguments
    return click.Command(FLASK.command(verb.name).removeprefix("flask "), callback=callback,
                         params=click_params([*args, VERBOSITY]), help=verb.help,
                         short_help=verb.short_help)


def command_failed(error: FhirMigrationError, text: str) -> int:
    """click prints a ClickException as `Error: <message>` on stderr, no traceback."""
    raise CommandFailed(text, error.exit_code) from None


def commands() -> list[click.Command]:
    """The seed tool's commands (`flask migrate NAME`, `flask upgrade`, ...), one per verb."""
    return [_command(verb) for verb in VERBS.values()]


def create_blueprint(name: str = "fhir_migrations", *, cli_group: str | None = None) -> Blueprint:
    """A blueprint carrying the commands; `cli_group="fhir"` would nest them (`flask fhir upgrade`)
    for apps where the top-level names are taken (e.g. another `migrate`)."""
    blueprint = Blueprint(name, __name__, cli_group=cli_group)
    for command in commands():
        blueprint.cli.add_command(command)
    return blueprint


migration_blueprint = create_blueprint()

__all__ = ["create_blueprint", "flask_settings", "migration_blueprint"]
