"""The revision graph: every script, linked to its parents and children, and the plans it answers.

While the history is linear this is a doubly linked list; a merge script (down_revision is a
tuple) makes it a DAG. `RevisionGraph.build` collects what is wrong (duplicates, dangling
parents, cycles, several roots, several heads) as error objects; `validate()` raises the first
one, and status pages can show them all. Order is topological with ties broken by name and
revision, so every process computes the same order from the same files.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from .errors import (
    AmbiguousTargetError,
    CycleError,
    DanglingRevisionError,
    DuplicateRevisionError,
    MultipleHeadsError,
    MultipleRootsError,
    RevisionError,
    UnknownTargetError,
)
from .script import MigrationScript, bare_name, file_number


@dataclass(eq=False)
class Node:
    script: MigrationScript
    parents: list[Node] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    @property
    def revision(self) -> str:
        return self.script.revision

    def __repr__(self) -> str:
        return f"<Node {self.script.name} {self.script.short}>"


class RevisionGraph:
    """Every script as a node linked to its parents and children, and the plans it answers.

    Built by `build()` from loaded scripts; it never raises while building (problems are kept
    in `problems`, so a status page can show them all), and `validate()` raises the first one.
    `ordered` is the one apply order every process computes alike; `forwards_plan` and
    `backwards_plan` are plain lists the executor walks.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.problems: list[RevisionError] = []

    # --- building -------------------------------------------------------------------------

    @classmethod
    def build(cls, scripts: Iterable[MigrationScript]) -> RevisionGraph:
        graph = cls()
        by_revision: dict[str, list[MigrationScript]] = {}
        for script in scripts:
            by_revision.setdefault(script.revision, []).append(script)
        for revision, same in by_revision.items():
            if len(same) > 1:
                graph.problems.append(DuplicateRevisionError(revision, [s.path for s in same]))
            graph.nodes[revision] = Node(same[0])
        dangling = []
        for node in graph.nodes.values():
            for parent_rev in node.script.down_revisions:
                parent = graph.nodes.get(parent_rev)
                if parent is None:
                    dangling.append((node.script, parent_rev))
                    continue
                node.parents.append(parent)
                parent.children.append(node)
        if dangling:
            graph.problems.append(DanglingRevisionError(dangling))
        cycle = graph._find_cycle()
        if cycle:
            graph.problems.append(CycleError([n.script for n in cycle]))
        else:
            roots = graph.roots
            if len(roots) > 1 and not dangling:
                graph.problems.append(MultipleRootsError([n.script for n in roots]))
            heads = graph.heads
            if len(heads) > 1 and not dangling:
                graph.problems.append(MultipleHeadsError([n.script for n in heads]))
        return graph

    def validate(self, *, allow_multiple_heads: bool = False) -> RevisionGraph:
        for problem in self.problems:
            if allow_multiple_heads and isinstance(problem, MultipleHeadsError):
                continue
            raise problem
        return self

    def _find_cycle(self) -> list[Node] | None:
        """Depth-first search; returns the nodes of one cycle in parent order, if any."""
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        for start in sorted(self.nodes):
            if start in state:
                continue
            path: list[Node] = []
            stack: list[tuple[Node, int]] = [(self.nodes[start], 0)]
            while stack:
                node, index = stack.pop()
                if index == 0:
                    state[node.revision] = 1
                    path.append(node)
                if index < len(node.parents):
                    stack.append((node, index + 1))
                    parent = node.parents[index]
                    mark = state.get(parent.revision)
                    if mark == 1:
                        return path[path.index(parent):]
                    if mark is None:
                        stack.append((parent, 0))
                else:
                    state[node.revision] = 2
                    path.pop()
        return None

    # --- shape ----------------------------------------------------------------------------

    @property
    def roots(self) -> list[Node]:
        return sorted((n for n in self.nodes.values() if not n.script.down_revisions), key=_key)

    @property
    def heads(self) -> list[Node]:
        return sorted((n for n in self.nodes.values() if not n.children), key=_key)

    @property
    def head(self) -> MigrationScript | None:
        heads = self.heads
        if len(heads) > 1:
            raise MultipleHeadsError([n.script for n in heads])
        return heads[0].script if heads else None

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, revision: str) -> bool:
        return revision in self.nodes

    def script(self, revision: str) -> MigrationScript:
        return self.nodes[revision].script

    @cached_property
    def ordered(self) -> list[MigrationScript]:
        """All scripts in topological order (parents first); ties by name, then revision."""
        indegree = {rev: len(node.parents) for rev, node in self.nodes.items()}
        ready = [(_key(n), n.revision) for n in self.nodes.values() if indegree[n.revision] == 0]
        heapq.heapify(ready)
        order: list[MigrationScript] = []
        while ready:
            _, revision = heapq.heappop(ready)
            node = self.nodes[revision]
            order.append(node.script)
            for child in node.children:
                indegree[child.revision] -= 1
                if indegree[child.revision] == 0:
                    heapq.heappush(ready, (_key(child), child.revision))
        return order

    @cached_property
    def position(self) -> dict[str, int]:
        return {script.revision: index for index, script in enumerate(self.ordered)}

    def ancestors(self, revision: str, *, include_self: bool = True) -> set[str]:
        seen: set[str] = set()
        todo = [self.nodes[revision]]
        while todo:
            node = todo.pop()
            for parent in node.parents:
                if parent.revision not in seen:
                    seen.add(parent.revision)
                    todo.append(parent)
        if include_self:
            seen.add(revision)
        return seen

    def in_order(self, revisions: Iterable[str]) -> list[MigrationScript]:
        wanted = set(revisions)
        return [s for s in self.ordered if s.revision in wanted]

    def top(self, revisions: Iterable[str]) -> str | None:
        """The latest of `revisions` in graph order: what the seed-compatible head field holds."""
        known = [r for r in revisions if r in self.position]
        return max(known, key=self.position.__getitem__) if known else None

    # --- targets and plans ----------------------------------------------------------------

    def resolve(self, target: str) -> MigrationScript:
        """The script `target` names, as a person would copy it from showmigrations.

        Accepted, each optionally after the app label showmigrations prints
        (`records/0002_add_mrn`, `records/add_mrn`, `records/0002`): a revision id, the file
        name with or without its number, the number alone, a unique revision prefix (at least
        4 characters). The first of these readings that matches decides; two scripts matching
        it is an AmbiguousTargetError listing them, none an UnknownTargetError with the
        closest names (difflib).
        """
        if target in self.nodes:
            return self.nodes[target].script
        label, _, rest = target.rpartition("/")
        scripts = sorted((n.script for n in self.nodes.values()), key=lambda s: (s.label, s.name))
        if label:
            scripts = [s for s in scripts if s.label == label]
        for matched_by, matches in _TARGET_READINGS:
            found = [s for s in scripts if matches(s, rest)]
            if matched_by == "revision prefix" and len(found) == 1 and len(rest) < 4:
                break  # too short to be taken as meant
            if len(found) == 1:
                return found[0]
            if found:
                raise AmbiguousTargetError(target, found, matched_by=matched_by)
        raise UnknownTargetError(target, suggestions=self.close_names(target))

    def close_names(self, target: str, limit: int = 3) -> list[str]:
        """The migration names nearest to a mistyped `target`, in the form it was given in
        (`add_mrn`, `0002_add_mrn` or `records/0002_add_mrn`)."""
        names: dict[str, None] = {}
        for node in sorted(self.nodes.values(), key=_key):
            script = node.script
            for name in (script.name, bare_name(script.name), f"{script.label}/{script.name}",
                         f"{script.label}/{bare_name(script.name)}"):
                names.setdefault(name, None)
        return difflib.get_close_matches(target, list(names), n=limit, cutoff=0.6)

    def forwards_plan(self, applied: set[str], target: str | None = None) -> list[MigrationScript]:
        """Unapplied scripts needed to reach `target` (default: the head), parents first."""
        if target is None:
            wanted = set(self.nodes)
        else:
            wanted = self.ancestors(target)
        return self.in_order(wanted - applied)

    def backwards_plan(
        self, applied: set[str], target: str | None = None, steps: int | None = None
    ) -> list[MigrationScript]:
        """Applied scripts to revert, children first.

        `target=None` with `steps` reverts the last `steps` applied scripts in graph order;
        a target keeps itself and its ancestors applied and reverts everything applied above.
        """
        applied_in_order = self.in_order(applied)
        if target is None:
            count = 1 if steps is None else steps
            return list(reversed(applied_in_order))[:count]
        keep = self.ancestors(target)
        return [s for s in reversed(applied_in_order) if s.revision not in keep]

    def out_of_order(self, applied: set[str]) -> list[MigrationScript]:
        """Unapplied scripts that sit below an applied one (inserted into the middle of history)."""
        below: set[str] = set()
        for revision in applied:
            if revision in self.nodes:
                below |= self.ancestors(revision, include_self=False)
        return self.in_order(below - applied)


def _key(node: Node) -> tuple[str, str]:
    return (node.script.name, node.script.revision)


def _number_is(script: MigrationScript, text: str) -> bool:
    return text.isdigit() and file_number(script.path.name) == int(text)


# How a target may name a script, in the order they are tried (see RevisionGraph.resolve).
_TARGET_READINGS: tuple[tuple[str, Callable[[MigrationScript, str], bool]], ...] = (
    ("name", lambda script, text: script.name == text),
    ("name", lambda script, text: bare_name(script.name) == text),
    ("number", _number_is),
    ("revision prefix", lambda script, text: bool(text) and script.revision.startswith(text)),
)
