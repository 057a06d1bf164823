"""The engine's front door: one object per command run, which the command bodies (commands.py),
the admin page, the system checks and the seed facade all call.

Expensive things are built once and lazily (as Alembic's RevisionMap): the loader imports the
scripts on first use, the connection is made on first use, and a command that only needs the
scripts (`makemigration --no-check`, `--merge`, `showmigrations --offline`) never talks to the
server.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import IO

from .applied import History
from .audit import Actor, HistoryReport, attempt_record, read_history
from .config import ScriptLocation, Settings
from .errors import ConfigurationError, FhirServerError, WriterError
from .events import Confirm, EventStream, Listener, ScriptCreated
from .executor import MigrationExecutor, Outcome
from .fhir.client import FhirConnection
from .loader import MigrationLoader
from .lock import current_user, holder_is_gone
from .recorder import StateRecorder
from .scaffold import NewScript, validate_name, write_script
from .script import file_number
from .status import ProjectStatus, build_status


class Project:
    """Settings plus everything built from them for one command run.

    `listeners` receive the engine's events (console reporter, admin messages, tests);
    `command` and `source` name the front end in records and AuditEvents; `stdout` is what a
    script gets as `ctx.stdout`.
    """

    def __init__(self, settings: Settings, *, listeners: list[Listener] | None = None,
                 command: str = "fhir-migrations", source: str = "django-fhir-migrations",
                 stdout: IO[str] | None = None):
        self.settings = settings
        self.events = EventStream(listeners)
        self.command = command
        self.source = source
        self.stdout = stdout or sys.stdout

    @cached_property
    def loader(self) -> MigrationLoader:
        return MigrationLoader(self.settings.locations)

    @cached_property
    def connection(self) -> FhirConnection:
        return FhirConnection(self.settings)

    @cached_property
    def actor(self) -> Actor:
        return Actor.current(self.settings.applied_by or current_user(), self.command, self.source)

    @cached_property
    def executor(self) -> MigrationExecutor:
        return MigrationExecutor(self.settings, self.loader, self.connection,
                                 events=self.events, actor=self.actor, stdout=self.stdout)

    def close(self) -> None:
        if "connection" in self.__dict__:
            self.connection.close()

    # --- commands ------------------------------------------------------------------------

    def migrate(self, target: str | None = None, **options) -> Outcome:
        return self.executor.migrate(target, **options)

    def downgrade(self, target: str | None = None, **options) -> Outcome:
        return self.executor.downgrade(target, **options)

    def reset(self, **options) -> Outcome:
        return self.executor.reset(**options)

    def break_lock(self, confirm: Confirm | None) -> Outcome:
        return self.executor.break_lock(confirm)

    def request_pause(self, *, wait: float | None = None) -> Outcome:
        return self.executor.request_pause(wait=wait)

    def cancel(self, confirm: Confirm | None, *, lock_timeout: float | None = None) -> Outcome:
        return self.executor.cancel(confirm, lock_timeout=lock_timeout)

    def retry_failed(self, target: str, *, lock_timeout: float | None = None) -> Outcome:
        return self.executor.retry_failed(target, lock_timeout=lock_timeout)

    def forget_bulk_job(self, confirm: Confirm | None, *, lock_timeout: float | None = None) -> Outcome:
        return self.executor.forget_bulk_job(confirm, lock_timeout=lock_timeout)

    def accept_checksums(self, *, lock_timeout: float | None = None) -> Outcome:
        return self.executor.accept_checksums(lock_timeout=lock_timeout)

    def history(self, *, limit: int = 50) -> HistoryReport:
        """What happened to this state, newest first: the server's AuditEvents, and each
        migration whose attempt is unfinished (interrupted, or running under a live lease). On a
        server that keeps no AuditEvents (Helios), what the state records as applied instead,
        saying why."""
        state = StateRecorder(self.connection, self.settings.state_id).read()
        live = state.lock is not None and not state.lock_expired() and not holder_is_gone(state.lock)
        who = state.lock.describe() if state.lock is not None else ""
        graph = self.loader.graph
        unfinished = [attempt_record(a, graph.script(a.revision) if a.revision in graph else None,
                                     running=live, who=who) for a in state.attempts]
        scripts = {node.revision: node.script for node in graph.nodes.values()}
        return read_history(self.connection, state, limit, audit_enabled=self.settings.audit_events,
                            unfinished=unfinished, scripts=scripts)

    def status(self, *, offline: bool = False, audit_events: int = 0, validate: bool | None = None
               ) -> ProjectStatus:
        """What exists and what is applied. Scripts are imported and validated unless offline
        (`validate` overrides): an offline listing of a long history only reads the files."""
        connection = None if offline else self.connection
        return build_status(self.loader, connection, self.settings.base_url or "",
                            self.settings.state_id, audit_events=audit_events,
                            validate=not offline if validate is None else validate,
                            audit_enabled=self.settings.audit_events)

    def make_migration(self, name: str, *, location: ScriptLocation | None = None,
                       merge: bool = False, check: bool = True, message: str = "",
                       numbered: bool = True) -> NewScript:
        """Write a new script after the head (or, with `merge`, after every head).

        A merge never asks the server: its heads cannot be applied while there are two (as
        Alembic's `merge` does not look at the database).
        """
        name = validate_name(name, self.loader.names())
        graph = self.loader.valid_graph(allow_multiple_heads=merge)
        heads = [node.script for node in graph.heads]
        if merge and len(heads) < 2:
            raise WriterError(name, "there is nothing to merge: the history has a single head.")
        if check and heads and not merge:
            self._refuse_while_unapplied(name, graph)
        location = location or self._default_location(name, heads)
        down = tuple(h.revision for h in heads)
        new = write_script(location, name, down, message,
                           number=self.next_number() if numbered else None)
        self.events.emit(ScriptCreated(str(new.path), new.revision, down))
        return new

    def next_number(self) -> int:
        """The number the next file gets (Django's convention, so `ls` lists files in the order
        they apply): one more than the highest number in use, and never below the number of
        scripts, so a project that starts numbering after unnumbered seed files counts them.

        Scripts count once per number: two branches that each made a `0007_` (the case a merge
        joins) are one step of the history, so the merge is `0008_`, not `0009_`.
        """
        numbers = [file_number(s.path.name) for s in self.loader.loadable]
        used = {n for n in numbers if n is not None}
        unnumbered = sum(1 for n in numbers if n is None)
        return max([*used, len(used) + unnumbered]) + 1

    def _refuse_while_unapplied(self, name: str, graph) -> None:
        try:
            state = StateRecorder(self.connection, self.settings.state_id).read()
        except (FhirServerError, ConfigurationError) as exc:
            raise WriterError(
                name, f"could not check the server for unapplied migrations ({exc}).",
                "Pass --no-check to create the script without asking the server.",
            ) from None
        pending = History(state, graph).forwards_plan()
        if pending:
            names = ", ".join(f"{s.name} ({s.short})" for s in pending)
            raise WriterError(
                name, f"migration(s) {names} are not applied on {self.settings.base_url} yet.",
                "Apply them first ({migrate}), or pass --no-check to create it anyway.",
            )

    def _default_location(self, name: str, heads) -> ScriptLocation:
        locations = self.settings.locations
        if len(locations) == 1:
            return locations[0]
        if heads:
            by_path = {loc.path: loc for loc in locations}
            found = by_path.get(heads[-1].path.parent)
            if found is not None:
                return found
        if not locations:
            raise WriterError(
                name, "there is no scripts folder.",
                "Add an app with a fhir_migrations/ folder, set SCRIPTS_DIRS or "
                "MIGRATION_SCRIPTS_DIR, or give {folder_flag}.",
            )
        labels = ", ".join(loc.label if loc.label != "dir" else str(loc.path) for loc in locations)
        raise WriterError(name, f"several script folders exist ({labels});",
                          "choose one with {folder_flag}.")
