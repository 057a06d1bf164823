from __future__ import annotations

from typing import Any

from ...arguments import MIGRATE, add_arguments
from ...engine import Project
from ..base import FhirCommand


class Command(FhirCommand):
    help = "Apply every unapplied FHIR data migration, in order (or up to TARGET)."
    command_name = "fhirmigrate"

    def add_arguments(self, parser) -> None:
        add_arguments(parser, MIGRATE)

    def run(self, project: Project, **options: Any) -> int:
        if options["break_lock"]:
            return project.break_lock(self.confirm(options)).exit_code
        outcome = project.migrate(
            options["target"], plan_only=options["plan"], fake=options["fake"],
            dry_run=options["dry_run"], check=options["check"],
            lock_timeout=options["lock_timeout"], ignore_checksums=options["ignore_checksums"],
        )
        return outcome.exit_code
