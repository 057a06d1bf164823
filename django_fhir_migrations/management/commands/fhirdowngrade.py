from ...arguments import DOWNGRADE
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("Revert FHIR data migrations: the most recent one by default, --steps N, down to "
            "TARGET (kept applied), a relative -N, or 'zero' for all.")
    verb = "downgrade"
    arguments = DOWNGRADE
