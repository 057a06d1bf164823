"""Loading scripts fast: metadata read from the text of plain files, imports only when needed,
every problem still reported with its usual message, checksums lazy and cached safely."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from django_fhir_migrations.engine import checksum as checksum_module
from django_fhir_migrations.engine import script as script_module
from django_fhir_migrations.engine.checksum import source_checksum
from django_fhir_migrations.engine.config import ScriptLocation
from django_fhir_migrations.engine.errors import ScriptError
from django_fhir_migrations.engine.loader import MigrationLoader, script_files
from django_fhir_migrations.engine.scaffold import render
from django_fhir_migrations.engine.script import load_script, read_script

CORPUS = Path(__file__).parent.parent / "bad_inputs"
FUNCTIONS = "\n\ndef upgrade(ctx):\n    pass\n\n\ndef downgrade(ctx):\n    pass\n"


@pytest.fixture
def counted(tmp_path):
    """A line of module-level code that counts how often a module is executed, and the count."""
    tally = tmp_path / "executions"
    tally.write_text("")

    class Counter:
        line = f"open({str(tally)!r}, 'a').write('x')\n"

        @staticmethod
        def executions() -> int:
            return len(tally.read_text())

    return Counter


def loader_of(*folders: Path) -> MigrationLoader:
    return MigrationLoader([ScriptLocation(folder, "dir") for folder in folders])


def imported(path: Path, label: str = "dir"):
    """What a real import finds (the reference the fast read must agree with)."""
    source = path.read_bytes()
    return script_module._validate(path, label, script_module._import(path, source))


def age(path: Path, seconds: float = 60) -> None:
    """Make the file look untouched for a while (the checksum cache skips fresh files)."""
    stamp = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(stamp, stamp))


# --- reading without executing --------------------------------------------------------------------


def test_a_generated_script_is_read_without_being_executed(scripts, counted):
    source = render("generated", "aaa111", ("bbb222", "ccc333"), "Tag cohort.") + counted.line
    path = scripts.write("generated", source)
    script = read_script(path)
    assert (script.revision, script.down_revisions, script.irreversible) == ("aaa111", ("bbb222", "ccc333"), False)
    assert script.doc == "Tag cohort."
    assert not script.loaded and counted.executions() == 0
    script.ensure_loaded()
    assert script.loaded and counted.executions() == 1


def test_status_reads_a_whole_folder_without_importing_it(scripts, counted):
    for name in ("first", "second", "third"):
        scripts.add(name, header="import os\n")
        path = scripts.path / f"{name}.py"
        scripts.write(name, path.read_text() + counted.line)
    loader = loader_of(scripts.path)
    graph = loader.graph.validate()
    assert [s.name for s in graph.ordered] == ["first", "second", "third"]
    assert counted.executions() == 0 and not any(s.loaded for s in loader.loadable)
    assert loader.broken == []
    loader.valid_graph()
    assert counted.executions() == 3


@pytest.mark.parametrize("text", [
    '"""Doc."""\nrevision = "r1"\ndown_revision = None\n',
    "'''Doc\nmore'''\n\n# a comment\nrevision = 'r1'  # trailing\ndown_revision = 'None'\n",
    '#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"""  Leading blank.\n"""\nrevision = "r1"\ndown_revision = "p1"\n',
    'from __future__ import annotations\nimport os, sys as system\nrevision = "r1"\ndown_revision = ("p1", "p2")\n',
    '"""Esc \\"quoted\\" \\\\ and \\t tab."""\nrevision = "r1"\ndown_revision = (\n    "p1",\n    "p2",\n)\n',
    'r"""Raw \\n stays."""\nrevision = "r1"\ndown_revision = ["p1", "p2"]\nirreversible = True\n',
    'down_revision = ("p1",)\nirreversible = False\nrevision = "r1"\n',
    'revision = "r1"\ndown_revision = ("p1")\n',
    'revision = "r1"\ndown_revision = ("None")  # a string in parentheses, not a tuple\n',
    '"Single-quoted docstring."\r\nrevision = "r1"\r\ndown_revision = None\r\n',
    '\ufeff"""BOM."""\nrevision = "r1"\ndown_revision = None\n',
    '"""Ünïcode dоc."""\nrevision = "r1"\ndown_revision = None\n',
])
def test_the_fast_read_agrees_with_the_import(scripts, text):
    path = scripts.write("plain", text + FUNCTIONS)
    fast = script_module._read_plain(path, "dir", path.read_bytes(), (0, 0))
    assert fast is not None, "this plain form should be read without importing"
    reference = imported(path)
    assert (fast.revision, fast.down_revisions, fast.irreversible, fast.doc) == (
        reference.revision, reference.down_revisions, reference.irreversible, reference.doc)


@pytest.mark.parametrize("text", [
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'revision = "rebound"\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'globals()["revision"] = "rebound"\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'import sys\nsetattr(sys.modules[__name__], "x", 1)\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'from os.path import *\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'irreversible = True\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + '\uff52evision = "rebound"\n',  # NFKC: 'revision'
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'def __getattr__(name):\n    return True\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + '__doc__ = "Changed."\n',
    'revision = "r1"\ndown_revision = None' + FUNCTIONS + 'exec("x = 1")\n',
    'revision = "r1"\ndown_revision = None\nimport functools\n\n\n@functools.lru_cache\ndef upgrade(ctx):\n'
    '    pass\n\n\ndef downgrade(ctx):\n    pass\n',
    'X = """\nrevision = "fake"\n"""\nrevision = "r1"\ndown_revision = None' + FUNCTIONS,
    'revision = "r" "1"\ndown_revision = None' + FUNCTIONS,
    'revision: str = "r1"\ndown_revision = None' + FUNCTIONS,
    'revision = "r1"; down_revision = None' + FUNCTIONS,
    '# -*- coding: latin-1 -*-\nrevision = "r1"\ndown_revision = None' + FUNCTIONS,
    'from os.path import sep as revision\ndown_revision = None' + FUNCTIONS,
])
def test_files_the_text_cannot_vouch_for_are_imported(scripts, text):
    path = scripts.write("unusual", text)
    assert script_module._read_plain(path, "dir", path.read_bytes(), (0, 0)) is None
    script = read_script(path)
    assert script.loaded
    reference = imported(path)
    assert (script.revision, script.down_revisions, script.irreversible, script.doc) == (
        reference.revision, reference.down_revisions, reference.irreversible, reference.doc)


@pytest.mark.parametrize("source, fragment", [
    ("revision = 'r'\ndown_revision = None\ndef upgrade(ctx):\n  pass(\n", "syntax error on line"),
    ("down_revision = None\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "no `revision`"),
    ("revision = 'r'\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "no `down_revision`"),
    ("revision = 'r'\ndown_revision = None\ndef downgrade(ctx): pass\n", "no `upgrade`"),
    ("revision = 'r'\ndown_revision = None\ndef upgrade(ctx): pass\n", "no `downgrade`"),
    ("revision = 'r'\ndown_revision = None\nupgrade = 3\ndef downgrade(ctx): pass\n", "must be a function"),
    ("revision = 42\ndown_revision = None\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "non-empty string"),
    ("revision = ' r '\ndown_revision = None\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "whitespace"),
    ("revision = 'None'\ndown_revision = None\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n",
     "non-empty string"),
    ("revision = 'r'\ndown_revision = 7\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "got 7"),
    ("revision = 'r'\ndown_revision = ''\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "empty string"),
    ("revision = 'r'\ndown_revision = ('a', 'a')\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "twice"),
    ("revision = 'r'\ndown_revision = ['a', 'None']\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n",
     "tuple of revision strings"),
    ("revision = 'r'\ndown_revision = 'r'\ndef upgrade(ctx): pass\ndef downgrade(ctx): pass\n", "names itself"),
    ("revision = 'r'\ndown_revision = None\ndef upgrade(a, b): pass\ndef downgrade(ctx): pass\n", "one argument"),
    ("revision = 'r'\ndown_revision = None\nirreversible = 'yes'\ndef upgrade(ctx): pass\n"
     "def downgrade(ctx): pass\n", "True or False"),
    ("raise RuntimeError('boom at import')\n", "RuntimeError while being imported: boom at import"),
])
def test_every_problem_is_found_by_reading_with_its_usual_message(scripts, source, fragment):
    path = scripts.write("broken", source)
    with pytest.raises(ScriptError) as read:
        read_script(path)
    with pytest.raises(ScriptError) as loaded:
        load_script(path)
    assert str(read.value) == str(loaded.value)
    assert read.value.path == loaded.value.path == path
    assert fragment in str(read.value) and str(path) in str(read.value)
    loader = loader_of(scripts.path)
    assert [str(e) for e in loader.broken] == [str(read.value)]


def test_an_error_raised_at_import_surfaces_when_validating_not_when_reading(scripts):
    scripts.add("first")
    path = scripts.write("second", 'revision = "r2"\ndown_revision = None\nSETTINGS = {}\n'
                                   'SYSTEM = SETTINGS["system"]' + FUNCTIONS)
    loader = loader_of(scripts.path)
    assert loader.broken == []  # status: the text is plain, and running it is not status's job
    errors = loader.validate()
    assert [e.path for e in errors] == [path] and "KeyError while being imported" in str(errors[0])
    with pytest.raises(ScriptError, match="KeyError"):
        loader.valid_graph(allow_multiple_heads=True)
    with pytest.raises(ScriptError, match="KeyError"):
        assert loader.scripts
    with pytest.raises(ScriptError, match="KeyError"):
        read_script(path).run("upgrade", object())


def test_running_a_script_imports_and_validates_it_first(scripts):
    path = scripts.write("lazy", 'revision = "r1"\ndown_revision = None\n\n\ndef upgrade(ctx):\n'
                                 '    return ctx\n\n\ndef downgrade():\n    return "seed style"\n')
    script = read_script(path)
    assert not script.loaded
    marker = object()
    assert script.run("upgrade", marker) is marker
    assert script.run("downgrade", marker) == "seed style"
    assert script.loaded


def test_prepare_validates_a_plan_before_anything_runs(scripts):
    first = scripts.add("first")
    scripts.write("second", f'revision = "r2"\ndown_revision = {first!r}\nraise KeyError("x")' + FUNCTIONS)
    loader = loader_of(scripts.path)
    plan = loader.graph.validate().forwards_plan(set())
    with pytest.raises(ScriptError, match="second.py"):
        MigrationLoader.prepare(plan)
    assert plan[0].loaded  # the scripts before the broken one were checked on the way


def test_a_file_edited_after_reading_is_refused_before_it_runs(scripts):
    path = scripts.write("moving", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    script = read_script(path)
    scripts.write("moving", 'revision = "r9"\ndown_revision = None' + FUNCTIONS)
    with pytest.raises(ScriptError) as info:
        script.ensure_loaded()
    assert "changed on disk" in str(info.value) and "r1" in str(info.value) and "r9" in str(info.value)
    with pytest.raises(ScriptError):  # the verdict is kept: this object never runs
        script.run("upgrade", object())
    assert read_script(path).revision == "r9"  # a new read sees the new file


def test_each_file_is_executed_once_however_it_is_reached(scripts, counted):
    path = scripts.write("once", 'revision = "r1"\ndown_revision = None' + FUNCTIONS + counted.line)
    loader = loader_of(scripts.path)
    loader.valid_graph()
    loader.prepare(loader.scripts)
    assert load_script(path) is loader.scripts[0]
    assert counted.executions() == 1


# --- the bad-input corpus, without a server ---------------------------------------------------------

SCRIPT_CASES = {
    "syntax_error": "syntax error on line 5", "missing_revision": "`revision`",
    "missing_down_revision": "`down_revision`", "missing_upgrade": "`upgrade`",
    "missing_downgrade": "`downgrade`", "noncallable_upgrade": "must be a function",
    "nonstring_revision": "20261126", "empty_revision": "non-empty string",
    "import_time_exception": "KeyError", "bad_down_revision_type": "[1]",
    "upgrade_takes_two_arguments": "one argument",
}


@pytest.mark.parametrize("case", sorted(SCRIPT_CASES))
def test_the_corpus_is_refused_before_anything_could_run(case):
    loader = loader_of(CORPUS / case)
    with pytest.raises(ScriptError) as info:
        loader.valid_graph()
    assert info.value.path == CORPUS / case / "0002_broken.py"
    assert SCRIPT_CASES[case] in str(info.value)
    read_level = [e.path.name for e in loader.broken]
    # Only an exception raised while executing the module is beyond what reading can see.
    assert read_level == ([] if case == "import_time_exception" else ["0002_broken.py"])


# --- listing ---------------------------------------------------------------------------------------


def test_script_files_lists_python_files_in_name_order(tmp_path):
    for name in ("0002_b.py", "0001_a.py", "_helper.py", "__init__.py", "notes.txt", "0010_c.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "folder.py").mkdir()
    (tmp_path / "0003_link.py").symlink_to(tmp_path / "0001_a.py")
    (tmp_path / "0004_dangling.py").symlink_to(tmp_path / "gone.py")
    found = script_files(ScriptLocation(tmp_path, "dir"))
    assert [p.name for p in found] == ["0001_a.py", "0002_b.py", "0003_link.py", "0010_c.py"]
    assert found == sorted(p for p in tmp_path.glob("*.py") if not p.name.startswith("_") and p.is_file())
    assert script_files(ScriptLocation(tmp_path / "missing", "dir")) == []


# --- checksums ---------------------------------------------------------------------------------------


def test_the_checksum_is_computed_when_asked_and_matches_the_source(scripts, monkeypatch):
    path = scripts.write("summed", 'revision = "r1"\ndown_revision = None  # note' + FUNCTIONS)
    calls = []
    real = checksum_module.source_checksum
    monkeypatch.setattr(checksum_module, "source_checksum", lambda source: calls.append(1) or real(source))
    script = read_script(path)
    loader_of(scripts.path).valid_graph()
    assert calls == []
    assert script.checksum == real(path.read_bytes())
    assert script.checksum == script.checksum and len(calls) == 1


def test_checksums_are_cached_in_pycache_keyed_by_path_size_and_mtime(scripts, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = scripts.write("cached", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    age(path)
    expected = source_checksum(path.read_bytes())
    assert read_script(path, "first").checksum == expected
    cache = checksum_module._cache_file(path)
    assert cache is not None and cache.parent.name == "__pycache__" and cache.exists()

    def refuse(source):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(checksum_module, "source_checksum", refuse)
    assert read_script(path, "second").checksum == expected

    # Same size, different content and mtime: the entry does not match, it is computed again.
    monkeypatch.undo()
    path.write_text(path.read_text().replace("r1", "r2"))
    age(path, 30)
    assert read_script(path, "third").checksum == source_checksum(path.read_bytes()) != expected


def test_a_file_modified_just_now_is_not_cached(scripts, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = scripts.write("fresh", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    assert read_script(path).checksum == source_checksum(path.read_bytes())
    assert not checksum_module._cache_file(path).exists()


def test_a_cache_entry_for_other_bytes_is_never_served(scripts, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = scripts.write("forged", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    age(path)
    assert read_script(path, "first").checksum
    cache = checksum_module._cache_file(path)
    stat = path.stat()
    # Same size and an entry claiming the new mtime, but written for another path: ignored.
    text = cache.read_text().replace(str(path), str(path.with_name("elsewhere.py")))
    cache.write_text(text.replace("sha256:", "sha256:0"))
    assert read_script(path, "second").checksum == source_checksum(path.read_bytes())
    assert stat == path.stat()


def test_no_cache_is_written_when_bytecode_writing_is_off_or_impossible(scripts, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = scripts.write("nowrite", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    age(path)
    assert read_script(path).checksum == source_checksum(path.read_bytes())
    assert not checksum_module._cache_file(path).exists()

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    (scripts.path / "__pycache__").write_text("not a folder")  # cannot be created: no cache, no error
    assert read_script(path, "again").checksum == source_checksum(path.read_bytes())


def test_the_checksum_is_of_the_source_that_was_imported(scripts):
    path = scripts.write("pinned", 'revision = "r1"\ndown_revision = None' + FUNCTIONS)
    script = load_script(path)
    original = source_checksum(path.read_bytes())
    scripts.write("pinned", 'revision = "r1"\ndown_revision = None\nX = 1' + FUNCTIONS)
    assert script.checksum == original  # the code that runs is the code fingerprinted
