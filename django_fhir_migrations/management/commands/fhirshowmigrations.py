from ...arguments import SHOWMIGRATIONS
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("List every FHIR data migration in graph order: applied [X], not [ ], unknown [?], "
            "when and by whom, the branches and any problem.")
    verb = "showmigrations"
    arguments = SHOWMIGRATIONS
