from __future__ import annotations

from typing import Any

from ...arguments import SHOWMIGRATIONS, add_arguments
from ...engine import Project
from ...engine.status import ProjectStatus
from ...formatting import format_status, status_exit_code
from ..base import FhirCommand


class Command(FhirCommand):
    help = "List every FHIR data migration in order: applied [X] or not [ ], when and by whom."
    command_name = "fhirshowmigrations"

    def add_arguments(self, parser) -> None:
        add_arguments(parser, SHOWMIGRATIONS)

    def run(self, project: Project, **options: Any) -> int:
        status = project.status(offline=options["offline"])
        self.render(status, options["verbosity"], offline=options["offline"])
        return status_exit_code(status, offline=options["offline"])

    def render(self, status: ProjectStatus, verbosity: int, *, offline: bool) -> None:
        styles = {"heading": self.style.MIGRATE_HEADING, "warning": self.style.WARNING,
                  "error": self.style.ERROR}
        for kind, line in format_status(status, verbosity, offline=offline):
            styler = styles.get(kind)
            self.stdout.write(styler(line) if styler else line)
