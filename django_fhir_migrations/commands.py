"""One function per verb: the whole behaviour of each command, for every front door.

As Alembic's `command.py`: `migrate`, `downgrade`, `reset`, `makemigration`, `showmigrations`
and `history` take the engine's `Project`, the front door's `Console` and the parsed options
(keys as in arguments.py, the same for argparse and click) and return the exit status. The
Django commands, the `fhir-migrations` CLI and the Flask blueprint only parse arguments, build
these two objects and call the function; nothing about a verb lives in two places. Engine
errors (`FhirMigrationError`) propagate: each front door reports them its own way (Django's
CommandError, click's "Error:") with `Console.error_text`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .console import Console
from .engine import FhirMigrationError, Project
from .engine.config import ScriptLocation
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
    confirm = console.confirm()
    settings = project.settings
    migrate = console.vocabulary.command("migrate")
    question = (f"This forgets which FHIR migrations are applied on state {settings.state_id!r} at "
                f"{settings.base_url}. No resource data is changed, but the next `{migrate}` will "
                "run every migration again, and ctx.undo() of migrations applied so far will not "
                "be possible until they are applied again or re-adopted with "
                f"`{migrate} --fake`.")
    if confirm is not None and not confirm(question):
        console.line("info", "Reset cancelled.")
        return 1
    return project.reset(lock_timeout=options.get("lock_timeout")).exit_code


def makemigration(project: Project, console: Console, options: Options, *,
                  location: ScriptLocation | None = None) -> int:
    """`location`: the folder the front door's own flag chose (--app, --dir), or None."""
    name = options.get("name")
    merge = bool(options.get("merge"))
    if not name:
        if not merge:
            raise UsageError(f"Give the migration a name, e.g. `{console.vocabulary.example}`.")
        heads = project.loader.valid_graph(allow_multiple_heads=True).heads
        name = "merge_" + "_".join(node.revision[:8] for node in heads)
    project.make_migration(name, location=location, merge=merge, check=options.get("check", True),
                           message=options.get("message") or "")
    return 0


def showmigrations(project: Project, console: Console, options: Options) -> int:
    offline = bool(options.get("offline"))
    status = project.status(offline=offline)
    for kind, line in format_status(status, console.verbosity, vocabulary=console.vocabulary):
        console.line(kind, line, 0 if kind == "error" else 1, to_stdout=True)
    return status_exit_code(status)


def history(project: Project, console: Console, options: Options) -> int:
    records = project.history(limit=options.get("limit") or 50)
    for kind, line in format_history(records, project.settings.state_id, console.verbosity,
                                     vocabulary=console.vocabulary):
        console.line(kind, line, to_stdout=True)
    return 0


VERBS = {
    "makemigration": makemigration, "migrate": migrate, "downgrade": downgrade, "reset": reset,
    "showmigrations": showmigrations, "history": history,
}
