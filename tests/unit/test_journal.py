"""The journal and bundles, against a scripted connection: what goes out in which bundle, what is
skipped, how a refused bundle is split, and what an error says (never a resource's fields).

No server: each bundle POST is answered by the test (one response per entry, or a refusal),
and the tests count and read the bundles the journal sent.
"""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.context import MigrationContext
from django_fhir_migrations.engine.errors import (
    BundleError,
    FhirServerError,
    ServerUnreachableError,
    UntrustedResponseError,
)
from django_fhir_migrations.engine.journal import TRANSACTION_SEMANTICS_HEADER, Journal, MissingKeyError
from django_fhir_migrations.engine.provenance import (
    ATTEMPT_TAG,
    PREVIOUS_VERSION,
    RESULTING_VERSION,
    TARGET_VERSIONS,
    Target,
    Writer,
    parse,
    signed_content,
)
from django_fhir_migrations.engine.signing import Signer
from django_fhir_migrations.engine.writes import EXISTS, SKIPPED, Write
from tests.support.fake_connection import (
    BASE_URL,
    Call,
    FakeConnection,
    each_entry,
    outcome,
    searchset,
    status,
)

SIGNER = Signer(["unit-test-signing-key"])
WRITER = Writer(attempt="att-2", revision="r1", name="first", person="tester@unit (pid 1)", command="test",
                signer=SIGNER)
SECRET_NAME, SECRET_MRN = "Zebediah-Secretname", "MRN-0042-1977"


def patient(pid: str | None = None, version: str | None = "2", *, mrn: str | None = None) -> dict:
    resource = {"resourceType": "Patient", "name": [{"family": SECRET_NAME}], "birthDate": "1977-03-04"}
    if pid:
        resource["id"] = pid
    if version:
        resource["meta"] = {"versionId": version}
    if mrn:
        resource["identifier"] = [{"system": "urn:mrn", "value": mrn}]
    return resource


def update(pid: str, version: str = "2") -> Write:
    return Write("PUT", "Patient", pid, body=patient(pid, version), version=version)


def create(value: str) -> Write:
    return Write("POST", "Patient", body=patient(None, None, mrn=value), key=f"identifier=urn:mrn|{value}")


def writes_in(call: Call) -> list[str]:
    """The entries of a sent bundle other than Provenance, as METHOD url."""
    return [f"{e['request']['method']} {e['request']['url']}" for e in call.entries
            if e["request"]["url"] != "Provenance"]


def provenances_in(call: Call) -> list[dict]:
    return [e["resource"] for e in call.entries if e["request"]["url"] == "Provenance"]


def refusing(bad: str, code: int = 422, detail: str = "Patient.gender: unknown code"):
    """A server that refuses a transaction holding `bad` (Type/id) and commits any other."""
    commit = each_entry()

    def answer(call: Call):
        if any(e["request"]["url"] == bad for e in call.entries):
            return status(code, detail)
        return commit(call)

    return answer


def context(connection: FakeConnection, journal: Journal | None = None, **settings) -> MigrationContext:
    ctx = MigrationContext(connection, Settings(base_url=BASE_URL, **settings))
    if journal is not None:
        ctx.journal = journal
    return ctx


# --- PROVENANCE on: one transaction with its Provenance --------------------------------------------


def test_a_batch_goes_out_as_one_transaction_with_its_provenance():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset())  # no create's key exists yet
    connection.on("POST", r"", each_entry())
    journal = Journal(connection, WRITER)

    results = journal.send([update("p1", "2"), update("p2", "5"), create("A-1")], atomic=False)
    assert [r.status for r in results] == ["200 OK", "200 OK", "201 Created"]
    assert connection.summary() == ["POST Patient/_search", "POST (base)"]
    [bundle] = connection.sent("POST", r"")
    assert bundle.json["type"] == "transaction" and bundle.idempotent is False
    assert writes_in(bundle) == ["PUT Patient/p1", "PUT Patient/p2", "POST Patient"]
    assert bundle.entries[0]["request"]["ifMatch"] == 'W/"2"'
    assert bundle.entries[2]["request"]["ifNoneExist"] == "identifier=urn:mrn|A-1"
    updated, created = provenances_in(bundle)
    assert updated["activity"]["coding"][0]["code"] == "UPDATE"
    assert [t["reference"] for t in updated["target"]] == ["Patient/p1/_history/3", "Patient/p2/_history/6"]
    # The versions of every target in one extension (previous>resulting), none on the targets.
    assert {"url": TARGET_VERSIONS, "valueString": "2>3 5>6"} in updated["extension"]
    assert all("extension" not in t for t in updated["target"])
    assert {"system": ATTEMPT_TAG, "code": "att-2"} in updated["meta"]["tag"]
    assert created["activity"]["coding"][0]["code"] == "CREATE"
    assert created["target"][0]["reference"] == bundle.entries[2]["fullUrl"]  # the urn the server resolves
    assert (journal.written, journal.bundles, journal.committed_whole) == (3, 1, 1)


def test_the_attempt_is_recorded_once_before_the_first_bundle_leaves():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry())
    seen = []
    journal = Journal(connection, WRITER, on_start=lambda: seen.append(connection.request_count))
    journal.send([update("p1")], atomic=True)
    journal.send([update("p2")], atomic=True)
    assert seen == [0]


def test_a_refused_transaction_is_split_in_halves_until_the_failing_entry_is_isolated():
    connection = FakeConnection()
    connection.on("POST", r"", refusing("Patient/p5"))
    journal = Journal(connection, WRITER)

    results = journal.send([update(f"p{i}") for i in range(8)], atomic=False)
    bundles = connection.sent("POST", r"")
    assert [len(writes_in(b)) for b in bundles] == [8, 4, 4, 2, 1, 1, 2]  # 2 log2(8) + 1 requests
    assert all(len(provenances_in(b)) == 1 for b in bundles)  # each with its own Provenance
    failed = [r for r in results if not r.ok]
    assert [(r.write.ref, r.code, r.diagnostics) for r in failed] == [
        ("Patient/p5", "422", "Patient.gender: unknown code")]
    assert sum(r.ok for r in results) == 7 and journal.written == 7
    assert journal.committed_whole == 0


@pytest.mark.parametrize("refusal", [status(503, "busy"), status(429),
                                     ServerUnreachableError("connection refused", url=BASE_URL)],
                         ids=["503", "429", "unreachable"])
def test_a_refusal_by_the_server_rather_than_an_entry_is_not_split(refusal):
    connection = FakeConnection()
    connection.on("POST", r"", refusal)
    with pytest.raises(FhirServerError):
        Journal(connection, WRITER).send([update(f"p{i}") for i in range(8)], atomic=False)
    assert connection.request_count == 1


def test_a_refused_transaction_written_atomically_raises_and_is_not_split():
    connection = FakeConnection()
    connection.on("POST", r"", refusing("Patient/p1", code=412, detail="version conflict"))
    with pytest.raises(FhirServerError) as caught:
        Journal(connection, WRITER).send([update("p0"), update("p1")], atomic=True)
    assert caught.value.status == 412
    assert connection.request_count == 1


def test_a_create_without_a_key_is_refused_before_anything_is_sent():
    connection = FakeConnection()
    keyless = Write("POST", "Patient", body=patient(None, None))
    with pytest.raises(MissingKeyError, match="idempotency key"):
        Journal(connection, WRITER).send([update("p1"), keyless], atomic=False)
    assert connection.calls == []


def test_creates_whose_key_already_finds_a_resource_are_answered_exists_and_not_sent():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset(
        {"resourceType": "Patient", "id": "77", "identifier": [{"system": "urn:mrn", "value": "A-1"}]}))
    connection.on("POST", r"", each_entry())
    journal = Journal(connection, WRITER)

    existing, new = journal.send([create("A-1"), create("B-2")], atomic=False)
    assert (existing.status, existing.location) == (EXISTS, "Patient/77")
    assert new.status == "201 Created"
    [search] = connection.sent("POST", r"Patient/_search")
    assert search.data["identifier"] == "urn:mrn|A-1,urn:mrn|B-2"
    [bundle] = connection.sent("POST", r"")
    assert writes_in(bundle) == ["POST Patient"]
    assert bundle.entries[0]["request"]["ifNoneExist"] == "identifier=urn:mrn|B-2"
    assert (journal.skipped, journal.written) == (1, 1)


def test_a_resumed_journal_skips_what_its_interrupted_attempts_wrote_by_their_own_signed_records():
    connection = FakeConnection()
    earlier = Writer(attempt="att-1", revision="r1", name="first", person="tester", command="test",
                     signer=SIGNER)
    forger = Writer(attempt="att-1", revision="r1", name="first", person="tester", command="test",
                    signer=Signer(["not-the-projects-key"]))
    connection.on("GET", r"Provenance", searchset(
        earlier.provenance("UPDATE", [Target("Patient", "p1", "3", "2")]),
        forger.provenance("UPDATE", [Target("Patient", "p2", "3", "2")])))
    connection.on("POST", r"", each_entry())
    journal = Journal(connection, WRITER, previous=("att-1",))

    results = journal.send([update("p1"), update("p2")], atomic=False)
    assert [r.status for r in results] == [SKIPPED, "200 OK"]  # the forged record changes nothing
    [lookup] = connection.sent("GET", r"Provenance")
    assert lookup.params["_tag"] == f"{ATTEMPT_TAG}|att-1"
    assert "target" not in lookup.params  # targets are matched here, not by the server's search
    [bundle] = connection.sent("POST", r"")
    assert writes_in(bundle) == ["PUT Patient/p2"]
    assert journal.skipped == 1
    assert journal.index is not None and journal.index.ignored_count == 1

    journal.send([update("p2", "3")], atomic=True)  # the index is built once
    assert len(connection.sent("GET", r"Provenance")) == 1


def test_versions_the_script_did_not_read_are_looked_up_in_one_search():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset(
        {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "4"}},
        {"resourceType": "Patient", "id": "p2", "meta": {"versionId": "9"}}))
    connection.on("POST", r"", each_entry())
    unread = [Write("PUT", "Patient", pid, body=patient(pid, None)) for pid in ("p1", "p2")]

    Journal(connection, WRITER).send(unread, atomic=True)
    [lookup] = connection.sent("POST", r"Patient/_search")
    assert lookup.data["_id"] == "p1,p2"
    [bundle] = connection.sent("POST", r"")
    assert [e["request"].get("ifMatch") for e in bundle.entries[:2]] == ['W/"4"', 'W/"9"']


def test_writes_whose_next_version_cannot_be_predicted_get_their_provenance_after():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry())
    connection.on("POST", r"Provenance", each_entry())
    odd = Write("PUT", "Patient", "p1", body=patient("p1", "v-abc"), version="v-abc")

    Journal(connection, WRITER, integer_versions=False).send([odd], atomic=True)
    assert connection.summary() == ["POST (base)", "POST Provenance"]
    assert provenances_in(connection.calls[0]) == []
    assert connection.calls[1].json["target"][0]["reference"].startswith("Patient/p1")


@pytest.mark.parametrize("atomic", [True, False], ids=["transaction", "batch"])
def test_a_response_with_fewer_entries_than_sent_is_not_trusted(atomic):
    connection = FakeConnection()
    connection.on("POST", r"", each_entry(drop=1))
    with pytest.raises(UntrustedResponseError, match="answered with 2 entries for the 3 sent"):
        Journal(connection, WRITER).send([update("p1"), update("p2")], atomic=atomic)


def test_a_response_that_is_not_a_transaction_response_is_not_trusted():
    connection = FakeConnection()
    connection.on("POST", r"", {"resourceType": "OperationOutcome"})
    with pytest.raises(UntrustedResponseError, match="not a transaction-response"):
        Journal(connection, WRITER).send([update("p1")], atomic=True)


# --- PROVENANCE off: plain bundles -------------------------------------------------------------


def test_without_provenance_a_batch_is_one_plain_batch_bundle_tried_as_a_transaction_first():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry(kind="batch"))
    ctx = context(connection, provenance=False)
    with ctx.batch() as batch:
        batch.update(patient("p1"))
        batch.create(patient(None, None, mrn="A-1"))
    [bundle] = connection.calls
    assert bundle.json["type"] == "batch"
    assert bundle.headers[TRANSACTION_SEMANTICS_HEADER].startswith("retryCount=1")
    assert writes_in(bundle) == ["PUT Patient/p1", "POST Patient"] and provenances_in(bundle) == []
    assert batch.committed == 2


def test_without_provenance_nothing_is_looked_up_or_skipped():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry())
    journal = Journal(connection, previous=("att-1",))
    results = journal.send([update("p1"), Write("POST", "Patient", body=patient(None, None))], atomic=True)
    assert [r.status for r in results] == ["200 OK", "201 Created"]
    assert connection.summary() == ["POST (base)"]


def test_without_provenance_a_short_batch_response_is_not_trusted():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry(kind="batch", drop=1))
    with pytest.raises(UntrustedResponseError):
        Journal(connection).send([update("p1"), update("p2")], atomic=False)


# --- what errors say -----------------------------------------------------------------------------


def batch_refusing_entries(code: str, detail: str, *bad: str):
    """A batch-response refusing the entries whose request URL is in `bad` ("Patient": a create)."""

    def answer(call: Call) -> dict:
        results = []
        for entry in call.entries:
            url = entry["request"]["url"]
            if url in bad:
                results.append({"response": {"status": code, "outcome": outcome(detail)}})
            else:
                results.append({"response": {"status": "200 OK", "location": url}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": results}

    return answer


def test_a_batch_error_gives_counts_and_type_ids_never_resource_fields():
    connection = FakeConnection()
    connection.on("POST", r"", batch_refusing_entries("422 Unprocessable Entity", "invalid birthDate",
                                                      "Patient/p1", "Patient/p2", "Patient"))
    ctx = context(connection, provenance=False)
    with pytest.raises(BundleError) as caught:
        with ctx.batch() as batch:
            for pid in ("p1", "p2", "p3"):
                batch.update(patient(pid))
            batch.create(patient(None, None, mrn=SECRET_MRN))
    error = caught.value
    assert (error.kind, error.count) == ("batch", 3)
    assert error.failures == [("422", 3, "invalid birthDate", ["Patient/p1", "Patient/p2", "Patient (new)"])]
    message = str(error)
    assert message.startswith("batch bundle: 3 entries failed: 3 x 422: invalid birthDate")
    assert "Patient/p1, Patient/p2, Patient (new)" in message
    for field_value in (SECRET_NAME, SECRET_MRN, "1977-03-04", "urn:mrn"):
        assert field_value not in message
    assert batch.committed == 1


def test_a_refused_transaction_bundle_says_what_earlier_bundles_committed():
    connection = FakeConnection()
    connection.on("POST", r"", refusing("Patient/p3", detail="Patient.birthDate: bad value"))
    ctx = context(connection, Journal(connection, WRITER))
    with pytest.raises(BundleError) as caught:
        with ctx.transaction(size=2) as transaction:
            for pid in ("p0", "p1", "p2", "p3", "p4"):
                transaction.update(patient(pid))
    error = caught.value
    assert (error.kind, error.count) == ("transaction", 2)
    assert error.failures == [("422", 2, "Patient.birthDate: bad value", ["Patient/p2", "Patient/p3"])]
    message = str(error)
    assert "2 entries in 1 earlier bundle were committed" in message
    assert SECRET_NAME not in message and "1977-03-04" not in message
    assert len(connection.sent("POST", r"")) == 2  # the fifth entry was never sent


def committing_with_provenance(create_status: str = "201 Created", create_version: str = "1"):
    """A transaction-response, its creates answered `create_status` at `create_version`
    (without the resources: bundles do not ask for them)."""

    def answer(call: Call) -> dict:
        results = []
        for number, entry in enumerate(call.entries, start=50):
            request = entry["request"]
            if request["url"] == "Provenance":
                results.append({"response": {"status": "201 Created",
                                             "location": f"Provenance/{number}/_history/1"}})
            elif request["method"] == "POST":
                results.append({"response": {"status": create_status,
                                             "location": f"Patient/{number}/_history/{create_version}"}})
            else:
                results.append({"response": {"status": "200 OK", "location": f"{request['url']}/_history/3"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": results}

    return answer


def test_created_resources_cost_no_request_after_the_transaction_where_versions_are_numbers():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset())
    connection.on("POST", r"", committing_with_provenance())

    journal = Journal(connection, WRITER)
    journal.send([create("A-1"), update("p1")], atomic=True)
    assert connection.summary() == ["POST Patient/_search", "POST (base)"]
    [transaction] = connection.sent("POST", r"")
    assert "Prefer" not in transaction.headers  # a bundle does not ask the resources back
    created = next(e["resource"] for e in transaction.entries
                   if e["request"]["url"] == "Provenance" and "CREATE" in str(e["resource"]["activity"]))
    [target] = created["target"]
    assert target["reference"].startswith("urn:uuid:")  # the server resolves it to Patient/<id>
    assert {"url": TARGET_VERSIONS, "valueString": ">1"} in created["extension"]
    # Signed over the key and the version, not the id the server chooses: valid as committed.
    assert SIGNER.verify(signed_content(created) or b"", created["signature"][0]["data"])
    assert journal.written == 2


def test_an_unpredicted_version_of_a_create_is_written_into_its_provenance_after_the_transaction():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset())
    connection.on("POST", r"", committing_with_provenance(create_version="7"))
    connection.on("PUT", r"Provenance/\d+", {"resourceType": "Provenance"})

    Journal(connection, WRITER).send([create("A-1"), update("p1")], atomic=True)
    [fix] = connection.sent("PUT")
    assert fix.path == "Provenance/52" and fix.headers["If-Match"] == 'W/"1"'
    assert [t["reference"] for t in fix.json["target"]] == ["Patient/50/_history/7"]
    assert fix.json["activity"]["coding"][0]["code"] == "CREATE"
    assert SIGNER.verify(signed_content(fix.json) or b"", fix.json["signature"][0]["data"])


def test_a_single_write_asks_for_the_written_resource():
    connection = FakeConnection()
    connection.on("POST", r"", committing_with_provenance())
    Journal(connection, WRITER).send([update("p1")], atomic=True, representation=True)
    [transaction] = connection.sent("POST")
    assert transaction.headers["Prefer"] == "return=representation"


def test_a_create_the_server_found_existing_is_not_claimed_by_the_provenance():
    connection = FakeConnection()
    connection.on("POST", r"Patient/_search", searchset())  # not there when looked up...
    connection.on("POST", r"", committing_with_provenance("200 OK"))  # ...there when created
    connection.on("DELETE", r"Provenance/\d+", {"resourceType": "OperationOutcome"})
    journal = Journal(connection, WRITER)

    [result] = journal.send([create("A-1")], atomic=True)
    assert result.status == EXISTS and journal.written == 0
    assert connection.summary()[-1] == "DELETE Provenance/51"


def test_failures_that_differ_only_in_the_resource_they_name_are_one_group():
    connection = FakeConnection()

    def missing_subject(call):
        return {"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "400 Bad Request", "outcome": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing",
                 "diagnostics": f"HAPI-1094: Resource Patient/p{i}/_history/2 not found, specified in path: "
                                "Observation.subject"}]}}}
            for i in range(len(call.json["entry"]))]}

    connection.on("POST", r"", missing_subject)
    ctx = context(connection, provenance=False)
    with pytest.raises(BundleError) as caught:
        with ctx.batch() as batch:
            for i in range(5):
                batch.create({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": f"Patient/p{i}"}})
    assert caught.value.failures == [
        ("400", 5, "HAPI-1094: Resource Patient/… not found, specified in path: Observation.subject",
         ["Observation (new)"] * 3)]


def test_records_in_the_earlier_form_with_versions_on_each_target_are_still_read_and_trusted():
    genuine = WRITER.provenance("UPDATE", [Target("Patient", "p1", "3", "2"), Target("Patient", "p2", "6", "5")])
    earlier = dict(genuine, extension=[e for e in genuine["extension"] if e["url"] != TARGET_VERSIONS],
                   target=[{"reference": f"Patient/{pid}/_history/{new}",
                            "extension": [{"url": RESULTING_VERSION, "valueString": new},
                                          {"url": PREVIOUS_VERSION, "valueString": old}]}
                           for pid, old, new in (("p1", "2", "3"), ("p2", "5", "6"))])
    for record in (genuine, earlier):
        found = parse(dict(record, id="9"), SIGNER)
        assert found is not None and found.trusted  # the same facts, the same signature
        assert [(t.ref, t.previous, t.version) for t in found.targets] == [("Patient/p1", "2", "3"),
                                                                            ("Patient/p2", "5", "6")]


def test_target_versions_that_do_not_match_the_targets_are_not_trusted():
    genuine = WRITER.provenance("UPDATE", [Target("Patient", "p1", "3", "2"), Target("Patient", "p2", "6", "5")])
    for packed in ("2>3", "2>3 5>6 7>8", "2>3 5-6", "2>3 5>7"):
        changed = dict(genuine, id="9", extension=[
            dict(e, valueString=packed) if e["url"] == TARGET_VERSIONS else e for e in genuine["extension"]])
        found = parse(changed, SIGNER)
        assert found is not None and not found.trusted, packed
