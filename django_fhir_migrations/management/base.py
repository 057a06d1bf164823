"""The fhir* management commands, built from the verb table (commands.VERBS).

Commands are shells (as Django's own `migrate`): each module in commands/ is one line naming its
verb, and `FhirCommand` takes the help and the arguments from the verb and runs it through
`commands.run_verb`, with a Console speaking Django's command names and the signals
(signals.py) listening. An engine error becomes a CommandError: Django prints its one-paragraph
message and exits non-zero, and shows the traceback only with --traceback (scrubbed of
credentials, as every other text).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from .. import commands
from ..arguments import APP_FOLDER, add_arguments
from ..conf import app_script_folder, get_settings
from ..console import DJANGO, Console, configure_logging
from ..engine import FhirMigrationError
from ..engine.config import ScriptLocation, Settings
from ..engine.redaction import scrub, scrubbed_traceback
from ..signals import SignalSender


class FhirCommand(BaseCommand):
    # Our own checks would stop a command with a less specific message; commands validate
    # what they need themselves and explain it.
    requires_system_checks: list[str] = []
    verb: commands.Verb

    @property
    def command_name(self) -> str:
        return DJANGO.command(self.verb.name)

    def add_arguments(self, parser) -> None:
        add_arguments(parser, (*self.verb.arguments, APP_FOLDER) if self.verb.folder
                      else self.verb.arguments)

    def execute(self, *args: Any, **options: Any) -> Any:
        configure_logging(options.get("verbosity", 1))
        return super().execute(*args, **options)

    def console(self, options: dict[str, Any]) -> Console:
        styles = {"heading": self.style.MIGRATE_HEADING, "success": self.style.SUCCESS,
                  "warning": self.style.WARNING, "error": self.style.ERROR}

        def styler(kind: str, text: str) -> str:
            style = styles.get(kind)
            return style(text) if style else text

        return Console(DJANGO, out=lambda text: self.stdout.write(text),
                       err=lambda text: self.stderr.write(text, style_func=lambda x: x),
                       verbosity=options.get("verbosity", 1), styler=styler,
                       interactive=options.get("interactive", True), stream=self.stdout._out)

    def handle(self, *args: Any, **options: Any) -> None:
        exit_code = commands.run_verb(
            self.verb, options, self.console(options),
            settings=lambda: (get_settings(), {}), command=f"manage.py {self.command_name}",
            source=self.source(), stdout=self.stdout._out,
            listeners=lambda settings: [SignalSender(settings)], locate=app_folder,
            on_error=command_error,
        )
        if exit_code:
            sys.exit(exit_code)

    @staticmethod
    def source() -> str:
        from django.conf import settings

        return getattr(settings, "ROOT_URLCONF", "").split(".")[0] or "django project"

    def run_from_argv(self, argv: list[str]) -> None:
        """As Django's, but a traceback (--traceback, or a bug) is printed scrubbed of credentials:
        a script's exception may carry a token in its text."""
        try:
            super().run_from_argv(argv)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - printed, then the same exit status
            self.stderr.write(scrubbed_traceback(exc).rstrip("\n"))
            sys.exit(getattr(exc, "returncode", 1))


def command_error(error: FhirMigrationError, text: str) -> int:
    """Django prints a CommandError as one paragraph and exits with its returncode."""
    raise CommandError(text, returncode=error.exit_code) from error


def app_folder(settings: Settings, options: commands.Options) -> ScriptLocation | None:
    """--app: that app's fhir_migrations/ folder (None: the engine chooses)."""
    label = options.get("app")
    if not label:
        return None
    try:
        return app_script_folder(label)
    except LookupError:
        raise commands.UsageError(f"No installed app with label {label!r}.") from None
    except ValueError as exc:
        raise commands.UsageError(f"Cannot put a migration script in {exc}") from None


def verb_command(name: str) -> type[FhirCommand]:
    """The management command class of verb `name` (commands.VERBS' key)."""
    verb = commands.VERBS[name]
    return type("Command", (FhirCommand,), {"verb": verb, "help": verb.help,
                                            "__module__": f"{__package__}.commands.{DJANGO.command(name)}"})


__all__ = ["CommandError", "FhirCommand", "scrub", "verb_command"]
