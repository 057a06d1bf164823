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
