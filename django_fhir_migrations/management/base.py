"""What every fhir* management command shares: settings, output styling, errors, prompts.

Commands are shells (as Django's own `migrate`): they parse flags, build the engine's Project,
call it, and print. An engine error becomes a CommandError: Django prints its one-paragraph
message and exits non-zero, and shows the traceback only with --traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ..conf import get_settings
from ..engine import FhirMigrationError, Project, Reporter
from ..engine.config import Settings
from ..engine.interrupts import exit_code_for
from ..engine.redaction import scrub, scrubbed_traceback
from ..runner import configure_logging


class StyledReporter(Reporter):
    def __init__(self, command: BaseCommand, verbosity: int):
        super().__init__(command.stdout, verbosity)
        self.command = command
        self.styles = {
            "heading": command.style.MIGRATE_HEADING,
            "success": command.style.SUCCESS,
            "warning": command.style.WARNING,
            "error": command.style.ERROR,
        }

    def style(self, kind: str, text: str) -> str:
        styler = self.styles.get(kind)
        return styler(text) if styler else text

    def _write(self, kind: str, text: str, level: int) -> None:
        if self.verbosity >= level:
            stream = self.command.stderr if kind == "error" else self.command.stdout
            stream.write(self.style(kind, scrub(text)))


class FhirCommand(BaseCommand):
    # Our own checks would stop a command with a less specific message; commands validate
    # what they need themselves and explain it.
    requires_system_checks: list[str] = []
    command_name = "fhir"

    def execute(self, *args: Any, **options: Any) -> Any:
        self._configure_logging(options.get("verbosity", 1))
        return super().execute(*args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = options.get("verbosity", 1)
        try:
            project = Project(self.settings(options), reporter=StyledReporter(self, verbosity),
                              command=f"manage.py {self.command_name}", source=self.source())
        except FhirMigrationError as exc:
            raise CommandError(scrub(str(exc)), returncode=exc.exit_code) from exc
        try:
            exit_code = self.run(project, **options)
        except FhirMigrationError as exc:
            raise CommandError(scrub(str(exc)), returncode=exc.exit_code) from exc
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the run already cleaned up
            self.stderr.write(f"Interrupted ({exc or 'SIGINT'}); the lock was released and "
                              "nothing more was recorded.")
            sys.exit(exit_code_for(exc))
        finally:
            project.close()
        if exit_code:
            sys.exit(exit_code)

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

    def run(self, project: Project, **options: Any) -> int:
        raise NotImplementedError

    def settings(self, options: dict[str, Any]) -> Settings:
        return get_settings()

    @staticmethod
    def source() -> str:
        from django.conf import settings

        return getattr(settings, "ROOT_URLCONF", "") .split(".")[0] or "django project"

    def confirm(self, options: dict[str, Any]):
        """A yes/no prompt, or None (meaning yes) with --noinput."""
        if not options.get("interactive", True):
            return None

        def ask(question: str) -> bool:
            self.stdout.write(question)
            try:
                answer = input("Type 'yes' to continue, or 'no' to cancel: ")
            except EOFError:
                self.stderr.write("No answer (stdin closed); use --noinput to confirm without asking.")
                return False
            return answer.strip().lower() == "yes"

        return ask

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        configure_logging(verbosity)
