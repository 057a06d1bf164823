"""The engine's front door: one object per command run, which the Django commands, the CLI,
the Flask blueprint, the admin page and the seed facade all call.

Expensive things are built once and lazily (as Alembic's RevisionMap): the loader imports the
scripts on first use, the connection is made on first use, and a command that only needs the
scripts (`makemigration --no-check`) never talks to the server.
"""

from __future__ import annotations

from functools import cached_property

from .audit import Actor
from .config import ScriptLocation, Settings
from .errors import FhirServerError, WriterError
from .executor import Confirm, MigrationExecutor, Outcome
from .fhir.client import FhirConnection
from .loader import MigrationLoader
from .lock import current_user
from .recorder import StateRecorder
from .report import Reporter
from .status import ProjectStatus, build_status
from .writer import NewScript, validate_name, write_script


class Project:
    def __init__(self, settings: Settings, *, reporter: Reporter | None = None,
                 command: str = "fhir-migrations", source: str = "django-fhir-migrations"):
        self.settings = settings
        self.reporter = reporter or Reporter()
        self.command = command
        self.source = source

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
                                 reporter=self.reporter, actor=self.actor)

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

    def status(self, *, offline: bool = False, audit_events: int = 0) -> ProjectStatus:
        connection = None if offline else self.connection
        return build_status(self.loader, connection, self.settings.base_url or "",
                            self.settings.state_id, audit_events=audit_events)

    def make_migration(self, name: str, *, location: ScriptLocation | None = None,
                       merge: bool = False, check: bool = True, message: str = "") -> NewScript:
        name = validate_name(name, self.loader.names())
        graph = self.loader.valid_graph(allow_multiple_heads=merge)
        heads = [node.script for node in graph.heads]
        if merge and len(heads) < 2:
            raise WriterError(name, "there is nothing to merge: the history has a single head.")
        if check and heads:
            self._refuse_while_unapplied(name, graph)
        location = location or self._default_location(name, heads)
        down = tuple(h.revision for h in heads)
        new = write_script(location, name, down, message)
        self.reporter.success(f"Created {new.path} (revision {new.revision}, revises "
                              f"{', '.join(down) or 'None'}).")
        return new

    def _refuse_while_unapplied(self, name: str, graph) -> None:
        try:
            state = StateRecorder(self.connection, self.settings.state_id).read()
        except FhirServerError as exc:
            raise WriterError(
                name, f"could not check the server for unapplied migrations ({exc}). Pass "
                "--no-check to create the script without asking the server."
            ) from None
        pending = graph.forwards_plan(state.applied_revisions(graph))
        if pending:
            names = ", ".join(f"{s.name} ({s.short})" for s in pending)
            raise WriterError(
                name, f"migration(s) {names} are not applied on {self.settings.base_url} yet. "
                "Apply them first (fhirmigrate), or pass --no-check to create it anyway."
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
                name, "there is no scripts folder: add an app with a fhir_migrations/ folder, "
                "set SCRIPTS_DIRS or MIGRATION_SCRIPTS_DIR, or give --app."
            )
        labels = ", ".join(loc.label for loc in locations)
        raise WriterError(name, f"several script folders exist ({labels}); choose one with --app.")
