from ...arguments import RESET
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("Forget the migration state (head := None). Runs no migration and changes no data; "
            "asks for confirmation.")
    verb = "reset"
    arguments = RESET
