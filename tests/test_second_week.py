"""A Django team's second week (issue 24): what went wrong once the tool met real work, each as
the tool now answers it. Against the real HAPI where the server is involved; the rest are fast."""

from __future__ import annotations

from django_fhir_migrations.engine import Project
from django_fhir_migrations.engine.config import ScriptLocation, Settings
from django_fhir_migrations.formatting import format_status

from .support.helpers import ScriptsDir, call

# 4. counts and messages ---------------------------------------------------------------------------


def test_a_broken_script_is_listed_under_its_app_label(tmp_path):
    labs = ScriptsDir(tmp_path / "labs" / "fhir_migrations")
    labs.path.mkdir(parents=True)
    labs.add("0001_recode")
    labs.write("0002_cleanup", "revision = 'x'\ndef upgrade(:\n")
    settings = Settings(base_url=None, locations=(ScriptLocation(labs.path, "labs"),))
    lines = [line for _, line in format_status(Project(settings).status(offline=True))]
    assert " [?] labs/0001_recode" in "\n".join(lines)
    assert " [!] labs/0002_cleanup  (cannot be loaded: see Problems)" in lines


def test_an_error_while_importing_a_script_names_its_line(tmp_path):
    from django_fhir_migrations.engine.errors import ScriptError
    from django_fhir_migrations.engine.script import load_script

    path = tmp_path / "0001_broken.py"
    path.write_text("revision = 'a1'\ndown_revision = None\nLIMIT = int('ten')\n"
                    "def upgrade(ctx): pass\ndef downgrade(ctx): pass\n")
    try:
        load_script(path)
    except ScriptError as error:
        assert f"(at {path}:3 in <module>(): LIMIT = int('ten'))" in str(error)
    else:
        raise AssertionError("a script that raises on import loaded")


def test_a_mistyped_name_gets_pythons_did_you_mean():
    from django_fhir_migrations.engine.frames import suggestion

    def upgrade(ctx):
        patients = []  # noqa: F841
        return len(patiens)  # noqa: F821

    try:
        upgrade(None)
    except NameError as error:
        assert suggestion(error) == "Did you mean: 'patients'?"
    assert suggestion(ValueError("x")) == ""


def progress_lines(*events, terminal: bool = False) -> list[str]:
    import io

    from django_fhir_migrations.console import DJANGO, Console
    from django_fhir_migrations.engine.events import Event

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    lines: list[str] = []
    console = Console(DJANGO, out=lines.append, err=lines.append, stream=Terminal())
    for fields in events:
        console.on_event(Event("progress", **fields))
    return lines


def test_a_bulk_job_without_a_count_says_no_count():
    lines = progress_lines(dict(detail="bulk patch: job has started", count=0, duration=3.0),
                           dict(detail="bulk patch: done", count=None, duration=10.1, final=True))
    assert lines == ["    bulk patch: done in 10.1s"]  # not "done: 0 done in 10.1s"


def test_a_short_loop_ends_with_its_count_and_rate_without_the_progress_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    for terminal in (False, True):
        lines = progress_lines(dict(detail="MRN", count=0, total=2000, duration=0.0),
                               dict(detail="MRN", count=1200, total=2000, duration=2.0),
                               dict(detail="MRN", count=2000, total=2000, duration=3.2, final=True),
                               terminal=terminal)
        assert lines == ["    MRN: 2,000 done in 3.2s (625/s)"]  # a run under 10 s is not silent


# 5. a dry run at scale ------------------------------------------------------------------------------


def seed(fhir, count: int) -> list[str]:
    ids = []
    for n in range(count):
        body = {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": f"seed{n}"}]}
        reply = fhir.http.post(fhir.url("Patient"), json=body, timeout=30,
                               headers={"Content-Type": "application/fhir+json"})
        reply.raise_for_status()
        ids.append(reply.json()["id"])
    return ids


def test_a_dry_run_of_hundreds_of_writes_prints_a_summary_per_type_and_operation(fhir_settings, fhir, scripts):
    seed(fhir, 4)
    scripts.add("many", upgrade=(
        "with ctx.batch() as batch:\n"
        "    for n in range(250):\n"
        f"        batch.create({{'resourceType': 'Patient', 'identifier': [{{'system': {fhir.system!r}, "
        "'value': f'new{n}'}]})\n"
        f"for patient in ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True):\n"
        "    patient['gender'] = 'other'\n"
        "    ctx.update(patient)\n"))
    code, out, err = call("fhirmigrate", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert "    [dry-run] POST Patient: 250" in lines
    [updates] = [line for line in lines if "[dry-run] PUT Patient: 4 (" in line]
    assert updates.endswith(" and 1 more)") and updates.count("Patient/") == 3  # the first three
    assert "    254 write(s) intercepted in 3 bundle(s); -v 2 lists each one" in lines  # no headers
    assert len(lines) < 10
    assert len(fhir.patients()) == 4 and fhir.state() is None

    code, out, err = call("fhirmigrate", "--dry-run", verbosity=2)
    assert code == 0, err
    assert sum(line.startswith("  [dry-run] POST Patient: Patient with identifier") for line in out.splitlines()) == 250
    assert out.count("  [dry-run] batch bundle of 100 entries:") == 2
    assert "    254 write(s) intercepted in 3 bundle(s)\n" in out
