"""Django settings -> engine Settings: `FHIR_MIGRATIONS` plus env overrides, validated.

Script folders are every installed app's `fhir_migrations/`, then SCRIPTS_DIRS, then
MIGRATION_SCRIPTS_DIR (the engine adds those two).
"""

from __future__ import annotations

from pathlib import Path

from django.apps import apps
from django.conf import settings as django_settings

from .engine.config import ScriptLocation, Settings

APP_SCRIPTS_FOLDER = "fhir_migrations"


def app_script_folder(app_label: str) -> ScriptLocation:
    config = apps.get_app_config(app_label)
    return ScriptLocation(path=Path(config.path) / APP_SCRIPTS_FOLDER, label=config.label)


def app_locations() -> tuple[ScriptLocation, ...]:
    found = []
    for config in apps.get_app_configs():
        folder = Path(config.path) / APP_SCRIPTS_FOLDER
        if folder.is_dir():
            found.append(ScriptLocation(path=folder.resolve(), label=config.label))
    return tuple(found)


def get_settings() -> Settings:
    """Read and validate the settings now (they may be overridden per test)."""
    return Settings.build(
        getattr(django_settings, "FHIR_MIGRATIONS", None) or {},
        app_locations=app_locations(),
        source="FHIR_MIGRATIONS",
    )
