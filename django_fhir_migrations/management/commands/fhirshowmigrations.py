"""`manage.py fhirshowmigrations`: the verb showmigrations of commands.VERBS."""

from ..base import verb_command

Command = verb_command("showmigrations")
