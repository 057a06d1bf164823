"""Writing new scripts: safe names, the head as down_revision, merges."""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine import Project, Settings
from django_fhir_migrations.engine.errors import WriterError
from django_fhir_migrations.engine.script import load_script


def project_for(scripts, clean_env) -> Project:
    return Project(Settings.build({"SCRIPTS_DIRS": [str(scripts.path)]}, environ={}))


def test_first_script_has_no_parent_and_next_follows_head(scripts, clean_env):
    project = project_for(scripts, clean_env)
    first = project.make_migration("create_things", check=False)
    second = Project(project.settings).make_migration("add_things", check=False)
    assert load_script(first.path).down_revisions == ()
    assert load_script(second.path).down_revisions == (first.revision,)
    assert first.path.name == "0001_create_things.py"
    assert second.path.name == "0002_add_things.py"
    text = second.path.read_text()
    assert f'revision = "{second.revision}"' in text
    assert f"Revises: {first.revision}" in text


@pytest.mark.parametrize("name", ["", "../x", "a/b", "class", "with space", "1abc", "head",
                                  "_private", "x" * 81, "dash-name", "dots.py"])
def test_unsafe_names_are_refused(scripts, clean_env, name):
    with pytest.raises(WriterError):
        project_for(scripts, clean_env).make_migration(name, check=False)
    assert list(scripts.path.iterdir()) == []


def test_duplicate_name_is_refused(scripts, clean_env):
    project_for(scripts, clean_env).make_migration("same", check=False)
    with pytest.raises(WriterError, match="already exists"):
        project_for(scripts, clean_env).make_migration("same", check=False)


def test_merge_joins_all_heads(scripts, clean_env):
    root = scripts.add("root")
    left = scripts.add("left", down=root)
    right = scripts.add("right", down=root)
    merge = project_for(scripts, clean_env).make_migration("joined", merge=True, check=False)
    assert set(load_script(merge.path).down_revisions) == {left, right}
    # With the merge in place the history has one head again.
    assert project_for(scripts, clean_env).loader.valid_graph().head.revision == merge.revision


def test_a_merge_of_two_scripts_with_the_same_number_takes_the_next_number(scripts, clean_env):
    for number in range(1, 7):
        scripts.add(f"{number:04d}_step")
    base = scripts.revisions[-1]
    scripts.add("0007_left", down=base)
    scripts.add("0007_right", down=base)
    merge = project_for(scripts, clean_env).make_migration("joined", merge=True, check=False)
    assert merge.path.name == "0008_joined.py"  # not 0009: two 0007s are one step


def test_numbering_after_unnumbered_seed_files_counts_them(scripts, clean_env):
    for name in ("seed_one", "seed_two", "seed_three"):
        scripts.add(name)
    fourth = project_for(scripts, clean_env).make_migration("fourth", check=False)
    assert fourth.path.name == "0004_fourth.py"
    fifth = project_for(scripts, clean_env).make_migration("fifth", check=False)
    assert fifth.path.name == "0005_fifth.py"


def test_merge_without_two_heads_is_refused(scripts, clean_env):
    scripts.add("root")
    with pytest.raises(WriterError, match="nothing to merge"):
        project_for(scripts, clean_env).make_migration("joined", merge=True, check=False)
