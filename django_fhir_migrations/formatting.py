"""The showmigrations report as lines, so every front door prints the same thing.

`format_status` turns a ProjectStatus into `(kind, line)` pairs; the kind ("heading", "info",
"warning", "error") is what a front end styles with (Django's `self.style`, click colours, ANSI
on a terminal, or nothing). No Django imports: the CLI and the Flask blueprint use it too.
"""

from __future__ import annotations

from .engine.status import ProjectStatus, ScriptStatus

Line = tuple[str, str]


def format_row(row: ScriptStatus, verbosity: int = 1) -> str:
    """One script: ` [X] label/name  short  applied <when> by <who>  (head)`."""
    script = row.script
    mark = "[X]" if row.applied else "[ ]"
    line = f" {mark} {script.label}/{script.name}  {script.short}"
    record = row.record
    if record and record.applied_at:
        line += f"  applied {record.applied_at}"
        if record.applied_by:
            line += f" by {record.applied_by}"
    if record and record.fake:
        line += "  (faked)"
    if verbosity >= 2 and record and record.duration_ms is not None:
        line += f"  in {record.duration_ms / 1000:.2f}s"
    if row.is_head:
        line += "  (head)"
    if row.drifted:
        line += "  (edited since applied)"
    if row.out_of_order:
        line += "  (out of order)"
    return line


def format_status(status: ProjectStatus, verbosity: int = 1, *, offline: bool = False) -> list[Line]:
    where = f" ({status.state_location})" if status.state and status.state.exists else ""
    lines: list[Line] = [(
        "heading",
        f"FHIR migrations for state {status.state_id!r} on {status.base_url or '(no server)'}{where}",
    )]
    if not status.scripts:
        lines.append(("info", "  (no migration scripts found)"))
    lines.extend(("info", format_row(row, verbosity)) for row in status.scripts)
    if status.lock is not None:
        expired = " (lease expired)" if status.lock_expired else ""
        lines.append(("warning", f"Lock: held by {status.lock.describe()}{expired}"))
    if status.server_error:
        lines.append(("error", f"Server: {status.server_error}"))
    elif not offline and status.state is not None:
        pending = len(status.pending)
        lines.append(("info", f"{pending} unapplied migration(s)." if pending
                      else "All migrations are applied."))
    if status.problems:
        lines.append(("error", "Problems:"))
        lines.extend(("error", f"  - {problem}") for problem in status.problems)
    return lines


def status_exit_code(status: ProjectStatus, *, offline: bool = False) -> int:
    """1 when the report shows something broken (graph, server, unreadable state), else 0."""
    broken = not status.graph_valid or status.server_error or (status.state is None and not offline)
    return 1 if broken else 0
