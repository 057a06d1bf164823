from __future__ import annotations

from typing import Any

from ...arguments import RESET, add_arguments
from ...engine import Project
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("Forget the migration state (head := None). Runs no migration and changes no data; "
            "asks for confirmation.")
    command_name = "fhirreset"

    def add_arguments(self, parser) -> None:
        add_arguments(parser, RESET)

    def run(self, project: Project, **options: Any) -> int:
        confirm = self.confirm(options)
        question = (f"This forgets which FHIR migrations are applied on state "
                    f"{project.settings.state_id!r} at {project.settings.base_url}. No data is "
                    "changed, and the next fhirmigrate will run every migration again.")
        if confirm is not None and not confirm(question):
            self.stdout.write("Reset cancelled.")
            return 1
        return project.reset(lock_timeout=options["lock_timeout"]).exit_code
