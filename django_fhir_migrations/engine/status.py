"""What exists, what is applied, when and by whom: the data behind showmigrations and the admin.

Building a status never raises for graph or server problems: they become `problems` (and
`server_error`), because the status page is exactly where a user goes to see them. The same
holds for the recent AuditEvents the admin page shows: a server that refuses to list them
gives `audit_error`, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .audit import AuditRecord, recent_events
from .errors import FhirMigrationError, FhirServerError, RevisionError, StateError
from .fhir.client import FhirConnection
from .graph import RevisionGraph
from .loader import MigrationLoader
from .recorder import AppliedMigration, LockInfo, MigrationState, StateRecorder
from .script import MigrationScript


@dataclass
class ScriptStatus:
    script: MigrationScript
    applied: bool = False
    record: AppliedMigration | None = None
    is_head: bool = False
    drifted: bool = False
    out_of_order: bool = False


@dataclass
class ProjectStatus:
    base_url: str
    state_id: str
    scripts: list[ScriptStatus] = field(default_factory=list)
    head: str | None = None
    state: MigrationState | None = None
    problems: list[str] = field(default_factory=list)
    server_error: str | None = None
    graph_valid: bool = True
    audit_events: list[AuditRecord] = field(default_factory=list)
    audit_error: str | None = None

    @property
    def pending(self) -> list[ScriptStatus]:
        return [s for s in self.scripts if not s.applied]

    @property
    def lock(self) -> LockInfo | None:
        return self.state.lock if self.state is not None else None

    @property
    def lock_expired(self) -> bool:
        return self.state is not None and self.state.lock is not None and self.state.lock_expired()

    @property
    def state_location(self) -> str:
        return self.state.describe_location() if self.state is not None else ""

    @property
    def applied(self) -> list[ScriptStatus]:
        return [s for s in self.scripts if s.applied]

    @property
    def head_script(self) -> MigrationScript | None:
        """The script the recorded head names (None when nothing is applied or it is unknown)."""
        return next((s.script for s in self.scripts if s.is_head), None)


def build_status(loader: MigrationLoader, connection: FhirConnection | None, base_url: str,
                 state_id: str, *, audit_events: int = 0) -> ProjectStatus:
    """The status; with `audit_events` > 0 also that many of the newest AuditEvents."""
    status = ProjectStatus(base_url=base_url, state_id=state_id)
    _fill(status, loader, connection)
    if audit_events and connection is not None and status.state is not None and not status.server_error:
        try:
            status.audit_events = recent_events(connection, status.state, audit_events)
        except FhirMigrationError as exc:
            status.audit_error = str(exc)
    return status


def _fill(status: ProjectStatus, loader: MigrationLoader, connection: FhirConnection | None) -> None:
    state_id = status.state_id
    try:
        graph: RevisionGraph | None = loader.graph
    except FhirMigrationError as exc:  # a script that cannot be imported
        status.problems.append(str(exc))
        status.graph_valid = False
        return
    status.problems.extend(str(p) for p in graph.problems)
    status.graph_valid = not graph.problems
    ordered = graph.ordered if status.graph_valid else sorted(
        (n.script for n in graph.nodes.values()), key=lambda s: (s.label, s.name)
    )
    status.scripts = [ScriptStatus(script=s) for s in ordered]
    if connection is None:
        return
    try:
        state = StateRecorder(connection, state_id).read()
    except FhirServerError as exc:
        status.server_error = str(exc)
        return
    except StateError as exc:
        status.problems.append(str(exc))
        return
    status.state = state
    status.head = state.head
    try:
        applied = state.applied_revisions(graph)
    except StateError as exc:
        status.problems.append(str(exc))
        return
    if state.adopted_from_head(graph):
        status.problems.append(
            f"The state records only its head ({state.head}), as the seed tool wrote it; the head "
            "and its ancestors are taken as applied. The next migrate records them in full."
        )
    from .executor import drifted_scripts

    drifted = {s.revision for s in drifted_scripts(graph, state, applied)}
    try:
        late = {s.revision for s in graph.out_of_order(applied)} if status.graph_valid else set()
    except RevisionError:
        late = set()
    for row in status.scripts:
        revision = row.script.revision
        row.applied = revision in applied
        row.record = state.applied_record(revision)
        row.is_head = revision == state.head
        row.drifted = revision in drifted
        row.out_of_order = revision in late
    for row in status.scripts:
        if row.drifted:
            status.problems.append(
                f"{row.script.path} ({row.script.revision}) was edited after it was applied "
                "(checksum differs)."
            )
        if row.out_of_order:
            status.problems.append(
                f"{row.script.path} ({row.script.revision}) is not applied but sits below applied "
                "migrations; fhirmigrate will apply it out of order."
            )
