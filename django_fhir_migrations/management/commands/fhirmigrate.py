from ...arguments import MIGRATE
from ..base import FhirCommand


class Command(FhirCommand):
    help = "Apply every unapplied FHIR data migration, in order (or up to TARGET)."
    verb = "migrate"
    arguments = MIGRATE
