"""What the front doors without Django share (the CLI, the Flask blueprint, the seed facade):
settings from a mapping plus the environment, and the checks on script folders that Django's
app registry does for the manage.py commands.

A front door can rename the settings an error names (the CLI says `--base-url` where the engine
would say `fhir-migrations['BASE_URL']`), so the message points at what the user typed; it
passes the renames to `Console.error_text`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .engine.config import SCRIPTS_DIR_ENV, ScriptLocation, Settings
from .engine.errors import ConfigurationError


def build_settings(values: Mapping[str, Any], *, environ: Mapping[str, str], source: str,
                   renames: Mapping[str, str]) -> Settings:
    try:
        return Settings.build(values, environ=environ, source=source)
    except ConfigurationError as exc:
        if exc.setting in renames:
            raise ConfigurationError(renames[exc.setting], exc.problem) from None
        raise


def require_scripts(settings: Settings, where: str) -> None:
    """Outside Django no app folders exist: without a scripts folder every command is a no-op,
    which is a configuration mistake rather than "nothing to do"."""
    if not settings.locations:
        raise ConfigurationError(
            where, f"no folder of migration scripts is configured. Point it (or the environment "
            f"variable {SCRIPTS_DIR_ENV}) at the folder that holds your migration scripts.",
        )


def scripts_folder(settings: Settings, folder: str | None, flag: str) -> ScriptLocation | None:
    """The configured scripts folder `folder` names (None: let the engine choose)."""
    if folder is None:
        return None
    wanted = Path(folder).expanduser().resolve()
    for location in settings.locations:
        if location.path == wanted:
            return location
    known = ", ".join(str(loc.path) for loc in settings.locations) or "none"
    raise ConfigurationError(flag, f"{folder!r} is not one of the configured scripts folders "
                                   f"({known}).")
