"""Loading one script: seed-tool forms accepted, malformed files named, checksums stable."""

from __future__ import annotations

from django_fhir_migrations.engine.checksum import source_checksum
from django_fhir_migrations.engine.script import load_script


def test_seed_style_script_loads(scripts):
    path = scripts.write("legacy", (
        "revision = 'r1'\n"
        "down_revision = 'None'\n"
        "def upgrade():\n    print('upgraded')\n"
        "def downgrade():\n    print('downgraded')\n"
    ))
    script = load_script(path)
    assert script.revision == "r1"
    assert script.down_revisions == ()
    assert script.run("upgrade", ctx=object()) is None


def test_ctx_is_passed_to_functions_that_take_it(scripts):
    path = scripts.write("modern", (
        "revision = 'r2'\ndown_revision = None\n"
        "def upgrade(ctx):\n    return ctx\n"
        "def downgrade(ctx):\n    return ctx\n"
    ))
    marker = object()
    assert load_script(path).run("upgrade", marker) is marker


def test_each_file_is_imported_once(scripts):
    path = scripts.write("counted", (
        "import builtins\n"
        "builtins.__dict__.setdefault('_import_count', []).append(1)\n"
        "revision = 'r3'\ndown_revision = None\n"
        "def upgrade(ctx): pass\ndef downgrade(ctx): pass\n"
    ))
    import builtins

    before = len(builtins.__dict__.get("_import_count", []))
    assert load_script(path) is load_script(path)
    assert len(builtins.__dict__["_import_count"]) == before + 1


def test_checksum_ignores_comments_and_whitespace_but_not_code():
    original = b"def upgrade(ctx):\n    x = 1  # one\n    return x\n"
    reformatted = b"# header comment\n\ndef upgrade( ctx ):\n  x=1\n\n  return x   \n"
    changed = b"def upgrade(ctx):\n    x = 2\n    return x\n"
    assert source_checksum(original) == source_checksum(reformatted)
    assert source_checksum(original) != source_checksum(changed)


def test_checksum_of_fstrings_is_a_single_token():
    assert source_checksum(b"x = f'{a} b'\n") == source_checksum(b"x = f'{a} b'  # note\n")
    assert source_checksum(b"x = f'{a} b'\n") != source_checksum(b"x = f'{a}  b'\n")
