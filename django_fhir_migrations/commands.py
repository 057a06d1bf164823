"""Each verb defined once: its whole behaviour, its help, its options, for every front door.

As Alembic's `command.py`: `migrate`, `downgrade`, `reset`, `makemigration`, `showmigrations`
and `history` take the engine's `Project`, the front door's `Console` and the parsed options
(keys as in arguments.py, the same for argparse and click) and return the exit status. Each
function's docstring opens with its help text; `VERBS` adds what a front door needs to build
the command (its arguments from arguments.py, whether it reads scripts, whether it takes a
scripts-folder flag). The Django commands, the `fhir-migrations` CLI and the Flask blueprint
loop over `VERBS` and run a verb through `run_verb`, which builds the Project, runs the body,
closes the Project and reports an error or an interruption the same way for all three. A new
command is a function here and its row in `VERBS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from .arguments import DOWNGRADE, HISTORY, MAKEMIGRATION, MIGRATE, RESET, SHOWMIGRATIONS, Arg
from .console import Console
from .engine import FhirMigrationError, Project, Settings
from .engine.config import ScriptLocation
from .engine.events import Listener, ResetQuestion
from .engine.interrupts import exit_code_for, interrupt_text
from .engine.redaction import scrubbed_traceback
from .formatting import format_history, format_status, status_exit_code

Options = Mapping[str, Any]


class UsageError(FhirMigrationError):
    """The command was called in a way that cannot work (as Django's CommandError)."""


def _break_lock_first(project: Project, console: Console, options: Options) -> int:
    """--break-lock: break the lock (asking first), so that the run that follows takes it at
    once; 0 to go on, else the exit status (the user said no). Runs that take no lock (--plan,
    --check, --dry-run) have nothing to break it for."""
    if not options.get("break_lock"):
        return 0
    lockless = [flag for key, flag in (("plan", "--plan"), ("check", "--check"), ("dry_run", "--dry-run"))
                if options.get(key)]
    if lockless:
        raise UsageError(f"--break-lock breaks the migration lock before a run that takes it; "
                         f"{lockless[0]} takes no lock. Run them separately.")
    return project.break_lock(console.confirm()).exit_code


def migrate(project: Project, console: Console, options: Options) -> int:
    """Apply every unapplied FHIR data migration, in order (or up to TARGET)."""
    refused = _break_lock_first(project, console, options)
    if refused:
        return refused
    if options.get("accept_checksums"):
        return project.accept_checksums().exit_code
    if options.get("pause"):
        return project.request_pause(wait=options.get("lock_timeout")).exit_code
    if options.get("cancel"):
        return project.cancel(console.confirm(), lock_timeout=options.get("lock_timeout")).exit_code
    if options.get("retry_failed"):
        return project.retry_failed(options["retry_failed"], lock_timeout=options.get("lock_timeout")).exit_code
    if options.get("forget_bulk_job"):
        return project.forget_bulk_job(console.confirm(),
                                       lock_timeout=options.get("lock_timeout")).exit_code
    outcome = project.migrate(
        options.get("target"), plan_only=options.get("plan", False),
        fake=options.get("fake", False), dry_run=options.get("dry_run", False),
        check=options.get("check", False), lock_timeout=options.get("lock_timeout"),
        ignore_checksums=options.get("ignore_checksums", False),
    )
    return outcome.exit_code


def downgrade(project: Project, console: Console, options: Options) -> int:
    """Revert FHIR data migrations: the most recent one by default, --steps N, down to TARGET
    (kept applied), a relative -N, or 'zero' for all."""
    refused = _break_lock_first(project, console, options)
    if refused:
        return refused
    outcome = project.downgrade(
        options.get("target"), steps=options.get("steps"), plan_only=options.get("plan", False),
        fake=options.get("fake", False), dry_run=options.get("dry_run", False),
        lock_timeout=options.get("lock_timeout"),
    )
    return outcome.exit_code


def reset(project: Project, console: Console, options: Options) -> int:
    """Forget the FHIR migration state (head := None). Runs no migration and changes no data;
    asks for confirmation."""
    confirm = console.confirm()
    settings = project.settings
    if confirm is not None and not confirm(ResetQuestion(settings.state_id, settings.base_url or "")):
        console.line("info", "Reset cancelled.")
        return 1
    return project.reset(lock_timeout=options.get("lock_timeout")).exit_code


def makemigration(project: Project, console: Console, options: Options) -> int:
    """Create a new FHIR data migration script (numbered, e.g. 0003_add_mrn.py) whose
    down_revision is the current head.

    `options["location"]`: the folder the front door's own flag chose (--app, --dir), or None.
    """
    name = options.get("name")
    merge = bool(options.get("merge"))
    if not name:
        if not merge:
            raise UsageError(f"Give the migration a name, e.g. `{console.vocabulary.example}`.")
        heads = project.loader.valid_graph(allow_multiple_heads=True).heads
        name = "merge_" + "_".join(node.revision[:8] for node in heads)
    project.make_migration(name, location=options.get("location"), merge=merge,
                           check=options.get("check", True), message=options.get("message") or "")
    return 0


def showmigrations(project: Project, console: Console, options: Options) -> int:
    """List every FHIR data migration in graph order: applied [X], not [ ], unknown [?], when
    and by whom, the branches and any problem."""
    offline = bool(options.get("offline"))
    status = project.status(offline=offline)
    for kind, line in format_status(status, console.verbosity, vocabulary=console.vocabulary):
        console.line(kind, line, 0 if kind == "error" else 1, to_stdout=True)
    return status_exit_code(status)


def history(project: Project, console: Console, options: Options) -> int:
    """What happened to this FHIR migration state, newest first, from the server's
    AuditEvents: applied, reverted, faked, failed, reset; when, by whom, how long, the
    outcome."""
    records = project.history(limit=options.get("limit") or 50)
    for kind, line in format_history(records, project.settings.state_id, console.verbosity,
                                     vocabulary=console.vocabulary):
        console.line(kind, line, to_stdout=True)
    return 0


# --- the table every front door reads ------------------------------------------------------

Body = Callable[[Project, Console, Options], int]


@dataclass(frozen=True)
class Verb:
    """One command, for every front door: the body above, the arguments it reads
    (arguments.py: typed, with their help), whether it needs migration scripts (a front door
    without Django refuses to run it with no scripts folder configured) and whether it takes
    the front door's scripts-folder flag (`--app` for manage.py, `--dir` elsewhere), whose
    choice the body reads as `options["location"]`."""

    body: Body
    arguments: tuple[Arg, ...]
    needs_scripts: bool = True
    folder: bool = False

    @property
    def name(self) -> str:
        """The plain name, the key of a Vocabulary (`fhirmigrate`, `flask upgrade`...)."""
        return self.body.__name__

    @property
    def help(self) -> str:
        """The first paragraph of the body's docstring, on one line."""
        return " ".join(inspect.getdoc(self.body).split("\n\n")[0].split())  # type: ignore[union-attr]

    @property
    def short_help(self) -> str:
        return self.help.split(". ")[0].rstrip(".")


VERBS: dict[str, Verb] = {verb.name: verb for verb in (
    Verb(makemigration, MAKEMIGRATION, folder=True),
    Verb(migrate, MIGRATE),
    Verb(downgrade, DOWNGRADE),
    Verb(reset, RESET, needs_scripts=False),
    Verb(showmigrations, SHOWMIGRATIONS),
    Verb(history, HISTORY, needs_scripts=False),
)}

Locate = Callable[[Settings, Options], "ScriptLocation | None"]
OnError = Callable[[FhirMigrationError, str], int]


def run_verb(verb: Verb, options: Options, console: Console, *,
             settings: Callable[[], tuple[Settings, Mapping[str, str]]],
             command: str, source: str, stdout: IO[str] | None = None,
             listeners: Callable[[Settings], Iterable[Listener]] = lambda settings: (),
             locate: Locate | None = None,
             require_scripts: Callable[[Settings], None] | None = None,
             before: Callable[[Settings], None] | None = None,
             on_error: OnError | None = None, traceback: bool = False) -> int:
    """Run one verb as a front door does, and return its exit status.

    `settings()` builds the settings and the renames that make an error name what the user set
    (a flag, an app.config key); `listeners` adds the front door's own to its console's
    (Django's signals); `locate` turns the front door's folder flag into a scripts folder;
    `require_scripts` refuses to run a verb that reads scripts when none are configured;
    `before` runs once the settings are known (the CLI's warning inside a Django project).
    An engine error is reported once, as one paragraph naming this front door's commands:
    by `on_error(error, text)` (Django's CommandError, click's "Error:"), which returns the
    exit status, else on the console. An interruption (Ctrl-C, SIGTERM) is said the same way
    by every front door.
    """
    renames: Mapping[str, str] = {}
    try:
        built, renames = settings()
        if verb.needs_scripts and require_scripts is not None:
            require_scripts(built)
        if before is not None:
            before(built)
        if verb.folder:
            options = {**options, "location": locate(built, options) if locate else None}
        project = Project(built, listeners=[console.on_event, *listeners(built)], command=command,
                          source=source, stdout=stdout)
        try:
            return verb.body(project, console, options)
        finally:
            project.close()
    except FhirMigrationError as exc:
        if traceback:
            console.err(scrubbed_traceback(exc).rstrip("\n"))
        if on_error is None:
            return console.report(exc, renames)
        return on_error(exc, console.error_text(exc, renames))
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the run already cleaned up
        console.line("error", f"Interrupted ({interrupt_text(exc)}); the lock was released and "
                              "nothing more was recorded.", 0)
        return exit_code_for(exc)
