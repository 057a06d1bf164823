"""ctx's writes in each sending mode, against a scripted connection: journaled (one transaction
with its Provenance), plain (PROVENANCE off: the requests the seed tool's scripts sent) and dry
run (nothing sent; each write reported as an event, the dry run's summary of fields changed)."""

from __future__ import annotations

import io

import pytest

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.context import MigrationContext
from django_fhir_migrations.engine.dryrun import resource_of
from django_fhir_migrations.engine.events import EventStream
from django_fhir_migrations.engine.journal import Journal, Mode
from django_fhir_migrations.engine.provenance import Writer
from django_fhir_migrations.engine.signing import Signer
from django_fhir_migrations.engine.throttle import Throttle
from tests.support.fake_connection import BASE_URL, FakeConnection, each_entry, reply, searchset

WRITER = Writer(attempt="att-1", revision="r1", name="first", person="tester@unit (pid 1)", command="test",
                signer=Signer(["unit-test-signing-key"]))


def patient(pid: str = "p1", version: str = "2", **fields) -> dict:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": version},
            "identifier": [{"system": "urn:mrn", "value": pid}], **fields}


def ctx_for(connection: FakeConnection, mode: Mode, *, events: list | None = None) -> MigrationContext:
    stream = EventStream([events.append]) if events is not None else None
    ctx = MigrationContext(connection, Settings(base_url=BASE_URL), dry_run=mode is Mode.DRY_RUN,
                           events=stream, stdout=io.StringIO())
    if mode is Mode.JOURNALED:
        ctx.journal = Journal(connection, WRITER)
    return ctx


def bundle_writes(connection: FakeConnection) -> list[str]:
    return [f"{e['request']['method']} {e['request']['url']}" for call in connection.sent("POST", "")
            for e in call.entries if e["request"]["url"] != "Provenance"]


def test_the_mode_is_chosen_once_from_the_writer_and_the_dry_run():
    connection = FakeConnection()
    assert ctx_for(connection, Mode.JOURNALED).journal.mode is Mode.JOURNALED
    assert ctx_for(connection, Mode.PLAIN).journal.mode is Mode.PLAIN
    dry = ctx_for(connection, Mode.DRY_RUN)
    assert dry.journal.mode is Mode.DRY_RUN and dry.dry_run
    with pytest.raises(ValueError):
        Journal(connection, WRITER, dry_run=dry.journal.dry_run)


# --- journaled: a transaction with its Provenance --------------------------------------------------


def test_a_journaled_update_is_one_transaction_with_its_provenance_and_returns_the_answer():
    connection = FakeConnection()
    written = patient(version="3", gender="other")
    connection.on("POST", r"", {"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "200 OK", "location": "Patient/p1/_history/3"}, "resource": written},
        {"response": {"status": "201 Created", "location": "Provenance/9/_history/1"}}]})
    ctx = ctx_for(connection, Mode.JOURNALED)
    result = ctx.update(patient(gender="other"))
    [call] = connection.sent()
    assert [e["request"]["url"] for e in call.entries] == ["Patient/p1", "Provenance"]
    assert call.entries[0]["request"]["ifMatch"] == 'W/"2"'
    assert call.headers.get("Prefer") == "return=representation"
    assert result["meta"]["versionId"] == "3"  # a dict asked, a dict back


def test_a_journaled_conditional_update_is_looked_up_and_written_by_id():
    connection = FakeConnection()
    connection.on("GET", r"Patient\?identifier=urn%3Amrn%7Cp1", searchset(patient(version="5")))
    connection.on("POST", r"", each_entry())
    ctx = ctx_for(connection, Mode.JOURNALED)
    ctx.conditional_update({"resourceType": "Patient", "gender": "male"}, {"identifier": "urn:mrn|p1"})
    [bundle] = connection.sent("POST", "")
    assert bundle_writes(connection) == ["PUT Patient/p1"]
    assert bundle.entries[0]["request"]["ifMatch"] == 'W/"5"'


def test_a_journaled_conditional_update_with_no_match_creates_keyed_by_the_query():
    connection = FakeConnection()
    connection.on("GET", r"Patient\?identifier=.*", searchset())
    connection.on("POST", r"Patient/_search", searchset())  # the key finds nothing yet
    connection.on("POST", r"", each_entry())
    ctx_for(connection, Mode.JOURNALED).conditional_update(
        {"resourceType": "Patient", "gender": "male"}, "identifier=urn:mrn|new")
    [bundle] = connection.sent("POST", "")
    assert bundle_writes(connection) == ["POST Patient"]
    assert bundle.entries[0]["request"]["ifNoneExist"] == "identifier=urn:mrn|new"


def test_a_journaled_conditional_update_refuses_more_than_one_match():
    connection = FakeConnection()
    connection.on("GET", r"Patient\?.*", searchset(patient("a"), patient("b")))
    with pytest.raises(ValueError, match="2 resources match"):
        ctx_for(connection, Mode.JOURNALED).conditional_update({"resourceType": "Patient"}, "name=x")
    assert connection.sent("POST") == []


def test_a_journaled_conditional_delete_deletes_each_match_by_id_in_one_transaction():
    connection = FakeConnection()
    connection.on("GET", r"Patient\?.*", searchset(patient("a"), patient("b")))
    connection.on("POST", r"Patient/_search", searchset(patient("a"), patient("b")))  # their versions
    connection.on("POST", r"", each_entry())
    ctx_for(connection, Mode.JOURNALED).conditional_delete("Patient", {"name": "x"})
    assert bundle_writes(connection) == ["DELETE Patient/a", "DELETE Patient/b"]
    assert len(connection.sent("POST", "")) == 1


# --- plain: PROVENANCE off -------------------------------------------------------------------------


def test_a_plain_update_is_one_version_aware_put_and_returns_the_answer():
    connection = FakeConnection()
    connection.on("PUT", r"Patient/p1", reply(patient(version="3", gender="other")))
    result = ctx_for(connection, Mode.PLAIN).update(patient(gender="other"))
    [call] = connection.sent()
    assert call.headers == {"If-Match": 'W/"2"'} and call.json["gender"] == "other"
    assert result["meta"]["versionId"] == "3"


def test_a_plain_patch_says_its_content_type_and_a_plain_create_its_key():
    connection = FakeConnection()
    connection.on("PATCH", r"Patient/p1", reply(None))
    connection.on("POST", r"Patient", reply({"resourceType": "OperationOutcome"}))
    ctx = ctx_for(connection, Mode.PLAIN)
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    assert ctx.patch("Patient", "p1", operations) is None
    new = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "n1"}]}
    assert ctx.create(new) is new  # an answer without the resource: what was asked for
    patch, create = connection.sent()
    assert patch.headers == {"Content-Type": "application/json-patch+json"}
    assert create.headers == {"If-None-Exist": "identifier=urn:mrn|n1"}


def test_plain_conditional_writes_are_left_to_the_server():
    connection = FakeConnection()
    connection.on("PUT", r"Patient\?name=x", reply(None))
    connection.on("DELETE", r"Patient\?name=x", reply(None))
    ctx = ctx_for(connection, Mode.PLAIN)
    ctx.conditional_update(patient(gender="male"), "name=x")
    ctx.conditional_delete("Patient", "name=x")
    put, delete = connection.sent()
    assert (put.method, delete.method) == ("PUT", "DELETE")
    assert "id" not in put.json and put.headers == {}


def test_a_plain_batch_is_one_batch_bundle():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry(kind="batch"))
    ctx = ctx_for(connection, Mode.PLAIN)
    with ctx.batch() as batch:
        batch.update(patient("a"))
        batch.update(patient("b"))
    [call] = connection.sent()
    assert call.json["type"] == "batch" and bundle_writes(connection) == ["PUT Patient/a", "PUT Patient/b"]
    assert batch.written == 2



def test_a_throttled_batch_sends_smaller_bundles_and_a_transaction_keeps_its_size():
    connection = FakeConnection()
    connection.on("POST", r"", each_entry())
    ctx = ctx_for(connection, Mode.PLAIN)
    ctx.journal.throttle = Throttle(max_rate=None, adaptive=True, workers=1)
    ctx.journal.throttle.level = 1  # a slow server: one worker (it has no other), bundles halved
    with ctx.batch(size=40) as batch:
        for number in range(50):
            batch.update(patient(f"b{number}"))
    with ctx.transaction(size=40) as transaction:  # what the script wants atomic stays together
        for number in range(50):
            transaction.update(patient(f"t{number}"))
    assert [(c.json["type"], len(c.entries)) for c in connection.sent("POST", "")] == [
        ("batch", 20), ("batch", 20), ("batch", 10), ("transaction", 40), ("transaction", 10)]

# --- dry run: nothing sent, every write reported --------------------------------------------------


def test_a_dry_run_sends_no_write_and_reports_each_with_its_facts():
    connection = FakeConnection()
    events: list = []
    ctx = ctx_for(connection, Mode.DRY_RUN, events=events)
    original = patient(gender="other")
    assert ctx.update(original) is original
    ctx.delete("Patient", "p2")
    ctx.conditional_delete("Patient", {"name": "x"})
    ctx.conditional_update(patient(), "name=y")
    assert connection.sent() == []
    facts = [(e.method, e.resource_type, e.resource_id) for e in events if e.action == "write_intercepted"]
    assert facts == [("PUT", "Patient", "p1"), ("DELETE", "Patient", "p2"), ("DELETE", "Patient", ""),
                     ("PUT", "Patient", "")]
    assert ctx.dry_run_writes[2] == ("DELETE", "Patient?name=x")


def test_a_dry_run_bundle_is_reported_as_its_header_then_its_writes_in_order():
    connection = FakeConnection()
    events: list = []
    ctx = ctx_for(connection, Mode.DRY_RUN, events=events)
    with ctx.batch(size=2, workers=4) as batch:  # reported in order, whatever WORKERS says
        for pid in "abc":
            batch.update(patient(pid))
    assert connection.sent() == []
    assert [(e.action, e.kind if e.action == "bundle_intercepted" else e.resource_id) for e in events] == [
        ("bundle_intercepted", "batch"), ("write_intercepted", "a"), ("write_intercepted", "b"),
        ("bundle_intercepted", "batch"), ("write_intercepted", "c")]
    assert batch.written == 0  # nothing landed on the server


def test_the_dry_run_summary_names_the_fields_an_update_changes_never_their_values():
    connection = FakeConnection()
    connection.on("GET", r"Patient/p1", reply(patient(gender="female", birthDate="1977-03-04")))
    events: list = []
    ctx = ctx_for(connection, Mode.DRY_RUN, events=events)
    found = ctx.read("Patient", "p1", as_dict=True)
    ctx.update(dict(found, gender="male", birthDate="1999-01-01", meta={"versionId": "2"}))
    ctx.update(dict(found))
    ctx.create({"resourceType": "Patient", "name": [{"family": "Secret"}],
                "identifier": [{"system": "urn:mrn", "value": "n"}]})
    ctx.patch("Patient", "p1", [{"op": "remove", "path": "/gender"}])
    details = [e.request for e in events if e.action == "write_intercepted"]
    assert details == ["PUT Patient/p1: changes birthDate, gender", "PUT Patient/p1: no changes",
                       "POST Patient: Patient with name, identifier", "PATCH Patient/p1 (1 patch operations)"]
    assert not any("1999" in d or "Secret" in d or "male" in d for d in details)


def test_a_ctx_made_on_its_own_prints_its_dry_run_writes():
    ctx = MigrationContext(FakeConnection(), Settings(base_url=BASE_URL), dry_run=True, stdout=io.StringIO())
    ctx.delete("Patient", "p1")
    assert ctx.stdout.getvalue() == "  [dry-run] DELETE Patient/p1\n"


def test_undo_needs_provenance_in_a_dry_run_and_a_plain_run_alike():
    from django_fhir_migrations.engine.errors import UndoError

    with pytest.raises(UndoError, match="PROVENANCE is off"):
        ctx_for(FakeConnection(), Mode.PLAIN).undo()
    dry = MigrationContext(FakeConnection(), Settings(base_url=BASE_URL, provenance=False), dry_run=True,
                           stdout=io.StringIO())
    with pytest.raises(UndoError, match="PROVENANCE is off"):
        dry.undo()
    # With PROVENANCE on a dry run reads and checks the records as a real undo does (the
    # server suite runs it); here there is no application to revert.
    with pytest.raises(UndoError, match="not recorded as applied"):
        ctx_for(FakeConnection(), Mode.DRY_RUN).undo()


@pytest.mark.parametrize(("path", "expected"), [
    ("Patient/123", ("Patient", "123")), ("/Patient/123/_history/2", ("Patient", "123")),
    ("Patient?identifier=x", ("Patient", "")), ("Patient/$everything", ("Patient", "")), ("", ("", "")),
])
def test_a_reported_path_names_its_type_and_id(path, expected):
    assert resource_of(path) == expected
