"""A transaction whose entries reference each other (fullUrl urn:uuid, the most common FHIR
bundle there is), across bundles and across a resumed run, with Provenance and undo."""

from __future__ import annotations

from ..support.helpers import call

LINKED = """
import os, uuid
with ctx.transaction(size=7) as t:
    for i in range(12):
        patient_urn = f"urn:uuid:{{uuid.uuid4()}}"
        t.create({{"resourceType": "Patient", "identifier": [{{"system": {system!r}, "value": f"p{{i}}"}}]}},
                 full_url=patient_urn)
        if i == 6 and os.path.exists({flag!r}):
            raise RuntimeError("stopped on purpose")
        t.create({{"resourceType": "Observation", "status": "final", "code": {{"text": "linked"}},
                   "identifier": [{{"system": {system!r}, "value": f"o{{i}}"}}],
                   "subject": {{"reference": patient_urn}}}})
"""


def observations(fhir) -> list[dict]:
    return fhir.search("Observation", identifier=f"{fhir.system}|")


def check_links(fhir) -> None:
    patients = {p["identifier"][0]["value"]: p["id"] for p in fhir.patients()}
    found = observations(fhir)
    assert len(patients) == 12 and len(found) == 12
    for obs in found:
        number = obs["identifier"][0]["value"][1:]
        assert obs["subject"]["reference"] == f"Patient/{patients['p' + number]}"


def test_entries_reference_creates_of_the_same_and_earlier_bundles_by_their_urn(fhir_settings, fhir, scripts,
                                                                               tmp_path):
    scripts.add("linked", upgrade=LINKED.format(system=fhir.system, flag=str(tmp_path / "absent")),
                downgrade="ctx.undo()")
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    check_links(fhir)  # bundles of 7: pairs split across bundles are resolved too
    for obs in observations(fhir):
        assert fhir.search("Provenance", target=f"Observation/{obs['id']}")
    assert call("fhirdowngrade")[0] == 0
    assert fhir.patients() == [] and observations(fhir) == []


def test_a_resumed_run_points_references_at_creates_the_interrupted_run_made(fhir_settings, fhir, scripts,
                                                                            tmp_path):
    flag = tmp_path / "fail"
    flag.write_text("")
    scripts.add("linked", upgrade=LINKED.format(system=fhir.system, flag=str(flag)), downgrade="ctx.undo()")
    code, _, err = call("fhirmigrate")
    assert code == 1 and "stopped on purpose" in err
    assert 0 < len(fhir.patients()) < 12
    flag.unlink()
    code, _, err = call("fhirmigrate")  # new urns this time; the existing creates are found by key
    assert code == 0, err
    check_links(fhir)
    assert call("fhirdowngrade")[0] == 0
    assert fhir.patients() == [] and observations(fhir) == []
