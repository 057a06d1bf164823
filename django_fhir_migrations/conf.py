"""Django settings -> engine Settings: `FHIR_MIGRATIONS` plus env overrides, validated.

Script folders are every installed app's `fhir_migrations/`, then SCRIPTS_DIRS, then
MIGRATION_SCRIPTS_DIR (the engine adds those two). `FHIR_MIGRATIONS["TEST"]` names the server
and state a project's migration tests use (testing.py), as `DATABASES[...]["TEST"]` does for
Django's test runner; it is not an engine setting.
"""

from __future__ import annotations

import site
import sysconfig
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings

from .engine.config import ScriptLocation, Settings
from .testing import validate_test_config

APP_SCRIPTS_FOLDER = "fhir_migrations"


def app_script_folder(app_label: str) -> ScriptLocation:
    """The app's fhir_migrations/ folder (LookupError: no such app; ValueError: an installed
    package, e.g. `--app auth`, whose folder is not the project's to write into)."""
    config = apps.get_app_config(app_label)
    path = Path(config.path).resolve()
    if is_installed_package(path):
        raise ValueError(
            f"app {app_label!r} ({config.name}) is installed in {path.parent}, not part of this "
            "project: new migration scripts belong in one of the project's own apps."
        )
    return ScriptLocation(path=path / APP_SCRIPTS_FOLDER, label=config.label)


def is_installed_package(path: Path) -> bool:
    """Whether `path` lies in site-packages (or the standard library): installed code."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    roots.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.add(user_site)
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return True
    for root in roots:
        try:
            path.relative_to(Path(root).resolve())
            return True
        except ValueError:
            continue
    return False


def app_locations() -> tuple[ScriptLocation, ...]:
    found = []
    for config in apps.get_app_configs():
        folder = Path(config.path) / APP_SCRIPTS_FOLDER
        if folder.is_dir():
            found.append(ScriptLocation(path=folder.resolve(), label=config.label))
    return tuple(found)


def get_settings() -> Settings:
    """Read and validate the settings now (they may be overridden per test). The Provenance
    signing key defaults to the project's SECRET_KEY (and its fallbacks), as Django's own
    signing does."""
    values = dict(getattr(django_settings, "FHIR_MIGRATIONS", None) or {})
    values.pop("TEST", None)  # MigrationTester's (get_test_config), not an engine setting
    if not values.get("SIGNING_KEY") and getattr(django_settings, "SECRET_KEY", None):
        values["SIGNING_KEY"] = django_settings.SECRET_KEY
        values.setdefault("SIGNING_KEY_FALLBACKS",
                          list(getattr(django_settings, "SECRET_KEY_FALLBACKS", None) or []))
    return Settings.build(
        values,
        app_locations=app_locations(),
        source="FHIR_MIGRATIONS",
    )


def get_test_config() -> dict[str, Any]:
    """FHIR_MIGRATIONS["TEST"], validated: the server and state MigrationTester uses, as
    DATABASES[...]["TEST"] names the test database Django's test runner makes."""
    test = (getattr(django_settings, "FHIR_MIGRATIONS", None) or {}).get("TEST")
    return validate_test_config(test, "FHIR_MIGRATIONS['TEST']")
