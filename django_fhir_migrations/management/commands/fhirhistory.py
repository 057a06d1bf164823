from ...arguments import HISTORY
from ..base import FhirCommand


class Command(FhirCommand):
    help = ("What happened to this migration state, newest first, from the server's AuditEvents: "
            "applied, reverted, faked, failed, reset; when, by whom, how long, the outcome.")
    verb = "history"
    arguments = HISTORY
