"""django-fhir-migrations: versioned data migrations for FHIR servers, the Django/Alembic way.

`from django_fhir_migrations import Migration` gives the seed tool's facade; it does not need
Django, so it is imported lazily.
"""

from __future__ import annotations

from typing import Any

from .engine.version import __version__

__all__ = ["Migration", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Migration":
        from .facade import Migration

        return Migration
    raise AttributeError(name)
