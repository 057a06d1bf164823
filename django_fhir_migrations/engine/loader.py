"""Turn the script folders into a revision graph.

Folders are only places where files live (as Alembic's version locations): installed apps'
`fhir_migrations/`, each folder of SCRIPTS_DIRS, and MIGRATION_SCRIPTS_DIR. Files whose name
starts with `_` (helpers, `__init__.py`) are skipped. The graph is built once per loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from .config import ScriptLocation
from .graph import RevisionGraph
from .script import MigrationScript, load_script


def script_files(location: ScriptLocation) -> list[Path]:
    return sorted(
        p for p in location.path.glob("*.py") if not p.name.startswith("_") and p.is_file()
    )


class MigrationLoader:
    def __init__(self, locations: Sequence[ScriptLocation]):
        self.locations = list(locations)

    @cached_property
    def scripts(self) -> list[MigrationScript]:
        return [
            load_script(path, location.label)
            for location in self.locations
            for path in script_files(location)
        ]

    @cached_property
    def graph(self) -> RevisionGraph:
        """The graph, unvalidated: callers decide which problems they can live with."""
        return RevisionGraph.build(self.scripts)

    def valid_graph(self, *, allow_multiple_heads: bool = False) -> RevisionGraph:
        return self.graph.validate(allow_multiple_heads=allow_multiple_heads)

    def names(self) -> set[str]:
        return {path.stem for location in self.locations for path in script_files(location)}
