"""The showmigrations and history reports as lines, so every front door prints the same thing.

`format_status` and `format_history` turn engine data into `(kind, line)` pairs; the kind
("heading", "info", "warning", "error") is what a console styles. No Django imports.

Marks: `[X]` applied, `[ ]` not applied, `[?]` unknown (offline, or the server could not be
read: "[ ]" would read "unapplied"), `[!]` a file that could not be loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .engine.audit import AuditRecord, HistoryReport
from .engine.lock import lease_condition
from .engine.status import ProjectStatus, ScriptStatus

if TYPE_CHECKING:
    from .console import Vocabulary

Line = tuple[str, str]


def format_row(row: ScriptStatus, verbosity: int = 1, *, known: bool = True) -> str:
    """One script: ` [X] label/name  short  applied <when> by <who>  (head)`."""
    script = row.script
    mark = ("[X]" if row.applied else "[ ]") if known else "[?]"
    line = f" {mark} {script.label}/{script.name}  {script.short}"
    record = row.record if known else None
    if record and record.applied_at:
        line += f"  applied {record.applied_at}"
        if record.applied_by:
            line += f" by {record.applied_by}"
    if record and record.fake:
        line += "  (faked)"
    if record and record.failures:
        line += f"  (with {record.failures:,} failure{'' if record.failures == 1 else 's'})"
    if verbosity >= 2 and record and record.duration_ms is not None:
        line += f"  in {record.duration_ms / 1000:.2f}s"
    if row.is_head and known:
        line += "  (head)"
    if row.branch_head:
        line += "  (branch head)"
    if row.drifted:
        line += "  (edited since applied)"
    if row.out_of_order:
        line += "  (out of order)"
    if row.progress:
        line += f"  ({row.progress})"
    return line


def format_status(status: ProjectStatus, verbosity: int = 1, *,
                  vocabulary: Vocabulary | None = None) -> list[Line]:
    where = f" ({status.state_location})" if status.state and status.state.exists else ""
    lines: list[Line] = [(
        "heading",
        f"FHIR migrations for state {status.state_id!r} on {status.base_url or '(no server)'}{where}",
    )]
    if not status.scripts and not status.broken:
        lines.append(("info", "  (no migration scripts found)"))
    known = status.known
    lines.extend(("info", format_row(row, verbosity, known=known)) for row in status.scripts)
    lines.extend(("error", f" [!] {exc.display_name}  (cannot be loaded: see Problems)")
                 for exc in status.broken)
    if status.heads:
        merge = vocabulary.command("makemigration") if vocabulary else "makemigration"
        names = ", ".join(f"{s.label}/{s.name} ({s.short})" for s in status.heads)
        lines.append(("warning", f"Branches: {len(status.heads)} heads ({names}); join them with "
                                 f"`{merge} --merge`."))
    if status.lock is not None and status.state is not None:
        lines.append(("warning", f"Lock: held by {status.lock.describe()}: {lease_condition(status.state)}"))
    if status.offline:
        lines.append(("info", "Offline: the server was not asked, so what is applied is unknown ([?])."))
    elif status.server_error:
        lines.append(("error", f"Server: {status.server_error}"))
        lines.append(("info", "What is applied is unknown ([?])."))
    elif known:
        lines.append(_summary_line(status))
    if status.problems:
        lines.append(("error", "Problems:"))
        lines.extend(("error", f"  - {problem}") for problem in status.problems)
    return lines


def _summary_line(status: ProjectStatus) -> Line:
    """How many are unapplied; never "all applied" while a script cannot be loaded (whether it
    is applied is then unknown, and every fhir* command refuses until it is fixed)."""
    pending = len(status.pending)
    broken = len(status.broken)
    if not broken:
        return ("info", f"{pending} unapplied migration(s)." if pending else "All migrations are applied.")
    loadable = f"{pending} unapplied migration(s)" if pending else "All loadable migrations are applied"
    return ("error", f"{loadable}; {broken} script(s) cannot be loaded (see Problems), so "
                     "nothing can be migrated until they are fixed.")


def status_exit_code(status: ProjectStatus) -> int:
    """1 when the report shows something broken (scripts, graph, server, unreadable state)."""
    broken = not status.graph_valid or status.server_error or (not status.offline and not status.known)
    return 1 if broken else 0


UNFINISHED = ("interrupted", "running")  # an attempt the state records, not an AuditEvent


def format_history(report: HistoryReport, state_id: str, verbosity: int = 1, *,
                   vocabulary: Vocabulary | None = None) -> list[Line]:
    """`fhirhistory`: newest first, one line per AuditEvent of this state, and one per
    migration whose attempt is unfinished (a killed run writes no AuditEvent). On a server that
    keeps no AuditEvents, what the state records as applied instead, saying why."""
    migrate = vocabulary.command("migrate") if vocabulary else "migrate"
    records: Sequence[AuditRecord] = report.records
    lines: list[Line] = [("heading", f"History of migration state {state_id!r} (newest first):")]
    if report.reason:
        lines.append(("warning", f"  {report.reason}"))
    if report.from_state and records:
        lines.append(("info", "  What the state itself records (applied migrations, unfinished attempts):"))
    if not records:
        lines.append(("info", "  (nothing recorded yet)"))
    for record in records:
        when = record.recorded.strftime("%Y-%m-%d %H:%M:%S") if record.recorded else "?"
        what = record.script or ("" if report.from_state else record.detail) or ""
        if record.revision:
            what = f"{what} ({record.revision[:12]})" if what else record.revision[:12]
        took = f"  {record.duration:.2f}s" if record.duration is not None else ""
        unfinished = record.event in UNFINISHED
        outcome = "ok" if record.success else "unfinished" if unfinished else "FAILED"
        line = f"  {when}  {record.event:<12} {what}  by {record.who or '?'}{took}  {outcome}"
        lines.append(("info" if record.success else "warning" if unfinished else "error", line))
        if unfinished:
            resume = "" if record.event == "running" else f"; `{migrate}` resumes it"
            lines.append(("warning", f"      {record.detail}{resume}"))
        elif report.from_state and record.detail:  # "in 2 attempts"
            lines.append(("info", f"      {record.detail}"))
        if not record.success and record.error and verbosity >= 1:
            lines.append(("error", f"      {record.error[:300]}"))
    return lines
