"""`fhir-migrations`: the migration commands without Django, for CI jobs and non-Django projects.

    fhir-migrations makemigration NAME    fhir-migrations migrate [TARGET]
    fhir-migrations downgrade [TARGET]    fhir-migrations reset
    fhir-migrations showmigrations        fhir-migrations history
    fhir-migrations testserver start|stop|status|build   (a throw-away HAPI for tests)

Same arguments, flags and exit codes as the Django commands (fhirmakemigration, fhirmigrate,
...; the flags come from arguments.py for both). Configuration comes from the environment, as
for the seed tool and twelve-factor deploys (FHIR_BASE_URL, MIGRATION_SCRIPTS_DIR,
MIGRATION_RESOURCE_ID, FHIR_MIGRATIONS_*), and `--base-url`, `--scripts-dir`, `--state-id` win
over it. Stdlib argparse only; Django is never imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from . import __version__
from .arguments import SCRIPTS_FOLDER, VERBOSITY, add_arguments
from .commands import VERBS, run_verb
from .console import CLI, Console, configure_logging, plain_console
from .engine import FhirMigrationError, Settings
from .engine.config import ENV_VARS, SCRIPTS_DIR_ENV
from .engine.redaction import scrubbed_traceback
from .standalone import build_settings, require_scripts, scripts_folder

PROG = "fhir-migrations"
SOURCE = "fhir-migrations"  # how the engine names settings that came from nowhere in particular


def _other_settings() -> list[str]:
    named = {"FHIR_BASE_URL", "MIGRATION_RESOURCE_ID", "FHIR_MIGRATIONS_STATE_ID"}
    return [v.removeprefix("FHIR_MIGRATIONS_") for v in ENV_VARS if v not in named]


EPILOG = f"""\
environment (the flags above win over it):
  FHIR_BASE_URL            the FHIR server's base URL (--base-url)
  {SCRIPTS_DIR_ENV}    folder(s) of migration scripts, {os.pathsep!r}-separated (--scripts-dir)
  MIGRATION_RESOURCE_ID    which migration state on the server (--state-id); default 'default'
  FHIR_MIGRATIONS_<KEY>    any other setting:
{textwrap.fill(", ".join(_other_settings()), 88, initial_indent=" " * 27, subsequent_indent=" " * 27)}

exit status: 0 success; 1 an error, or unapplied migrations with `{PROG} migrate --check`;
  2 wrong usage; 3 timed out waiting for the migration lock.
"""


# Alembic's name for migrate, accepted too.
ALIASES = {"migrate": ("upgrade",)}


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (SUPPRESS: an absent one overrides
    nothing, so `fhir-migrations -v 2 migrate` and `fhir-migrations migrate -v 2` both work)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (overrides the environment)")
    group.add_argument("--base-url", default=argparse.SUPPRESS, metavar="URL",
                       help="The FHIR server's base URL (env FHIR_BASE_URL).")
    group.add_argument("--scripts-dir", action="append", default=argparse.SUPPRESS,
                       metavar="FOLDER", dest="scripts_dirs",
                       help=f"A folder of migration scripts; repeat for several (env {SCRIPTS_DIR_ENV}).")
    group.add_argument("--state-id", default=argparse.SUPPRESS, metavar="ID",
                       help="Which migration state on the server (env MIGRATION_RESOURCE_ID).")
    output = common.add_argument_group("output")
    output.add_argument(*VERBOSITY.names, type=int, choices=VERBOSITY.choices,
                        default=argparse.SUPPRESS, dest="verbosity", help=VERBOSITY.help)
    output.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="Show the traceback of an error, not only its message.")
    output.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                        help="Do not colour the output.")
    return common


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=prog, parents=[common], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Versioned data migrations for FHIR servers (django-fhir-migrations), "
                    "without Django.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS.values():
        sub = commands.add_parser(verb.name, aliases=ALIASES.get(verb.name, ()), parents=[common],
                                  help=verb.help, description=verb.help)
        add_arguments(sub, (*verb.arguments, SCRIPTS_FOLDER) if verb.folder else verb.arguments)
    add_testserver_parser(commands)
    return parser


TESTSERVER_HELP = ("A throw-away HAPI FHIR server for your migration tests (needs Java 17 and "
                   "Maven): built from Maven Central into a cache folder, started in the "
                   "background on 127.0.0.1, data in memory.")


def add_testserver_parser(commands: Any) -> None:
    from .testserver import ACTIONS, DEFAULT_PORT, START_TIMEOUT

    sub = commands.add_parser("testserver", help=TESTSERVER_HELP, description=TESTSERVER_HELP)
    sub.add_argument("action", nargs="?", choices=ACTIONS, default="status",
                     help="start (builds first if needed), stop, status (default), build.")
    sub.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"Port on 127.0.0.1 (default {DEFAULT_PORT}).")
    sub.add_argument("--cache-dir", metavar="FOLDER", default=None,
                     help="Where it is built and its log kept (default: FHIR_MIGRATIONS_TESTSERVER_HOME, "
                          "else ~/.cache/django-fhir-migrations/testserver).")
    sub.add_argument("--timeout", type=float, default=START_TIMEOUT, metavar="SECONDS",
                     help=f"How long start waits for the server to answer (default {START_TIMEOUT:.0f}).")


def run_testserver(options: Mapping[str, Any], console: Console) -> int:
    """`testserver`: no settings, no scripts, no Project: it only runs a server for tests."""
    from pathlib import Path

    from .testserver import run

    home = Path(options["cache_dir"]) if options.get("cache_dir") else None
    return run(options["action"], port=options["port"], home=home, timeout=options["timeout"],
               say=lambda text: console.line("info", text, 0))


def settings_from(options: Mapping[str, Any], environ: Mapping[str, str]
                  ) -> tuple[Settings, dict[str, str]]:
    """Settings from the environment with the flags on top, and the renames that make errors
    name the flag the user gave instead of the variable it was passed through."""
    env = dict(environ)
    renames = {f"{SOURCE}['BASE_URL']": "--base-url (or FHIR_BASE_URL)"}
    if options.get("base_url") is not None:
        env["FHIR_BASE_URL"] = options["base_url"]
        renames["environment variable FHIR_BASE_URL"] = "--base-url"
    if options.get("state_id") is not None:
        env.pop("MIGRATION_RESOURCE_ID", None)
        env["FHIR_MIGRATIONS_STATE_ID"] = options["state_id"]
        renames["environment variable FHIR_MIGRATIONS_STATE_ID"] = "--state-id"
    if options.get("scripts_dirs"):
        env[SCRIPTS_DIR_ENV] = os.pathsep.join(options["scripts_dirs"])
        renames[f"environment variable {SCRIPTS_DIR_ENV}"] = "--scripts-dir"
    return build_settings({}, environ=env, source=SOURCE, renames=renames), renames


_ANSI = {"heading": "1;36", "success": "32", "warning": "33", "error": "31"}


def ansi_styler(stream: IO[str], disabled: bool) -> Callable[[str, str], str] | None:
    """Colours for a terminal, none for pipes, files, NO_COLOR or --no-color."""
    isatty = getattr(stream, "isatty", None)
    if disabled or os.environ.get("NO_COLOR") or not (isatty and isatty()):
        return None

    def style(kind: str, text: str) -> str:
        code = _ANSI.get(kind)
        return f"\033[{code}m{text}\033[0m" if code else text

    return style


CHANGES_STATE = {"migrate", "downgrade", "reset"}


def warn_inside_django(name: str, settings: Settings, options: Mapping[str, Any],
                       stderr: IO[str]) -> None:
    """Run inside a Django project, this command does not read its FHIR_MIGRATIONS setting, so a
    `migrate` there may use another state than manage.py's (a different STATE_ID) and apply
    everything again: before a command that changes the state, say so on stderr, unless a state
    id was given explicitly."""
    inside = os.environ.get("DJANGO_SETTINGS_MODULE") or os.path.exists("manage.py")
    changes = name in CHANGES_STATE and not (options.get("plan") or options.get("check")
                                              or options.get("dry_run"))
    if not inside or not changes or options.get("state_id") is not None or any(
            os.environ.get(v) for v in ("MIGRATION_RESOURCE_ID", "FHIR_MIGRATIONS_STATE_ID")):
        return
    stderr.write(f"Warning: this looks like a Django project (DJANGO_SETTINGS_MODULE is set or "
                 f"./manage.py exists), but {PROG} does not read its settings: it uses state "
                 f"{settings.state_id!r}. Use `python manage.py fhir...` there, or pass --state-id "
                 "to say which state you mean.\n")


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    parser = build_parser(prog)
    try:
        options = vars(parser.parse_args(argv))
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    stdout, stderr = sys.stdout, sys.stderr
    verbosity = options.setdefault("verbosity", 1)
    styler = ansi_styler(stdout, options.get("no_color", False))
    configure_logging(verbosity)
    console = plain_console(CLI, stdout=stdout, stderr=stderr, verbosity=verbosity, styler=styler,
                            interactive=options.get("interactive", True))
    try:
        if options["command"] == "testserver":
            return run_testserver(options, console)
        verb = next(v for v in VERBS.values() if options["command"] in (v.name, *ALIASES.get(v.name, ())))
        return run_verb(
            verb, options, console, settings=lambda: settings_from(options, os.environ),
            command=CLI.command(verb.name), source=f"{PROG} CLI", stdout=stdout,
            locate=lambda settings, options: scripts_folder(settings, options.get("dir"), "--dir"),
            require_scripts=lambda settings: require_scripts(settings, f"--scripts-dir (or {SCRIPTS_DIR_ENV})"),
            before=lambda settings: warn_inside_django(verb.name, settings, options, stderr),
            traceback=options.get("traceback", False))
    except FhirMigrationError as exc:  # testserver's (run_verb reports those of the verbs)
        return console.report(exc)
    except Exception as exc:  # a bug: its traceback, scrubbed (a script's text may hold a token)
        stderr.write(scrubbed_traceback(exc))
        return 1
