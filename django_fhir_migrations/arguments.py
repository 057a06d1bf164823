"""The arguments each command takes, described once for every front door.

The Django commands and the standalone CLI are argparse; the Flask blueprint is click. Writing
each flag once as data, and rendering it for either library, keeps names, destinations and help
texts identical across `manage.py fhirmigrate`, `fhir-migrations migrate` and `flask upgrade`.
The `dest` of every argument is the option key the command bodies read (commands.py).

No Django and no click at import time: click is imported only when click parameters are built.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arg:
    """One argument. Positionals (a name without a dash) are always optional (nargs='?')."""

    names: tuple[str, ...]
    help: str
    action: str = "store"  # "store", "store_true" or "store_false"
    dest: str | None = None
    type: type | None = None
    default: Any = None
    metavar: str | None = None
    choices: tuple[int, ...] | None = None

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")

    @property
    def key(self) -> str:
        """The option key the value lands under (argparse's dest, click's parameter name)."""
        if self.dest:
            return self.dest
        if self.positional:
            return self.names[0]
        longest = max(self.names, key=len)
        return longest.lstrip("-").replace("-", "_")


PLAN = Arg(("--plan",), "Print the plan; change nothing.", action="store_true")
LOCK_TIMEOUT = Arg(("--lock-timeout",), "How long to wait for another process's migration lock "
                   "(default: LOCK_TIMEOUT setting).", type=float, metavar="SECONDS")
BREAK_LOCK = Arg(("--break-lock",), "Remove another process's migration lock first (asks; "
                 "--noinput answers yes), then run.", action="store_true")
NOINPUT = Arg(("--noinput", "--no-input", "--yes"), "Do not ask for confirmation; answer yes.",
              action="store_false", dest="interactive", default=True)

MIGRATE: tuple[Arg, ...] = (
    Arg(("target",), "Revision (or unique prefix), migration name, 'head', or +N (the next N)."),
    PLAN,
    Arg(("--fake",), "Record the migrations as applied without running them.", action="store_true"),
    Arg(("--dry-run",), "Run the migrations with every write printed instead of sent; record nothing.",
        action="store_true"),
    Arg(("--check",), "Exit with status 1 if any migration is unapplied (deploy gate).",
        action="store_true"),
    Arg(("--ignore-checksums",), "Proceed even if applied scripts were edited since they ran.",
        action="store_true"),
    Arg(("--accept-checksums",), "Record the current checksum of applied scripts edited since they "
        "ran (audited); runs nothing.", action="store_true"),
    BREAK_LOCK,
    Arg(("--pause",), "Ask the migration running on this state (on any host) to stop at its next "
        "bundle; a plain run continues it.", action="store_true"),
    Arg(("--cancel",), "Stop the running (or paused, or interrupted) migration and revert what it "
        "wrote (asks first); nothing is recorded as applied.", action="store_true"),
    Arg(("--retry-failed",), "Run an applied migration again over exactly the resources it left "
        "as failures (accepting the script as it is now).", metavar="NAME"),
    Arg(("--forget-bulk-job",), "Forget a server-side bulk job an interrupted migration may still "
        "be running (asks first); the next run starts a new one. Runs nothing.", action="store_true"),
    LOCK_TIMEOUT,
    NOINPUT,
)

DOWNGRADE: tuple[Arg, ...] = (
    Arg(("target",), "Revision, prefix or name to keep as the new head, -N (N steps back), or "
        "'zero'."),
    Arg(("--steps",), "Revert this many migrations.", type=int, metavar="N"),
    PLAN,
    Arg(("--fake",), "Record the migrations as reverted without running them.", action="store_true"),
    Arg(("--dry-run",), "Run the downgrades with writes printed instead of sent.", action="store_true"),
    BREAK_LOCK,
    LOCK_TIMEOUT,
    NOINPUT,
)

RESET: tuple[Arg, ...] = (LOCK_TIMEOUT, NOINPUT)

MAKEMIGRATION: tuple[Arg, ...] = (
    Arg(("name",), "The migration's name (the file becomes NNNN_<name>.py)."),
    Arg(("--merge",), "Create a merge script whose down_revision is every head.", action="store_true"),
    Arg(("--no-check",), "Do not ask the server whether every migration is applied.",
        action="store_false", dest="check", default=True),
    Arg(("-m", "--message"), "First line of the docstring.", default=""),
)

# Where makemigration puts the script: an app for manage.py; outside Django there are no apps
# to choose, and the CLI and Flask choose one of the configured folders.
APP_FOLDER = Arg(("--app",), "Put the script in this app's fhir_migrations/ folder.", metavar="APP")
SCRIPTS_FOLDER = Arg(("--dir",), "Put the script in this one of the configured scripts folders.",
                     metavar="FOLDER")

HISTORY: tuple[Arg, ...] = (
    Arg(("--limit",), "Show at most this many events (default 50).", type=int, metavar="N"),
)

SHOWMIGRATIONS: tuple[Arg, ...] = (
    Arg(("--offline",), "Do not contact the server; list the scripts only.", action="store_true"),
)

# Django brings its own -v; the CLI and Flask use this one, with Django's meaning.
VERBOSITY = Arg(("-v", "--verbosity"), "0 errors only, 1 normal, 2 engine log lines, 3 debug.",
                type=int, default=1, choices=(0, 1, 2, 3))


def add_arguments(parser: argparse.ArgumentParser, args: Iterable[Arg]) -> None:
    """Add `args` to an argparse parser (Django's CommandParser is one)."""
    for arg in args:
        if arg.positional:
            parser.add_argument(arg.names[0], nargs="?", default=arg.default, help=arg.help)
        elif arg.action in ("store_true", "store_false"):
            parser.add_argument(*arg.names, action=arg.action, dest=arg.key, help=arg.help)
        else:
            parser.add_argument(*arg.names, dest=arg.key, type=arg.type or str, default=arg.default,
                                metavar=arg.metavar, choices=arg.choices, help=arg.help)


def click_params(args: Iterable[Arg]) -> list[Any]:
    """The same arguments as click parameters (for the Flask blueprint)."""
    import click

    params: list[click.Parameter] = []
    for arg in args:
        if arg.positional:
            params.append(click.Argument([arg.key], required=False, default=arg.default))
        elif arg.action == "store_true":
            params.append(click.Option([*arg.names, arg.key], is_flag=True, default=False,
                                       help=arg.help))
        elif arg.action == "store_false":
            params.append(click.Option([*arg.names, arg.key], is_flag=True, flag_value=False,
                                       default=True, help=arg.help))
        else:
            kind: Any = arg.type
            if arg.choices:
                kind = click.IntRange(min(arg.choices), max(arg.choices))
            params.append(click.Option([*arg.names, arg.key], type=kind, default=arg.default,
                                       metavar=arg.metavar, help=arg.help,
                                       show_default=arg.default not in (None, "")))
    return params


def option_strings(args: Iterable[Arg]) -> set[str]:
    """Every option string (e.g. '--plan'), for comparing front doors."""
    return {name for arg in args if not arg.positional for name in arg.names}
