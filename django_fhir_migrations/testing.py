"""Testing a project's own FHIR migrations, step by step (as django-test-migrations does for
Django's): apply up to a named migration on a throw-away state against a test server, assert on
what the server holds, apply the next, revert.

    from django_fhir_migrations.testing import MigrationTester

    def test_mrn_is_added_and_removed():
        with MigrationTester() as fhir:                   # FHIR_MIGRATIONS["TEST"]'s server
            fhir.migrate("0002_create_patient")           # up to and including it
            [patient] = fhir.search("Patient", identifier="urn:example|demo")
            fhir.migrate("0003_add_mrn")                  # the next one
            assert any(i["system"] == MRN for i in fhir.read(patient)["identifier"])
            fhir.downgrade("0002_create_patient")         # back: runs 0003's downgrade
        # on exit: everything reverted (downgrade zero) and the throw-away state deleted

Like `manage.py test`, which never touches the real database but makes a test one, the tester
never runs against the server the project migrates (BASE_URL) unless told to: it uses the
server and state named by `FHIR_MIGRATIONS["TEST"]` (as `DATABASES[...]["TEST"]`):

    FHIR_MIGRATIONS = {
        "BASE_URL": "https://fhir-dev.example.org/fhir",
        "TEST": {"BASE_URL": "http://127.0.0.1:8090/fhir",   # `fhir-migrations testserver start`
                 "STATE_ID": "migration-tests"},              # optional
    }

or the environment variables FHIR_MIGRATIONS_TEST_BASE_URL / FHIR_MIGRATIONS_TEST_STATE_ID (CI).
Without a test server it refuses (TestServerRequiredError), unless given
`MigrationTester(allow_dev_server=True)`. The state is `TEST["STATE_ID"]`, reset when a tester
starts (a run that crashed may have left it, as a test database may be left), or else a fresh
`test-<random>` per tester; either way never the project's own state. Outside Django, pass
engine `Settings` and `test={"BASE_URL": ...}`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from .engine import Project
from .engine.config import Settings
from .engine.errors import ConfigurationError
from .engine.events import Event
from .engine.executor import Outcome
from .engine.fhir.client import resource_path
from .engine.fhir.paging import search_entries
from .engine.recorder import StateRecorder
from .engine.status import ProjectStatus

TEST_KEYS = ("BASE_URL", "STATE_ID")
TEST_ENV = {"FHIR_MIGRATIONS_TEST_BASE_URL": "BASE_URL", "FHIR_MIGRATIONS_TEST_STATE_ID": "STATE_ID"}


class TestServerRequiredError(ConfigurationError):
    """MigrationTester was about to run against the server the project migrates."""

    __test__ = False  # not a pytest test class

    def __init__(self, setting: str, base_url: str | None):
        self.base_url = base_url
        super().__init__(setting, (
            f"no server for tests is named, and MigrationTester does not run a project's migrations "
            f"against the server it migrates ({base_url or 'none configured'}): they would change "
            "its data, as `manage.py test` never touches the real database. Name a throw-away "
            "server in FHIR_MIGRATIONS['TEST'] = {'BASE_URL': ...} or FHIR_MIGRATIONS_TEST_BASE_URL "
            "(`fhir-migrations testserver start` runs one: http://127.0.0.1:8090/fhir), or pass "
            "MigrationTester(allow_dev_server=True) if that server is meant for it."))


def validate_test_config(test: Any, source: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TEST mapping (`BASE_URL`, `STATE_ID`; the FHIR_MIGRATIONS_TEST_* variables win),
    checked as the engine checks the same keys, with errors naming the setting at fault."""
    environ = os.environ if environ is None else environ
    if test is None:
        test = {}
    if not isinstance(test, Mapping):
        raise ConfigurationError(source, "must be a dict such as {'BASE_URL': 'http://127.0.0.1:8090/fhir'}.")
    unknown = sorted(set(test) - set(TEST_KEYS))
    if unknown:
        raise ConfigurationError(f"{source}[{unknown[0]!r}]", f"unknown key. Known keys: {', '.join(TEST_KEYS)}.")
    values = {key: value for key, value in test.items() if value not in (None, "")}
    origin = {key: f"{source}[{key!r}]" for key in TEST_KEYS}
    for variable, key in TEST_ENV.items():
        if environ.get(variable):
            values[key], origin[key] = environ[variable], f"environment variable {variable}"
    checked: dict[str, Any] = {}
    for key, value in values.items():
        try:
            built = Settings.build({key: value}, environ={}, source=source)
        except ConfigurationError as exc:
            raise ConfigurationError(origin[key], exc.problem) from None
        checked[key] = built.base_url if key == "BASE_URL" else built.state_id
    return checked


def tester_settings(settings: Settings, test: Mapping[str, Any], *, allow_dev_server: bool = False,
                    state_id: str | None = None) -> Settings:
    """The settings a tester runs with: the test server (or, when allowed, BASE_URL's) and a
    state that is never the project's own."""
    test_url = test.get("BASE_URL")
    if not test_url and not allow_dev_server:
        raise TestServerRequiredError(f"{settings.source}['TEST']['BASE_URL']", settings.base_url)
    base_url = test_url or settings.base_url
    state = state_id or test.get("STATE_ID") or f"test-{uuid.uuid4().hex[:12]}"
    if state == settings.state_id and base_url == settings.base_url:
        raise ConfigurationError(f"{settings.source}['TEST']['STATE_ID']", (
            f"{state!r} is the project's own migration state on {base_url}; the tester reverts and "
            "deletes its state when it ends, so it needs one of its own."))
    return settings.with_overrides(base_url=base_url, state_id=state)


class MigrationTester:
    """A project's migrations on a throw-away state (see the module docstring)."""

    def __init__(self, settings: Settings | None = None, *, test: Mapping[str, Any] | None = None,
                 allow_dev_server: bool = False, state_id: str | None = None, cleanup: bool = True,
                 **overrides: Any):
        """`settings` and `test` default to Django's FHIR_MIGRATIONS and its TEST key; a
        `base_url=` override counts as naming the test server."""
        if settings is None:
            from .conf import get_settings, get_test_config  # Django's: only when none are given

            settings = get_settings()
            checked = get_test_config() if test is None else validate_test_config(test, "test")
        else:
            checked = validate_test_config(test, "test")
        if overrides.get("base_url"):
            checked["BASE_URL"] = overrides.pop("base_url")
        self.settings = tester_settings(settings, checked, allow_dev_server=allow_dev_server,
                                        state_id=state_id).with_overrides(**overrides)
        self.state_id = self.settings.state_id
        self.events: list[Event] = []  # what the engine reported, for assertions
        self.cleanup_on_exit = cleanup
        self.project = Project(self.settings, listeners=[self.events.append], command="MigrationTester",
                               source="django_fhir_migrations.testing")
        if state_id or checked.get("STATE_ID"):
            self._revert_and_delete()  # a named state may be left over from a run that crashed

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
            if self.cleanup_on_exit:
                self._revert_and_delete()
        finally:
            self.project.close()

    def _revert_and_delete(self) -> None:
        try:
            if self.applied():
                self.downgrade("zero")
        finally:
            state = StateRecorder(self.project.connection, self.state_id).read()
            for record_id in state.records.values():
                self.project.connection.request("DELETE", f"Basic/{record_id}")
            if state.exists:
                self.project.connection.request("DELETE", f"Basic/{state.resource_id}")

    def __enter__(self) -> MigrationTester:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _names(outcome: Outcome) -> list[str]:
    return [script.name for script in outcome.done]


__all__ = ["MigrationTester", "TestServerRequiredError", "tester_settings", "validate_test_config"]
