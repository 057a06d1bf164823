"""Testing a project's own FHIR migrations, step by step (as django-test-migrations does for
Django's): apply up to a named migration on a throw-away state against a test server, assert on
what the server holds, apply the next, revert.

    from django_fhir_migrations.testing import MigrationTester

    def test_mrn_is_added_and_removed():
        with MigrationTester() as fhir:                   # FHIR_MIGRATIONS, a fresh STATE_ID
            fhir.migrate("0002_create_patient")           # up to and including it
            [patient] = fhir.search("Patient", identifier="urn:example|demo")
            fhir.migrate("0003_add_mrn")                  # the next one
            assert any(i["system"] == MRN for i in fhir.read(patient)["identifier"])
            fhir.downgrade("0002_create_patient")         # back: runs 0003's downgrade
        # on exit: everything reverted (downgrade zero) and the throw-away state deleted

Each tester uses its own state id (`test-<random>`), so it never touches the project's real
state; the data its migrations write is the test server's, so point FHIR_BASE_URL (or
BASE_URL) at a server meant for tests. Outside Django, pass engine `Settings`.
"""

from __future__ import annotations

import uuid
from typing import Any

from .engine import Project
from .engine.config import Settings
from .engine.events import Event
from .engine.executor import Outcome
from .engine.fhir.client import resource_path
from .engine.fhir.paging import search_entries
from .engine.recorder import StateRecorder
from .engine.status import ProjectStatus


class MigrationTester:
    """A project's migrations on a throw-away state (see the module docstring)."""

    def __init__(self, settings: Settings | None = None, *, state_id: str | None = None,
                 cleanup: bool = True, **overrides: Any):
        if settings is None:
            from .conf import get_settings  # Django's settings: only when none are given

            settings = get_settings()
        self.state_id = state_id or f"test-{uuid.uuid4().hex[:12]}"
        self.settings = settings.with_overrides(state_id=self.state_id, **overrides)
        self.events: list[Event] = []  # what the engine reported, for assertions
        self.cleanup_on_exit = cleanup
        self.project = Project(self.settings, listeners=[self.events.append], command="MigrationTester",
                               source="django_fhir_migrations.testing")

    # --- moving through the history ------------------------------------------------------

    def migrate(self, target: str = "head", **options: Any) -> list[str]:
        """Apply up to `target` (a name, a revision, +N, or 'head'); the names applied."""
        return _names(self.project.migrate(target, lock_timeout=options.pop("lock_timeout", 30), **options))

    def downgrade(self, target: str | None = None, **options: Any) -> list[str]:
        """Revert to `target` (kept applied), 'zero', -N, or one step; the names reverted."""
        return _names(self.project.downgrade(target, lock_timeout=options.pop("lock_timeout", 30), **options))

    def applied(self) -> list[str]:
        """The applied migrations' names, in graph order."""
        return [row.script.name for row in self.status().scripts if row.applied]

    def status(self) -> ProjectStatus:
        return self.project.status()

    # --- looking at the data ----------------------------------------------------------------

    def search(self, resource_type: str, **params: Any) -> list[dict[str, Any]]:
        """Every match, as dicts (all pages)."""
        return [e["resource"] for e in search_entries(self.project.connection, resource_path(resource_type),
                                                      params, read_ahead=False)
                if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e]

    def read(self, resource: dict[str, Any] | str, resource_id: str | None = None) -> dict[str, Any]:
        """The current version of a resource (given as a dict, or a type and an id)."""
        if isinstance(resource, dict):
            return self.read(str(resource["resourceType"]), str(resource["id"]))
        return self.project.connection.get(resource_path(resource, resource_id)).body or {}

    # --- clean-up ----------------------------------------------------------------------------

    def close(self) -> None:
        """Revert everything applied (each migration's downgrade) and delete the state."""
        try:
            if self.cleanup_on_exit and self.applied():
                self.downgrade("zero")
        finally:
            try:
                state = StateRecorder(self.project.connection, self.state_id).read()
                for record_id in state.records.values():
                    self.project.connection.request("DELETE", f"Basic/{record_id}")
                if state.exists and self.cleanup_on_exit:
                    self.project.connection.request("DELETE", f"Basic/{state.resource_id}")
            finally:
                self.project.close()

    def __enter__(self) -> MigrationTester:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _names(outcome: Outcome) -> list[str]:
    return [script.name for script in outcome.done]


__all__ = ["MigrationTester"]
