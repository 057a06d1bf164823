"""RFC 6902 JSON Patch applied by the tool (for servers that take none inside a bundle), and the
journal's fallback to version-aware PUTs when a server answers such a bundle with 501."""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine import jsonpatch
from django_fhir_migrations.engine.journal import JSON_PATCH_IN_BUNDLE, Journal
from django_fhir_migrations.engine.provenance import Writer
from django_fhir_migrations.engine.signing import Signer
from django_fhir_migrations.engine.writes import Write
from tests.support.fake_connection import FakeConnection, each_entry, status

PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
           "identifier": [{"system": "urn:a", "value": "1"}], "name": [{"family": "Old"}]}


def test_every_operation_of_rfc_6902_applies_to_a_copy():
    patched = jsonpatch.apply(PATIENT, [
        {"op": "test", "path": "/name/0/family", "value": "Old"},
        {"op": "replace", "path": "/name/0/family", "value": "New"},
        {"op": "add", "path": "/identifier/-", "value": {"system": "urn:b", "value": "2"}},
        {"op": "add", "path": "/active", "value": True},
        {"op": "copy", "from": "/identifier/0", "path": "/identifier/0"},
        {"op": "remove", "path": "/identifier/1"},
        {"op": "move", "from": "/active", "path": "/x~1y"},
    ])
    assert patched["name"] == [{"family": "New"}]
    assert patched["identifier"] == [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}]
    assert patched["x/y"] is True and "active" not in patched
    assert PATIENT["name"] == [{"family": "Old"}]  # the original is untouched


@pytest.mark.parametrize("operations", [
    [{"op": "test", "path": "/name/0/family", "value": "Other"}],
    [{"op": "remove", "path": "/birthDate"}],
    [{"op": "add", "path": "/identifier/5", "value": {}}],
    [{"op": "frobnicate", "path": "/a"}],
    [{"op": "replace", "path": "/name/0/family"}],
    [{"op": "add", "path": "", "value": []}],
])
def test_a_patch_that_does_not_apply_says_why(operations):
    with pytest.raises(jsonpatch.JsonPatchError):
        jsonpatch.apply(PATIENT, operations)


def test_a_bundle_refused_with_501_for_its_json_patch_is_sent_again_as_version_aware_puts():
    connection = FakeConnection()
    writer = Writer(attempt="a1", revision="r1", name="m", person="t", command="test",
                    signer=Signer(["unit-key"]))
    sent = []

    def bundle(call):
        entries = call.entries
        if any(e["resource"].get("resourceType") == "Binary" for e in entries if "resource" in e):
            return status(501, "Binary JSON Patch in R4 Bundle is not implemented")
        sent.append(entries)
        return each_entry()(call)

    connection.on("POST", r"", lambda call: {"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"resource": PATIENT, "response": {"status": "200 OK"}}]} if call.json["type"] == "batch" else bundle(call))
    journal = Journal(connection, writer)
    patch = Write("PATCH", "Patient", "p1", body=[{"op": "replace", "path": "/name/0/family", "value": "New"}],
                  version="3", check_version=True)
    [result] = journal.send([patch], atomic=True)
    assert result.ok
    assert connection.capabilities[JSON_PATCH_IN_BUNDLE] is False
    [entries] = sent
    put = entries[0]
    assert put["request"] == {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"3"'}
    assert put["resource"]["name"] == [{"family": "New"}]
    provenance = entries[1]["resource"]
    assert provenance["target"][0]["reference"] == "Patient/p1/_history/4"

    # Learned: the next JSON Patch goes as a PUT at once, and a stale version fails as the server would.
    stale = Write("PATCH", "Patient", "p1", body=[{"op": "add", "path": "/active", "value": True}],
                  version="2", check_version=True)
    [result] = journal.send([stale], atomic=False)
    assert result.code == "412" and len(sent) == 1
