"""Turn the script folders into a revision graph.

Folders are only places where files live (as Alembic's version locations): installed apps'
`fhir_migrations/`, each folder of SCRIPTS_DIRS, and MIGRATION_SCRIPTS_DIR. Files whose name
starts with `_` (helpers, `__init__.py`) are skipped. Every file is loaded once per loader, and
a file that cannot be used does not hide the others: its `ScriptError` is collected in
`broken`, so a status page can list the good scripts and mark the bad one, while anything that
runs migrations (`valid_graph`) refuses as long as one is broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from .config import ScriptLocation
from .errors import ScriptError
from .graph import RevisionGraph
from .script import MigrationScript, load_script


def script_files(location: ScriptLocation) -> list[Path]:
    return sorted(
        p for p in location.path.glob("*.py") if not p.name.startswith("_") and p.is_file()
    )


class MigrationLoader:
    """The scripts of every location, loaded once, and the graph they form."""

    def __init__(self, locations: Sequence[ScriptLocation]):
        self.locations = list(locations)

    @cached_property
    def _loaded(self) -> tuple[list[MigrationScript], list[ScriptError]]:
        scripts: list[MigrationScript] = []
        broken: list[ScriptError] = []
        for location in self.locations:
            for path in script_files(location):
                try:
                    scripts.append(load_script(path, location.label))
                except ScriptError as exc:
                    broken.append(exc)
        return scripts, broken

    @property
    def scripts(self) -> list[MigrationScript]:
        """Every script; raises the first file's error if one cannot be used."""
        scripts, broken = self._loaded
        if broken:
            raise broken[0]
        return scripts

    @property
    def loadable(self) -> list[MigrationScript]:
        """The scripts that could be loaded (the broken ones are in `broken`)."""
        return self._loaded[0]

    @property
    def broken(self) -> list[ScriptError]:
        return self._loaded[1]

    @cached_property
    def graph(self) -> RevisionGraph:
        """The graph of the loadable scripts, unvalidated: callers decide which problems they
        can live with (a status page shows them all)."""
        return RevisionGraph.build(self.loadable)

    def valid_graph(self, *, allow_multiple_heads: bool = False) -> RevisionGraph:
        if self.broken:
            raise self.broken[0]
        return self.graph.validate(allow_multiple_heads=allow_multiple_heads)

    def names(self) -> set[str]:
        return {path.stem for location in self.locations for path in script_files(location)}
