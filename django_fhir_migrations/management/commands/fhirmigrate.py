"""`manage.py fhirmigrate`: the verb migrate of commands.VERBS."""

from ..base import verb_command

Command = verb_command("migrate")
