"""Command bodies shared by the front doors that are not Django: the CLI and the Flask blueprint.

Each function takes a `Project` and the parsed options (keys as in arguments.py, the same the
Django commands read), calls the engine and returns the exit status. They raise
`FhirMigrationError`; each front door turns that into its own one-paragraph error and exit code.
Settings come from a mapping plus the environment, as for Django (`Settings.build`); a front
door can rename the settings an error names (e.g. the CLI says `--base-url` where the engine
would say `FHIR_MIGRATIONS['BASE_URL']`), so the message points at what the user typed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from .engine import FhirMigrationError, Project, Reporter, ScriptLocation, Settings
from .engine.config import SCRIPTS_DIR_ENV
from .engine.errors import ConfigurationError, WriterError
from .engine.redaction import scrub
from .formatting import format_status, status_exit_code

LOGGER = "django_fhir_migrations"

Confirm = Callable[[str], bool]
Emit = Callable[[str, str], None]  # (kind, line)


class UsageError(FhirMigrationError):
    """The command was called in a way that cannot work (as Django's CommandError)."""


# --- output ----------------------------------------------------------------------------------


class ConsoleReporter(Reporter):
    """The engine's reporter for a terminal: errors to stderr, optional styling per kind."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 verbosity: int = 1, styler: Callable[[str, str], str] | None = None):
        super().__init__(stdout or sys.stdout, verbosity)
        self.stderr = stderr or sys.stderr
        self.styler = styler

    def style(self, kind: str, text: str) -> str:
        return self.styler(kind, text) if self.styler else text

    def _write(self, kind: str, text: str, level: int) -> None:
        if self.verbosity < level:
            return
        stream = self.stderr if kind == "error" else self.stream
        stream.write(self.style(kind, scrub(text)) + "\n")
        stream.flush()


def configure_logging(verbosity: int, stream: IO[str] | None = None) -> None:
    """-v 2 shows the engine's INFO log lines on stderr, -v 3 its DEBUG lines too.

    Left alone when the application configured logging itself (any handler present).
    """
    logger = logging.getLogger(LOGGER)
    if verbosity < 2 or logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity >= 3 else logging.INFO)


# --- settings --------------------------------------------------------------------------------


def build_settings(values: Mapping[str, Any], *, environ: Mapping[str, str], source: str,
                   renames: Mapping[str, str]) -> Settings:
    try:
        return Settings.build(values, environ=environ, source=source)
    except ConfigurationError as exc:
        raise renamed(exc, renames) from None


def renamed(exc: FhirMigrationError, renames: Mapping[str, str]) -> FhirMigrationError:
    """The same error, naming the setting as the user wrote it (a flag, an app.config key)."""
    if isinstance(exc, ConfigurationError) and exc.setting in renames:
        return ConfigurationError(renames[exc.setting], exc.problem)
    return exc


# Engine messages give advice in terms of the Django commands ("run `fhirmigrate --break-lock`");
# the other front doors name their own command instead.
_DJANGO_COMMAND = re.compile(
    r"\b(?:manage\.py )?(fhirmakemigration|fhirmigrate|fhirdowngrade|fhirreset|fhirshowmigrations)\b"
)


def error_message(exc: FhirMigrationError, renames: Mapping[str, str],
                  commands: Mapping[str, str]) -> str:
    """The error's paragraph, naming the user's setting and command (`commands` maps each
    Django command name to this front door's)."""
    text = scrub(str(renamed(exc, renames)))
    return _DJANGO_COMMAND.sub(lambda match: commands.get(match.group(1), match.group(0)), text)


def require_scripts(settings: Settings, where: str) -> None:
    """Outside Django no app folders exist: without a scripts folder every command is a no-op,
    which is a configuration mistake rather than "nothing to do"."""
    if not settings.locations:
        raise ConfigurationError(
            where, f"no folder of migration scripts is configured. Point it (or the environment "
            f"variable {SCRIPTS_DIR_ENV}) at the folder that holds your migration scripts.",
        )


def scripts_folder(settings: Settings, folder: str | None, flag: str) -> ScriptLocation | None:
    """The configured scripts folder `folder` names (None: let the engine choose)."""
    if folder is None:
        return None
    wanted = Path(folder).expanduser().resolve()
    for location in settings.locations:
        if location.path == wanted:
            return location
    known = ", ".join(str(loc.path) for loc in settings.locations) or "none"
    raise ConfigurationError(flag, f"{folder!r} is not one of the configured scripts folders "
                                   f"({known}).")


# --- commands --------------------------------------------------------------------------------


def migrate(project: Project, options: Mapping[str, Any], confirm: Confirm | None) -> int:
    if options.get("break_lock"):
        return project.break_lock(confirm).exit_code
    outcome = project.migrate(
        options.get("target"), plan_only=options.get("plan", False),
        fake=options.get("fake", False), dry_run=options.get("dry_run", False),
        check=options.get("check", False), lock_timeout=options.get("lock_timeout"),
        ignore_checksums=options.get("ignore_checksums", False),
    )
    return outcome.exit_code


def downgrade(project: Project, options: Mapping[str, Any]) -> int:
    outcome = project.downgrade(
        options.get("target"), steps=options.get("steps"), plan_only=options.get("plan", False),
        fake=options.get("fake", False), dry_run=options.get("dry_run", False),
        lock_timeout=options.get("lock_timeout"),
    )
    return outcome.exit_code


def reset_question(settings: Settings, migrate_command: str) -> str:
    return (f"This forgets which FHIR migrations are applied on state {settings.state_id!r} at "
            f"{settings.base_url}. No data is changed, and the next `{migrate_command}` will run "
            "every migration again.")


def reset(project: Project, options: Mapping[str, Any], confirm: Confirm | None, *,
          migrate_command: str) -> int:
    if confirm is not None and not confirm(reset_question(project.settings, migrate_command)):
        project.reporter.info("Reset cancelled.")
        return 1
    return project.reset(lock_timeout=options.get("lock_timeout")).exit_code


def makemigration(project: Project, options: Mapping[str, Any], *, example: str,
                  folder_flag: str) -> int:
    """`example` shows how to name one (e.g. "flask migrate add_mrn"); `folder_flag` is the
    option that picks a folder when several are configured."""
    name = options.get("name")
    merge = bool(options.get("merge"))
    if not name:
        if not merge:
            raise UsageError(f"Give the migration a name, e.g. `{example}`.")
        heads = project.loader.valid_graph(allow_multiple_heads=True).heads
        name = "merge_" + "_".join(node.revision[:8] for node in heads)
    location = scripts_folder(project.settings, options.get("dir"), folder_flag)
    try:
        project.make_migration(name, location=location, merge=merge,
                               check=options.get("check", True), message=options.get("message") or "")
    except WriterError as exc:
        if "--app" not in exc.problem:
            raise
        # The engine speaks of Django apps; here the choice is between folders.
        folders = ", ".join(str(loc.path) for loc in project.settings.locations)
        raise WriterError(exc.name, f"several scripts folders are configured ({folders}); choose "
                                    f"one with {folder_flag} FOLDER.") from None
    return 0


def showmigrations(project: Project, options: Mapping[str, Any], emit: Emit, verbosity: int) -> int:
    offline = bool(options.get("offline"))
    status = project.status(offline=offline)
    for kind, line in format_status(status, verbosity, offline=offline):
        emit(kind, line)
    return status_exit_code(status, offline=offline)
