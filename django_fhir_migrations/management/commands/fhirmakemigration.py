"""`manage.py fhirmakemigration`: the verb makemigration of commands.VERBS."""

from ..base import verb_command

Command = verb_command("makemigration")
