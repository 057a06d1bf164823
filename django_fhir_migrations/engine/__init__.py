"""The migration engine: plain Python, no Django. Front ends build a `Project` and call it.

The names below are imported on first use, so importing the package (as Django does when it
loads the app) costs nothing until a command actually runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FhirMigrationError": ".errors",
    "Project": ".project",
    "ScriptLocation": ".config",
    "Settings": ".config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)
