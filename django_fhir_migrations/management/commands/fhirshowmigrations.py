from __future__ import annotations

from typing import Any

from ...engine import Project
from ...engine.status import ProjectStatus
from ..base import FhirCommand


class Command(FhirCommand):
    help = "List every FHIR data migration in order: applied [X] or not [ ], when and by whom."
    command_name = "fhirshowmigrations"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--offline", action="store_true",
                            help="Do not contact the server; list the scripts only.")

    def run(self, project: Project, **options: Any) -> int:
        status = project.status(offline=options["offline"])
        self.render(status, options["verbosity"], offline=options["offline"])
        broken = not status.graph_valid or status.server_error or (
            status.state is None and not options["offline"])
        return 1 if broken else 0

    def render(self, status: ProjectStatus, verbosity: int, *, offline: bool) -> None:
        out, style = self.stdout, self.style
        where = f" ({status.state_location})" if status.state and status.state.exists else ""
        out.write(style.MIGRATE_HEADING(
            f"FHIR migrations for state {status.state_id!r} on {status.base_url or '(no server)'}{where}"
        ))
        if not status.scripts:
            out.write("  (no migration scripts found)")
        for row in status.scripts:
            script = row.script
            mark = "[X]" if row.applied else "[ ]"
            line = f" {mark} {script.label}/{script.name}  {script.short}"
            if row.record and row.record.applied_at:
                line += f"  applied {row.record.applied_at}"
                if row.record.applied_by:
                    line += f" by {row.record.applied_by}"
            if row.record and row.record.fake:
                line += "  (faked)"
            if verbosity >= 2 and row.record and row.record.duration_ms is not None:
                line += f"  in {row.record.duration_ms / 1000:.2f}s"
            if row.is_head:
                line += "  (head)"
            if row.drifted:
                line += "  (edited since applied)"
            if row.out_of_order:
                line += "  (out of order)"
            out.write(line)
        if status.lock is not None:
            expired = " (lease expired)" if status.lock_expired else ""
            out.write(style.WARNING(f"Lock: held by {status.lock.describe()}{expired}"))
        if status.server_error:
            out.write(style.ERROR(f"Server: {status.server_error}"))
        elif not offline and status.state is not None:
            pending = len(status.pending)
            out.write(f"{pending} unapplied migration(s)." if pending else "All migrations are applied.")
        if status.problems:
            out.write(style.ERROR("Problems:"))
            for problem in status.problems:
                out.write(style.ERROR(f"  - {problem}"))
