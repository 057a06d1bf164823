"""The revision graph: order, plans, and every way a history can be broken."""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine.config import ScriptLocation
from django_fhir_migrations.engine.errors import (
    AmbiguousTargetError,
    CycleError,
    DanglingRevisionError,
    DuplicateRevisionError,
    MultipleHeadsError,
    MultipleRootsError,
    UnknownTargetError,
)
from django_fhir_migrations.engine.graph import RevisionGraph
from django_fhir_migrations.engine.loader import MigrationLoader


def graph_of(scripts) -> RevisionGraph:
    return MigrationLoader([ScriptLocation(scripts.path, "dir")]).graph


def test_linear_history_is_a_doubly_linked_list(scripts):
    a, b, c = (scripts.add(n) for n in ("first", "second", "third"))
    graph = graph_of(scripts).validate()
    assert [s.revision for s in graph.ordered] == [a, b, c]
    assert [n.revision for n in graph.nodes[b].parents] == [a]
    assert [n.revision for n in graph.nodes[b].children] == [c]
    assert graph.head.revision == c
    assert [n.revision for n in graph.roots] == [a]


def test_forwards_plan_skips_applied_and_stops_at_target(scripts):
    a, b, c = (scripts.add(n) for n in ("first", "second", "third"))
    graph = graph_of(scripts).validate()
    assert [s.revision for s in graph.forwards_plan({a})] == [b, c]
    assert [s.revision for s in graph.forwards_plan(set(), target=b)] == [a, b]
    assert graph.forwards_plan({a, b, c}) == []


def test_backwards_plan_steps_and_target(scripts):
    a, b, c = (scripts.add(n) for n in ("first", "second", "third"))
    graph = graph_of(scripts).validate()
    applied = {a, b, c}
    assert [s.revision for s in graph.backwards_plan(applied)] == [c]
    assert [s.revision for s in graph.backwards_plan(applied, steps=2)] == [c, b]
    assert [s.revision for s in graph.backwards_plan(applied, target=a)] == [c, b]
    assert [s.revision for s in graph.backwards_plan(applied, steps=10)] == [c, b, a]


def test_merge_makes_a_dag_with_deterministic_order(scripts):
    root = scripts.add("root")
    left = scripts.add("left", down=root)
    right = scripts.add("right", down=root)
    merge = scripts.add("merge", down=(left, right))
    graph = graph_of(scripts).validate()
    assert [s.revision for s in graph.ordered] == [root, left, right, merge]
    assert graph.head.revision == merge
    assert graph.nodes[merge].script.is_merge


def test_duplicate_revision_names_both_files(scripts):
    scripts.add("one", revision="dup0001")
    scripts.add("two", revision="dup0001", down=None)
    graph = graph_of(scripts)
    with pytest.raises(DuplicateRevisionError) as info:
        graph.validate()
    assert info.value.revision == "dup0001"
    assert {p.name for p in info.value.paths} == {"one.py", "two.py"}


def test_dangling_down_revision_is_reported_with_file(scripts):
    scripts.add("one")
    scripts.add("two", down="nowhere123")
    with pytest.raises(DanglingRevisionError) as info:
        graph_of(scripts).validate()
    assert info.value.paths[0].name == "two.py"
    assert "nowhere123" in str(info.value)


def test_cycle_is_reported_as_the_path_found(scripts):
    scripts.add("root")
    scripts.add("x", revision="xxxx1111", down="zzzz3333")
    scripts.add("y", revision="yyyy2222", down="xxxx1111")
    scripts.add("z", revision="zzzz3333", down="yyyy2222")
    with pytest.raises(CycleError) as info:
        graph_of(scripts).validate()
    assert set(info.value.revisions) == {"xxxx1111", "yyyy2222", "zzzz3333"}
    assert "->" in str(info.value)


def test_two_roots_are_rejected(scripts):
    scripts.add("one", down=None)
    scripts.add("two", down=None)
    with pytest.raises(MultipleRootsError) as info:
        graph_of(scripts).validate()
    assert len(info.value.roots) == 2


def test_two_heads_are_rejected_with_the_merge_hint(scripts):
    root = scripts.add("root")
    scripts.add("left", down=root)
    scripts.add("right", down=root)
    graph = graph_of(scripts)
    with pytest.raises(MultipleHeadsError) as info:
        graph.validate()
    assert len(info.value.heads) == 2
    assert "--merge" in str(info.value)
    assert graph.validate(allow_multiple_heads=True) is graph


def test_targets_resolve_by_revision_prefix_and_name(scripts):
    scripts.add("first", revision="abcd0001")
    scripts.add("second", revision="abce0002")
    graph = graph_of(scripts).validate()
    assert graph.resolve("abcd").name == "first"
    assert graph.resolve("second").revision == "abce0002"
    with pytest.raises(AmbiguousTargetError):
        graph.resolve("abc")
    with pytest.raises(UnknownTargetError):
        graph.resolve("nothing")


def two_apps(tmp_path):
    """records/0001_create, records/0002_add_mrn, labs/0002_recode, labs/0003_cleanup: one chain,
    with number 0002 in both apps."""
    from ..support.helpers import ScriptsDir

    records, labs = (ScriptsDir(tmp_path / label) for label in ("records", "labs"))
    for folder in (records, labs):
        folder.path.mkdir()
    records.add("0001_create")
    records.add("0002_add_mrn")
    labs.revisions = list(records.revisions)
    labs.add("0002_recode")
    labs.add("0003_cleanup")
    loader = MigrationLoader([ScriptLocation(records.path, "records"), ScriptLocation(labs.path, "labs")])
    return loader.graph.validate(), records.revisions + labs.revisions[2:]


def test_targets_resolve_as_showmigrations_prints_them(tmp_path):
    graph, (create, add_mrn, recode, cleanup) = two_apps(tmp_path)
    assert graph.resolve("records/0002_add_mrn").revision == add_mrn
    assert graph.resolve("records/add_mrn").revision == add_mrn
    assert graph.resolve("records/0002").revision == add_mrn
    assert graph.resolve("labs/0002").revision == recode
    assert graph.resolve("0003").revision == cleanup
    assert graph.resolve("3").revision == cleanup
    assert graph.resolve("0001_create").revision == create
    assert graph.resolve(f"labs/{recode[:6]}").revision == recode


def test_a_number_two_apps_share_is_ambiguous_and_lists_both(tmp_path):
    graph, (_, add_mrn, recode, _) = two_apps(tmp_path)
    with pytest.raises(AmbiguousTargetError) as info:
        graph.resolve("0002")
    assert info.value.matched_by == "number"
    assert [s.revision for s in info.value.candidates] == [recode, add_mrn]  # by label
    assert "labs/0002_recode" in str(info.value) and "records/0002_add_mrn" in str(info.value)
    assert "app label" in str(info.value)
    from django_fhir_migrations.console import DJANGO, plain_console

    assert "as `fhirshowmigrations` lists it" in plain_console(DJANGO).error_text(info.value)


def test_a_typo_is_unknown_with_the_nearest_names(tmp_path):
    graph, _ = two_apps(tmp_path)
    with pytest.raises(UnknownTargetError) as info:
        graph.resolve("add_mrm")
    assert info.value.suggestions[0] == "add_mrn"
    assert "Did you mean add_mrn" in str(info.value)
    with pytest.raises(UnknownTargetError) as info:
        graph.resolve("records/0002_add_mrm")
    assert info.value.suggestions[0] == "records/0002_add_mrn"
    with pytest.raises(UnknownTargetError) as info:
        graph.resolve("labs/add_mrn")  # the right name under the wrong app
    assert "records/add_mrn" in info.value.suggestions
    with pytest.raises(UnknownTargetError) as info:
        graph.resolve("zzzzzz")
    assert info.value.suggestions == []
    assert "Did you mean" not in str(info.value)


def test_out_of_order_detects_script_inserted_below_applied(scripts):
    a = scripts.add("a")
    b = scripts.add("b")
    graph = graph_of(scripts).validate()
    # Pretend "b" was applied and "a" was inserted under it afterwards.
    assert [s.revision for s in graph.out_of_order({b})] == [a]
    assert graph.out_of_order({a, b}) == []
