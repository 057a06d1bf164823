"""`manage.py fhirreset`: the verb reset of commands.VERBS."""

from ..base import verb_command

Command = verb_command("reset")
