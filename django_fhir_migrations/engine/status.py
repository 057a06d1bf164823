"""What exists, what is applied, when and by whom: the data behind showmigrations, the admin
page and the system checks.

Building a status never raises for script, graph or server problems: they become `problems`
(and `server_error`), because the status page is exactly where a user goes to see them. A
broken script does not hide the others: they are listed, and it is listed as broken. The same
holds for the recent AuditEvents the admin page shows: a server that refuses to list them
gives `audit_error`, not an exception; one that keeps none gives the state's own record and
`audit_note` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .applied import History
from .audit import AuditRecord, attempt_record, newest_first, read_history
from .errors import (
    DanglingRevisionError,
    FhirMigrationError,
    FhirServerError,
    RevisionError,
    ScriptError,
    StateError,
)
from .fhir.client import FhirConnection
from .graph import RevisionGraph
from .loader import MigrationLoader
from .recorder import StateRecorder
from .script import MigrationScript
from .state import AppliedMigration, LockInfo, MigrationState


@dataclass
class ScriptStatus:
    """One script's row. `applied` is meaningful only when the status `known`s the state."""

    script: MigrationScript
    applied: bool = False
    record: AppliedMigration | None = None
    is_head: bool = False
    drifted: bool = False
    out_of_order: bool = False
    branch_head: bool = False  # a head of the graph while there are several (merge needed)
    progress: str = ""  # an interrupted attempt's progress: "partially applied: 3,200 resource(s) ..."


@dataclass
class ProjectStatus:
    """The whole picture for one state: scripts in graph order, what the server records, the
    lock, and every problem found on the way."""

    base_url: str
    state_id: str
    scripts: list[ScriptStatus] = field(default_factory=list)
    broken: list[ScriptError] = field(default_factory=list)
    graph_problems: list[RevisionError] = field(default_factory=list)
    state_problem: StateError | None = None
    head: str | None = None
    state: MigrationState | None = None
    problems: list[str] = field(default_factory=list)
    server_error: str | None = None
    graph_valid: bool = True
    offline: bool = False
    heads: list[MigrationScript] = field(default_factory=list)
    audit_events: list[AuditRecord] = field(default_factory=list)
    audit_error: str | None = None
    audit_from_state: bool = False  # the server keeps no AuditEvents: these are the state's record
    audit_note: str = ""  # why the AuditEvents are not the source
    history: History | None = None

    @property
    def known(self) -> bool:
        """Whether what is applied is known (the state was read and makes sense)."""
        return self.state is not None and self.history is not None and not self.server_error

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

    @property
    def drifted(self) -> list[MigrationScript]:
        return [s.script for s in self.scripts if s.drifted]


def build_status(loader: MigrationLoader, connection: FhirConnection | None, base_url: str,
                 state_id: str, *, audit_events: int = 0, validate: bool = True,
                 audit_enabled: bool = True) -> ProjectStatus:
    """The status (offline when `connection` is None); with `audit_events` > 0 also that many
    of the newest AuditEvents. `validate` imports every script to find every broken one (an
    error inside a function, at import time); without it only what reading the files shows,
    which is much faster for a long history (`showmigrations --offline`)."""
    status = ProjectStatus(base_url=base_url, state_id=state_id, offline=connection is None)
    graph = _fill_scripts(status, loader, validate)
    if connection is not None:
        _fill_state(status, graph, connection)
    if audit_events and connection is not None and status.state is not None and not status.server_error:
        try:
            report = read_history(connection, status.state, audit_events, audit_enabled=audit_enabled,
                                  scripts={node.revision: node.script for node in graph.nodes.values()})
        except FhirMigrationError as exc:
            status.audit_error = str(exc)
        else:
            records = report.records
            if report.from_state:  # no AuditEvents: the state's unfinished attempts belong there too
                running = status.lock is not None and not status.lock_expired
                records = newest_first(records + [
                    attempt_record(a, graph.script(a.revision) if a.revision in graph else None,
                                   running=running, who=status.lock.describe() if status.lock else "")
                    for a in status.state.attempts])[:audit_events]
            status.audit_events = records
            status.audit_from_state = report.from_state and bool(records)
            status.audit_note = report.reason
    return status


def _fill_scripts(status: ProjectStatus, loader: MigrationLoader, validate: bool) -> RevisionGraph:
    status.broken = loader.validate() if validate else list(loader.broken)
    broken_paths = {exc.path for exc in status.broken}
    status.problems.extend(str(exc) for exc in status.broken)
    graph = loader.graph
    for problem in graph.problems:
        # A script that failed to load makes its children look dangling: say the real problem.
        if status.broken and isinstance(problem, DanglingRevisionError):
            continue
        status.graph_problems.append(problem)
        status.problems.append(str(problem))
    status.graph_valid = not graph.problems and not status.broken
    ordered = list(graph.ordered)
    if len(ordered) < len(graph):  # a cycle: its scripts are not in the topological order
        listed = {s.revision for s in ordered}
        ordered += sorted((n.script for n in graph.nodes.values() if n.revision not in listed),
                          key=lambda s: (s.label, s.name))
    heads = [n.script for n in graph.heads] if len(graph) else []
    status.heads = heads if len(heads) > 1 else []
    branch_heads = {s.revision for s in status.heads}
    status.scripts = [ScriptStatus(script=s, branch_head=s.revision in branch_heads) for s in ordered
                      if s.path not in broken_paths]
    return graph


def _fill_state(status: ProjectStatus, graph: RevisionGraph, connection: FhirConnection) -> None:
    try:
        state = StateRecorder(connection, status.state_id).read()
    except FhirServerError as exc:
        status.server_error = str(exc)
        return
    except StateError as exc:
        status.state_problem = exc
        status.problems.append(str(exc))
        return
    status.state = state
    status.head = state.head
    history = History(state, graph)
    try:
        applied = history.applied
    except StateError as exc:
        status.state_problem = exc
        status.problems.append(str(exc))
        return
    status.history = history
    if history.adopted_from_head:
        status.problems.append(
            f"The state records only its head ({state.head}), as the seed tool wrote it; the head "
            "and its ancestors are taken as applied. The next migrate records them in full."
        )
    drifted = {s.revision for s in history.drifted()}
    late = {s.revision for s in history.out_of_order()}
    for row in status.scripts:
        revision = row.script.revision
        row.applied = revision in applied
        row.record = state.applied_record(revision)
        row.is_head = revision == state.head
        row.drifted = revision in drifted
        row.out_of_order = revision in late
        attempt = state.attempt_for(revision)
        row.progress = attempt.describe() if attempt is not None else ""
    for row in status.scripts:
        if row.drifted:
            status.problems.append(
                f"{row.script.path} ({row.script.revision}) was edited after it was applied "
                "(checksum differs)."
            )
        if row.out_of_order:
            status.problems.append(
                f"{row.script.path} ({row.script.revision}) is not applied but sits below applied "
                "migrations; the next migrate will apply it out of order."
            )
