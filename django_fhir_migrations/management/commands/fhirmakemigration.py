from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ...arguments import MAKEMIGRATION, add_arguments
from ...conf import app_script_folder
from ...engine import Project
from ..base import FhirCommand


class Command(FhirCommand):
    help = "Create a new FHIR data migration script whose down_revision is the current head."
    command_name = "fhirmakemigration"

    def add_arguments(self, parser) -> None:
        add_arguments(parser, MAKEMIGRATION)
        parser.add_argument("--app", default=None,
                            help="Put the script in this app's fhir_migrations/ folder.")

    def run(self, project: Project, **options: Any) -> int:
        location = None
        if options["app"]:
            try:
                location = app_script_folder(options["app"])
            except LookupError:
                raise CommandError(f"No installed app with label {options['app']!r}.") from None
            except ValueError as exc:
                raise CommandError(f"Cannot put a migration script in {exc}") from None
        name = options["name"]
        if not name:
            if not options["merge"]:
                raise CommandError("Give the migration a name, e.g. fhirmakemigration add_mrn.")
            heads = project.loader.valid_graph(allow_multiple_heads=True).heads
            name = "merge_" + "_".join(node.revision[:8] for node in heads)
        project.make_migration(name, location=location, merge=options["merge"],
                               check=options["check"], message=options["message"])
        return 0
