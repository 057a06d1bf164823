"""What every fhir* management command shares: settings, the console, errors, exit codes.

Commands are shells (as Django's own `migrate`): each names its verb and its arguments, and
`FhirCommand` builds the engine's Project, listened to by a Console speaking Django's command
names and by the signals (signals.py), calls the verb's body in commands.py, and turns an
engine error into a CommandError: Django prints its one-paragraph message and exits non-zero,
and shows the traceback only with --traceback (scrubbed of credentials, as every other text).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from .. import commands
from ..arguments import Arg, add_arguments
from ..conf import get_settings
from ..console import DJANGO, Console, configure_logging
from ..engine import FhirMigrationError, Project
from ..engine.config import ScriptLocation, Settings
from ..engine.interrupts import exit_code_for, interrupt_text
from ..engine.redaction import scrub, scrubbed_traceback
from ..signals import SignalSender


class FhirCommand(BaseCommand):
    # Our own checks would stop a command with a less specific message; commands validate
    # what they need themselves and explain it.
    requires_system_checks: list[str] = []
    verb = ""  # the key of commands.VERBS this command runs
    arguments: tuple[Arg, ...] = ()

    @property
    def command_name(self) -> str:
        return DJANGO.command(self.verb)

    def add_arguments(self, parser) -> None:
        add_arguments(parser, self.arguments)

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
        console = self.console(options)
        try:
            settings = self.settings(options)
            project = Project(settings, listeners=[console.on_event, SignalSender(settings)],
                              command=f"manage.py {self.command_name}", source=self.source(),
                              stdout=self.stdout._out)
            try:
                exit_code = self.run(project, console, options)
            finally:
                project.close()
        except FhirMigrationError as exc:
            raise CommandError(console.error_text(exc), returncode=exc.exit_code) from exc
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the run already cleaned up
            self.stderr.write(f"Interrupted ({interrupt_text(exc)}); the lock was released and "
                              "nothing more was recorded.")
            sys.exit(exit_code_for(exc))
        if exit_code:
            sys.exit(exit_code)

    def run(self, project: Project, console: Console, options: dict[str, Any]) -> int:
        return commands.VERBS[self.verb](project, console, options)

    def settings(self, options: dict[str, Any]) -> Settings:
        return get_settings()

    def location(self, options: dict[str, Any]) -> ScriptLocation | None:
        return None

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


__all__ = ["CommandError", "FhirCommand", "scrub"]
