"""`manage.py fhirhistory`: the verb history of commands.VERBS."""

from ..base import verb_command

Command = verb_command("history")
