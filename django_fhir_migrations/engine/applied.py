"""What is applied: the state's record held against the scripts on disk.

The recorder knows the state's format, the graph knows the scripts; these rules relate the two
(as Django's loader holds `check_consistent_history`): which revisions count as applied
(adopting a state the seed tool wrote, which records only its head), the entries to write back,
which applied scripts were edited since (checksum drift), and which unapplied scripts sit below
applied ones (out of order). Every decision reads one `History`.
"""

from __future__ import annotations

from functools import cached_property

from .errors import UnknownStateRevisionError
from .graph import RevisionGraph
from .script import MigrationScript
from .state import AppliedMigration, MigrationState

ADOPTED_BY = "adopted from an earlier state"


class History:
    """One read of the state, interpreted against one graph."""

    def __init__(self, state: MigrationState, graph: RevisionGraph):
        self.state = state
        self.graph = graph

    @cached_property
    def applied(self) -> set[str]:
        """The applied revisions, adopting a seed-tool state (head only) as "the head and its
        ancestors". Raises UnknownStateRevisionError when the state names revisions no script
        declares."""
        state, graph = self.state, self.graph
        named = [a.revision for a in state.applied]
        if state.head:
            named.append(state.head)
        unknown = sorted({r for r in named if r not in graph})
        if unknown:
            raise UnknownStateRevisionError(state.state_id, unknown, state.describe_location())
        if state.head is None:
            return set()
        listed = {a.revision for a in state.applied}
        if listed and graph.top(listed) == state.head:
            return listed
        # Written by the seed tool (or moved by it since we last wrote): it applies linearly
        # up to its head, so the head and everything below it is applied.
        return graph.ancestors(state.head)

    @property
    def adopted_from_head(self) -> bool:
        """The state records only its head (as the seed tool wrote it), or the head moved."""
        if self.state.head is None:
            return False
        listed = {a.revision for a in self.state.applied}
        return not listed or self.graph.top(listed) != self.state.head

    def entries(self) -> list[AppliedMigration]:
        """The applied list to write back: recorded entries in order, then adopted ones."""
        applied = self.applied
        entries = [a for a in self.state.applied if a.revision in applied]
        listed = {a.revision for a in entries}
        for script in self.graph.in_order(applied - listed):
            entries.append(AppliedMigration(revision=script.revision, name=script.name,
                                            applied_by=ADOPTED_BY))
        return entries

    def drifted(self) -> list[MigrationScript]:
        """Applied scripts whose checksum differs from the one recorded when they ran."""
        changed = {
            entry.revision for entry in self.state.applied
            if entry.revision in self.applied and entry.checksum and entry.revision in self.graph
            and self.graph.script(entry.revision).checksum != entry.checksum
        }
        return self.graph.in_order(changed)

    def out_of_order(self) -> list[MigrationScript]:
        return self.graph.out_of_order(self.applied)

    def forwards_plan(self, target: str | None = None) -> list[MigrationScript]:
        return self.graph.forwards_plan(self.applied, target)


def recording_applied(graph: RevisionGraph, entry: AppliedMigration):
    """The state change that records `entry` as applied (idempotent; an entry already there for
    the revision, as after `--retry-failed`, is replaced where it stands)."""

    def mutate(state: MigrationState) -> MigrationState:
        entries = History(state, graph).entries()
        if all(e.revision != entry.revision for e in entries):
            entries.append(entry)
        else:
            entries = [entry if e.revision == entry.revision else e for e in entries]
        state = state.with_attempt(None, entry.revision)  # the application is complete
        return state.with_applied(entries, graph.top(e.revision for e in entries))

    return mutate


def recording_reverted(graph: RevisionGraph, revision: str):
    """The state change that records `revision` as no longer applied."""

    def mutate(state: MigrationState) -> MigrationState:
        entries = [e for e in History(state, graph).entries() if e.revision != revision]
        state = state.with_attempt(None, revision)  # the undo, if any, is complete
        return state.with_applied(entries, graph.top(e.revision for e in entries))

    return mutate
