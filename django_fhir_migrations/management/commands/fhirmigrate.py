from __future__ import annotations

from typing import Any

from ...engine import Project
from ..base import FhirCommand, add_lock_timeout, add_noinput


class Command(FhirCommand):
    help = "Apply every unapplied FHIR data migration, in order (or up to TARGET)."
    command_name = "fhirmigrate"

    def add_arguments(self, parser) -> None:
        parser.add_argument("target", nargs="?", default=None,
                            help="Revision (or unique prefix), migration name, or 'head'.")
        parser.add_argument("--plan", action="store_true", help="Print the plan; change nothing.")
        parser.add_argument("--fake", action="store_true",
                            help="Record the migrations as applied without running them.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Run the migrations with every write printed instead of sent; "
                                 "record nothing.")
        parser.add_argument("--check", action="store_true",
                            help="Exit with status 1 if any migration is unapplied (deploy gate).")
        parser.add_argument("--ignore-checksums", action="store_true",
                            help="Proceed even if applied scripts were edited since they ran.")
        parser.add_argument("--break-lock", action="store_true",
                            help="Remove another process's migration lock (asks first), then stop.")
        add_lock_timeout(parser)
        add_noinput(parser)

    def run(self, project: Project, **options: Any) -> int:
        if options["break_lock"]:
            return project.break_lock(self.confirm(options)).exit_code
        outcome = project.migrate(
            options["target"], plan_only=options["plan"], fake=options["fake"],
            dry_run=options["dry_run"], check=options["check"],
            lock_timeout=options["lock_timeout"], ignore_checksums=options["ignore_checksums"],
        )
        return outcome.exit_code
