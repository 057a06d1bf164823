"""The seed tool's Python API, kept so its users can switch without rewriting their code.

    Migration(migrations_dir=...).run_migrations(direction="upgrade" | "downgrade")
    Migration(...).generate_migration_script(migration_name="add_mrn")

No Django needed: configuration comes from keyword arguments and the environment
(FHIR_BASE_URL, MIGRATION_SCRIPTS_DIR, MIGRATION_RESOURCE_ID, FHIR_MIGRATIONS_*). An explicit
`migrations_dir` wins over MIGRATION_SCRIPTS_DIR, as the seed tool's constructor argument did;
other environment variables override keyword arguments, as they override Django settings.
Errors are raised as `FhirMigrationError` subclasses, with the same messages the commands print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from .console import PLAIN, Console, plain_console
from .engine import Project, Settings
from .engine.config import SCRIPTS_DIR_ENV
from .engine.errors import ConfigurationError
from .engine.executor import Outcome


class Migration:
    def __init__(self, migrations_dir: str | os.PathLike[str] | None = None, *,
                 base_url: str | None = None, state_id: str | None = None,
                 stdout: IO[str] | None = None, verbosity: int = 1, **settings: Any):
        values = {key.upper(): value for key, value in settings.items()}
        if base_url:
            values["BASE_URL"] = base_url
        if state_id:
            values["STATE_ID"] = state_id
        environ = dict(os.environ)
        if migrations_dir is not None:
            environ[SCRIPTS_DIR_ENV] = str(Path(migrations_dir))
        elif not environ.get(SCRIPTS_DIR_ENV):
            raise ConfigurationError(
                "migrations_dir", f"give Migration(migrations_dir=...) or set {SCRIPTS_DIR_ENV}."
            )
        self.settings = Settings.build(values, environ=environ, source="Migration()")
        self.migrations_dir = str(self.settings.locations[0].path)
        self._console: Console = plain_console(PLAIN, stdout=stdout, verbosity=verbosity,
                                               interactive=False)

    def _project(self) -> Project:
        return Project(self.settings, listeners=[self._console.on_event], command="Migration facade",
                       source="django-fhir-migrations facade", stdout=self._console.stream)

    def run_migrations(self, direction: str = "upgrade", **options: Any) -> Outcome:
        """upgrade: apply every unapplied migration; downgrade: revert the most recent one."""
        project = self._project()
        try:
            if direction == "upgrade":
                return project.migrate(**options)
            if direction == "downgrade":
                return project.downgrade(**options)
        finally:
            project.close()
        raise ConfigurationError("direction", f"must be 'upgrade' or 'downgrade', got {direction!r}.")

    def generate_migration_script(self, migration_name: str, *, check: bool = True,
                                  message: str = "") -> str:
        """Write `<migration_name>.py` after the current head; returns its path."""
        project = self._project()
        try:
            # The seed tool's API wrote `<name>.py`: its users get what they expect.
            return str(project.make_migration(migration_name, check=check, message=message,
                                              numbered=False).path)
        finally:
            project.close()

    def reset(self) -> Outcome:
        project = self._project()
        try:
            return project.reset()
        finally:
            project.close()
