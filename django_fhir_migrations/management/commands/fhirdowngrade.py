from __future__ import annotations

from typing import Any

from ...arguments import DOWNGRADE, add_arguments
from ...engine import Project
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("Revert FHIR data migrations: the most recent one by default, --steps N, down to "
            "TARGET (kept applied), or 'zero' for all.")
    command_name = "fhirdowngrade"

    def add_arguments(self, parser) -> None:
        add_arguments(parser, DOWNGRADE)

    def run(self, project: Project, **options: Any) -> int:
        outcome = project.downgrade(
            options["target"], steps=options["steps"], plan_only=options["plan"],
            fake=options["fake"], dry_run=options["dry_run"], lock_timeout=options["lock_timeout"],
        )
        return outcome.exit_code
