"""The migration engine: plain Python, no Django. Front ends build a `Project` and call it."""

from .config import ScriptLocation, Settings
from .errors import FhirMigrationError
from .project import Project
from .report import Reporter

__all__ = ["FhirMigrationError", "Project", "Reporter", "ScriptLocation", "Settings"]
