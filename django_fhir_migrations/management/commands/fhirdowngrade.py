from __future__ import annotations

from typing import Any

from ...engine import Project
from ..base import FhirCommand, add_lock_timeout, add_noinput


class Command(FhirCommand):
    help = ("Revert FHIR data migrations: the most recent one by default, --steps N, down to "
            "TARGET (kept applied), or 'zero' for all.")
    command_name = "fhirdowngrade"

    def add_arguments(self, parser) -> None:
        parser.add_argument("target", nargs="?", default=None,
                            help="Revision, prefix or name to keep as the new head, or 'zero'.")
        parser.add_argument("--steps", type=int, default=None, help="Revert this many migrations.")
        parser.add_argument("--plan", action="store_true", help="Print the plan; change nothing.")
        parser.add_argument("--fake", action="store_true",
                            help="Record the migrations as reverted without running them.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Run the downgrades with writes printed instead of sent.")
        add_lock_timeout(parser)
        add_noinput(parser)

    def run(self, project: Project, **options: Any) -> int:
        outcome = project.downgrade(
            options["target"], steps=options["steps"], plan_only=options["plan"],
            fake=options["fake"], dry_run=options["dry_run"], lock_timeout=options["lock_timeout"],
        )
        return outcome.exit_code
