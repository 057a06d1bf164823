from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ... import commands
from ...arguments import MAKEMIGRATION
from ...conf import app_script_folder
from ...console import Console
from ...engine import Project
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("Create a new FHIR data migration script (numbered, e.g. 0003_add_mrn.py) whose "
            "down_revision is the current head.")
    verb = "makemigration"
    arguments = MAKEMIGRATION

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--app", default=None,
                            help="Put the script in this app's fhir_migrations/ folder.")

    def run(self, project: Project, console: Console, options: dict[str, Any]) -> int:
        location = None
        if options["app"]:
            try:
                location = app_script_folder(options["app"])
            except LookupError:
                raise CommandError(f"No installed app with label {options['app']!r}.") from None
            except ValueError as exc:
                raise CommandError(f"Cannot put a migration script in {exc}") from None
        return commands.makemigration(project, console, options, location=location)
