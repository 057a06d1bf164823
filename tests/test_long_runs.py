"""Running a long migration on a live server (DESIGN, "Running long migrations on a live server"):
verify, failure budgets, throttling, pause and cancel; against the real server."""

from __future__ import annotations

from .support.helpers import call
from .test_large_migrations import APPEND, NEW, appended, seed

VERIFY = ("\n\ndef verify(ctx):\n"
          "    assert ctx.count('Patient', identifier={new!r}) == {expected}, 'not every Patient has it'\n")


def test_a_verify_that_fails_is_not_recorded_and_a_rerun_repeats_only_verify(fhir_settings, fhir, scripts):
    seed(fhir, 4)
    revision = scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=NEW))
    path = scripts.path / "append.py"
    path.write_text(path.read_text() + VERIFY.format(new=NEW + "|", expected=5))
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "did not verify" in err and "not every Patient has it" in err and "not recorded" in err
    assert fhir.applied() == []
    assert all(len(appended(p)) == 1 for p in fhir.patients())

    code, out, err = call("fhirmigrate")  # nothing changed: verify() alone, and it fails again
    assert code == 1 and "running verify() again" in out
    assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())

    # The data is fixed by hand: a fifth Patient with the identifier. Now it verifies.
    fhir.http.post(fhir.url("Patient"), json={"resourceType": "Patient", "identifier": [
        {"system": fhir.system, "value": "late"}, {"system": NEW, "value": "by-hand"}]},
        headers={"Content-Type": "application/fhir+json"}, timeout=30).raise_for_status()
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert fhir.applied() == [revision]
    assert all(len(appended(p)) == 1 for p in fhir.patients())


def test_a_verify_fixed_in_the_script_runs_the_upgrade_again_resumed(fhir_settings, fhir, scripts):
    seed(fhir, 4)
    revision = scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=NEW))
    path = scripts.path / "append.py"
    source = path.read_text()
    path.write_text(source + VERIFY.format(new=NEW + "|", expected=99))
    assert call("fhirmigrate")[0] == 1
    path.write_text(source + VERIFY.format(new=NEW + "|", expected=4))  # the script changed
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "running verify() again" not in out and "4 resource(s) it wrote are skipped" in out
    assert fhir.applied() == [revision]
    assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())


BUDGET = """
BAD = {bad!r}
with ctx.batch(size=4, max_failures={budget}) as b:
    for p in ctx.search('Patient', identifier={system!r}, as_dict=True):
        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})
        if p['id'] in BAD:
            p['meta']['versionId'] = '99'  # the bug: a stale version, refused by the server
        b.update(p)
"""


def test_a_failure_budget_applies_with_failures_then_retry_failed_fixes_exactly_those(
        fhir_settings, fhir, scripts):
    patients = seed(fhir, 10)
    bad = sorted(p["id"] for p in patients[:3])
    revision = scripts.add("append", upgrade=BUDGET.format(bad=bad, budget=5, system=fhir.system + "|", new=NEW),
                           downgrade="ctx.undo()")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "3 failures" in out and "within the budget of 5 failures" in out
    assert fhir.applied() == [revision]
    by_id = {p["id"]: p for p in fhir.patients()}
    assert all(len(appended(by_id[i])) == (0 if i in bad else 1) for i in by_id)
    code, out, _ = call("fhirshowmigrations")
    assert "(with 3 failures)" in out
    applied = next(e for e in fhir.state()["extension"] if e["url"].endswith("/applied-migration"))
    assert {"url": "failures", "valueInteger": 3} in applied["extension"]

    path = scripts.path / "append.py"  # the fix
    path.write_text(path.read_text().replace("p['meta']['versionId'] = '99'", "pass"))
    code, out, err = call("fhirmigrate", retry_failed="append")
    assert code == 0, err
    assert "over the 3 resource(s) it left as failures" in out and "checksum will be accepted" in out
    by_id = {p["id"]: p for p in fhir.patients()}
    assert all(len(appended(p)) == 1 for p in by_id.values())
    assert all(by_id[i]["meta"]["versionId"] == "2" for i in by_id)  # the 7 were not touched again
    code, out, _ = call("fhirshowmigrations")
    assert "failure" not in out and "edited since applied" not in out
    assert code == 0

    assert call("fhirdowngrade")[0] == 0  # undo covers the first run and the retry
    assert all(appended(p) == [] for p in fhir.patients())


def test_past_the_failure_budget_the_run_stops_unrecorded_as_before(fhir_settings, fhir, scripts):
    patients = seed(fhir, 12)
    bad = sorted(p["id"] for p in patients[:6])
    scripts.add("append", upgrade=BUDGET.format(bad=bad, budget=5, system=fhir.system + "|", new=NEW))
    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "more than its budget of 5 failures" in err
    assert fhir.applied() == []
