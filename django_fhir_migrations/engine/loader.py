"""Turn the script folders into a revision graph.

Folders are only places where files live (as Alembic's version locations): installed apps'
`fhir_migrations/`, each folder of SCRIPTS_DIRS, and MIGRATION_SCRIPTS_DIR. Files whose name
starts with `_` (helpers, `__init__.py`) are skipped. A file that cannot be used does not hide
the others: its `ScriptError` is collected, so a status page can list the good scripts and mark
the bad one.

Two depths of loading, because a status over a long history must not execute every module:

* Reading (`loadable`, `broken`, `graph`, `names()`): each file's metadata, taken from its text
  when the file has the plain form (see script.py) and from a real import otherwise. This is
  what status, `showmigrations` and the admin page use. `broken` lists what reading found: every
  problem with revision / down_revision / irreversible, and, for plain files, a missing or
  misshapen `upgrade` / `downgrade`; for files that had to be imported, everything. What it
  cannot see in a plain file is what only executing it shows (an exception at import, a syntax
  error inside a function): the graph those files form is still right, and the file is refused
  as soon as anything is about to run.
* Validating (`scripts`, `valid_graph()`, `validate()`): every script imported and checked, as
  before this split. Anything that runs migrations goes through `valid_graph()`, so it still
  refuses, before any server write, while ANY script of the project is broken, not only one of
  those it would run: a broken file is a broken deploy, and finding out halfway through a plan
  is worse. `prepare(plan)` (each script's `ensure_loaded()`) is for the executor to call right
  before a plan's first script runs: free once validated, it guards any path to `run` that did
  not go through `valid_graph()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from .config import ScriptLocation
from .errors import ScriptError
from .graph import RevisionGraph
from .script import MigrationScript, read_script


def script_files(location: ScriptLocation) -> list[Path]:
    """The folder's `*.py` files (following symlinks), without those starting with `_`, sorted."""
    try:
        with os.scandir(location.path) as entries:
            names = [entry.name for entry in entries
                     if os.path.normcase(entry.name).endswith(".py") and not entry.name.startswith("_")
                     and _is_file(entry)]
    except OSError:  # a missing or unreadable folder holds no scripts (as glob() found none)
        return []
    return [location.path / name for name in sorted(names, key=os.path.normcase)]  # as sorted(paths)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symlinks, as Path.is_file()
    except OSError:
        return False


class MigrationLoader:
    """The scripts of every location, read once, and the graph they form."""

    def __init__(self, locations: Sequence[ScriptLocation]):
        self.locations = list(locations)

    @cached_property
    def _read(self) -> list[MigrationScript | ScriptError]:
        """One entry per file, in location and file order."""
        found: list[MigrationScript | ScriptError] = []
        for location in self.locations:
            for path in script_files(location):
                try:
                    found.append(read_script(path, location.label))
                except ScriptError as exc:
                    exc.label = location.label
                    found.append(exc)
        return found

    @property
    def loadable(self) -> list[MigrationScript]:
        """The scripts whose metadata could be read (the others are in `broken`)."""
        return [s for s in self._read if isinstance(s, MigrationScript)]

    @property
    def broken(self) -> list[ScriptError]:
        """What reading the files found wrong (see the module docstring for what it can see)."""
        return [e for e in self._read if isinstance(e, ScriptError)]

    @cached_property
    def graph(self) -> RevisionGraph:
        """The graph of the loadable scripts, unvalidated: callers decide which problems they
        can live with (a status page shows them all)."""
        return RevisionGraph.build(self.loadable)

    @cached_property
    def _errors(self) -> list[ScriptError]:
        errors = []
        for entry in self._read:
            if isinstance(entry, MigrationScript):
                try:
                    entry.ensure_loaded()
                except ScriptError as exc:
                    exc.label = entry.label
                    errors.append(exc)
            else:
                errors.append(entry)
        return errors

    def validate(self) -> list[ScriptError]:
        """Import and check every script (once); every file's problem, in file order."""
        return list(self._errors)

    @property
    def scripts(self) -> list[MigrationScript]:
        """Every script, imported and validated; raises the first file's error if one cannot be
        used."""
        errors = self._errors
        if errors:
            raise errors[0]
        return self.loadable

    def valid_graph(self, *, allow_multiple_heads: bool = False) -> RevisionGraph:
        """The graph, once every script is validated and the graph has no problem (raises the
        first script error, then the first graph problem)."""
        errors = self._errors
        if errors:
            raise errors[0]
        return self.graph.validate(allow_multiple_heads=allow_multiple_heads)

    @staticmethod
    def prepare(scripts: Iterable[MigrationScript]) -> None:
        """Import and validate each of `scripts` (a plan) before the first one runs; raises the
        first one's ScriptError."""
        for script in scripts:
            script.ensure_loaded()

    def names(self) -> set[str]:
        return {path.stem for location in self.locations for path in script_files(location)}
