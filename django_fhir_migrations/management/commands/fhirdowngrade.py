"""`manage.py fhirdowngrade`: the verb downgrade of commands.VERBS."""

from ..base import verb_command

Command = verb_command("downgrade")
