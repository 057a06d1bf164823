"""Reading the state: what the recorder makes of the Basic resource the server returns.

No server: each test hands the recorder a crafted search result through the fake connection and
asserts on the MigrationState (or the CorruptStateError naming what is wrong).
"""

from __future__ import annotations

from email.utils import format_datetime

import pytest

from django_fhir_migrations.engine.clock import utcnow
from django_fhir_migrations.engine.errors import CorruptStateError
from django_fhir_migrations.engine.recorder import StateRecorder
from django_fhir_migrations.engine.state import (
    APPLIED_EXTENSION,
    ATTEMPT_EXTENSION,
    COUNT_EXTENSION,
    LOCK_EXTENSION,
    RECORD_CODE,
    RECORD_SYSTEM,
    AppliedMigration,
)
from tests.support.fake_connection import FakeConnection, found, searchset, state_resource

STATE = "unit"


def applied(revision: str, **parts) -> dict:
    subs = [{"url": "revision", "valueString": revision},
            {"url": "name", "valueString": f"name_{revision}"},
            {"url": "appliedAt", "valueDateTime": "2026-01-02T03:04:05.000Z"},
            {"url": "durationMs", "valueInteger": 1200},
            {"url": "checksum", "valueString": "sha256:abc"},
            {"url": "appliedBy", "valueString": "ana@build (pid 7)"}]
    return {"url": APPLIED_EXTENSION, "extension": replaced(subs, parts)}


def lock(**parts) -> dict:
    subs = [{"url": "token", "valueString": "tok"},
            {"url": "host", "valueString": "web-1"},
            {"url": "pid", "valueInteger": 4242},
            {"url": "user", "valueString": "ana"},
            {"url": "command", "valueString": "fhirmigrate"},
            {"url": "startedAt", "valueDateTime": "2026-01-01T00:00:00.000Z"},
            {"url": "renewedAt", "valueDateTime": "2026-01-01T00:00:10.000Z"},
            {"url": "ttlSeconds", "valueInteger": 60}]
    return {"url": LOCK_EXTENSION, "extension": replaced(subs, parts)}


def attempt(revision: str, *ids: str, **parts) -> dict:
    subs = [{"url": "revision", "valueString": revision},
            {"url": "direction", "valueString": "upgrade"},
            *({"url": "attempt", "valueString": i} for i in ids),
            {"url": "startedAt", "valueDateTime": "2026-01-01T00:00:00.000Z"},
            {"url": "written", "valueInteger": 250},
            {"url": "error", "valueString": "KeyError: 'x'"}]
    return {"url": ATTEMPT_EXTENSION, "extension": replaced(subs, parts)}


def replaced(subs: list[dict], parts: dict) -> list[dict]:
    """Sub-extensions with `parts` (url -> {valueX: ...}) put in place of the usual ones."""
    out = [s for s in subs if s["url"] not in parts]
    return out + [dict(value, url=url) for url, value in parts.items()]


def count(n: int) -> dict:
    return {"url": COUNT_EXTENSION, "valueInteger": n}


def record(resource_id: str, revision: str, applied_at: str, state_resource_id: str = "1") -> dict:
    entry = AppliedMigration(revision=revision, name=revision, applied_at=applied_at)
    return dict(entry.to_record(STATE, state_resource_id), id=resource_id)


def read(*resources: dict, included: tuple = (), date: str | None = None, connection=None):
    connection = connection or FakeConnection()
    connection.on("GET", r"Basic", found(*resources, included=included, date=date))
    return StateRecorder(connection, STATE).read()


def corrupt(*extensions: dict) -> CorruptStateError:
    with pytest.raises(CorruptStateError) as caught:
        read(state_resource(STATE, "r1", extensions=list(extensions)))
    return caught.value


# --- what a good state reads as -----------------------------------------------------------------


def test_a_missing_state_reads_as_an_empty_one_in_one_request():
    connection = FakeConnection()
    state = read(connection=connection)
    assert (state.exists, state.head, state.applied, state.lock) == (False, None, [], None)
    [call] = connection.calls
    assert call.params == {"identifier": f"http://fhir.migration.system|{STATE}", "_revinclude": "Basic:subject"}


def test_a_seed_tool_state_reads_as_its_head_alone():
    state = read(state_resource(STATE, "3f2a9c", version="7"))
    assert state.exists and state.resource_id == "1"
    assert state.head == "3f2a9c"
    assert state.version_id == "7"
    assert (state.applied, state.lock, state.attempts, state.inline) == ([], None, [], False)


def test_the_seed_tools_none_head_is_no_head():
    assert read(state_resource(STATE, None)).head is None


def test_applied_extensions_read_in_order_with_every_field():
    state = read(state_resource(STATE, "r2", extensions=[
        count(2), applied("r1"), applied("r2", fake={"valueBoolean": True}, attempt={"valueString": "a1"})]))
    assert [a.revision for a in state.applied] == ["r1", "r2"]
    first = state.applied[0]
    assert (first.name, first.applied_at, first.duration_ms, first.checksum, first.applied_by, first.fake) == (
        "name_r1", "2026-01-02T03:04:05.000Z", 1200, "sha256:abc", "ana@build (pid 7)", False)
    assert state.applied[1].fake and state.applied[1].attempts == ("a1",)
    assert state.inline


def test_the_lock_reads_with_its_holder_and_ttl():
    state = read(state_resource(STATE, "r1", extensions=[lock()]))
    held = state.lock
    assert (held.token, held.host, held.pid, held.user, held.ttl) == ("tok", "web-1", 4242, "ana", 60.0)
    assert held.renewed_at == "2026-01-01T00:00:10.000Z"
    assert "ana@web-1 (pid 4242, fhirmigrate" in held.describe()


def test_a_lease_is_expired_only_by_the_servers_own_clock():
    written = "2026-01-01T00:00:00.000Z"
    server_now = utcnow().replace(year=2026, month=1, day=1, hour=0, minute=0, second=30)
    fresh = read(state_resource(STATE, "r1", extensions=[lock()], last_updated=written),
                 date=format_datetime(server_now, usegmt=True))
    assert not fresh.lock_expired()
    late = read(state_resource(STATE, "r1", extensions=[lock()], last_updated=written),
                date=format_datetime(server_now.replace(minute=5), usegmt=True))
    assert late.lock_expired()


def test_migration_attempt_records_read_with_their_progress():
    state = read(state_resource(STATE, "r1", extensions=[attempt("r2", "a1", "a2")]))
    [record_] = state.attempts
    assert (record_.revision, record_.direction, record_.attempts, record_.written) == ("r2", "upgrade",
                                                                                       ("a1", "a2"), 250)
    assert record_.current == "a2" and record_.previous == ("a1",)
    assert record_.error == "KeyError: 'x'"
    assert state.attempt_for("r2", "upgrade") is record_


def test_applied_records_beyond_the_inline_limit_are_read_from_the_included_resources():
    state = read(state_resource(STATE, "r2", extensions=[count(2)]), included=(
        record("11", "r2", "2026-01-03T00:00:00.000Z"), record("10", "r1", "2026-01-02T00:00:00.000Z")))
    assert [a.revision for a in state.applied] == ["r1", "r2"]  # by appliedAt
    assert state.records == {"r1": "10", "r2": "11"}
    assert not state.inline


# --- what the recorder refuses ------------------------------------------------------------------


def test_a_duration_sent_as_a_string_is_corrupt_and_named():
    error = corrupt(applied("r1", durationMs={"valueString": "1200"}))
    assert "durationMs" in error.problem and "str" in error.problem
    assert error.state_id == STATE and error.resource_url == "Basic/1"


@pytest.mark.parametrize("ttl", [{"valueString": "nan"}, {"valueDecimal": float("nan")},
                                 {"valueDecimal": float("inf")}, {"valueInteger": 0}],
                         ids=["string-nan", "decimal-nan", "infinite", "zero"])
def test_a_lease_ttl_that_is_not_a_finite_positive_number_is_corrupt_and_named(ttl):
    assert "ttlSeconds" in corrupt(lock(ttlSeconds=ttl)).problem


def test_a_negative_pid_is_corrupt_and_named():
    error = corrupt(lock(pid={"valueInteger": -1}))
    assert "pid" in error.problem and "-1" in error.problem


def test_a_boolean_where_a_number_belongs_is_corrupt():
    assert "written" in corrupt(attempt("r2", "a1", written={"valueBoolean": True})).problem


def test_an_attempt_without_a_direction_it_knows_is_corrupt():
    assert "direction" in corrupt(attempt("r2", "a1", direction={"valueString": "sideways"})).problem


def test_an_unreadable_date_is_corrupt_and_named():
    assert "appliedAt" in corrupt(applied("r1", appliedAt={"valueString": "yesterday"})).problem


def test_a_revision_listed_as_applied_twice_is_corrupt():
    assert "listed as applied twice" in corrupt(applied("r1"), applied("r1")).problem


def test_two_state_resources_with_the_same_identifier_are_corrupt_and_both_named():
    with pytest.raises(CorruptStateError) as caught:
        read(state_resource(STATE, "r1", resource_id="1"), state_resource(STATE, "r1", resource_id="2"))
    assert "Basic/1" in caught.value.problem and "Basic/2" in caught.value.problem


def test_a_state_without_a_head_coding_is_corrupt():
    resource = state_resource(STATE, "r1")
    resource["code"] = {"text": "no coding"}
    with pytest.raises(CorruptStateError, match="no code.coding"):
        read(resource)


def test_a_search_that_returns_no_bundle_is_corrupt():
    connection = FakeConnection()
    connection.on("GET", r"Basic", {"resourceType": "OperationOutcome"})
    with pytest.raises(CorruptStateError, match="did not return a Bundle"):
        StateRecorder(connection, STATE).read()


def test_an_applied_count_larger_than_the_records_found_pages_for_them_then_refuses():
    connection = FakeConnection()
    connection.on("GET", r"Basic",
                  found(state_resource(STATE, "r3", extensions=[count(3), applied("r1")])),
                  searchset())  # the page-by-page read of the records finds none either
    with pytest.raises(CorruptStateError) as caught:
        StateRecorder(connection, STATE).read()
    assert "counts 3 applied migration(s) but 1" in caught.value.problem
    second = connection.calls[1]
    assert second.params["subject"] == "Basic/1"
    assert second.params["code"] == f"{RECORD_SYSTEM}|{RECORD_CODE}"


def test_a_negative_applied_count_is_corrupt():
    assert "applied-count" in corrupt(count(-1)).problem


# --- what is shown of server text -----------------------------------------------------------------


def test_control_characters_are_stripped_from_every_text_read():
    state = read(state_resource(STATE, "r1", extensions=[
        applied("r1", appliedBy={"valueString": "ana\x1b[2J\x1b[31m@evil\r\n"}),
        lock(host={"valueString": "web\x07-1\x1b]0;pwned\x07"}, user={"valueString": "b\x00ob"}),
        attempt("r2", "a1", error={"valueString": "boom\x1b[1A\roverwritten"})]))
    assert state.applied[0].applied_by == "ana@evil"
    assert (state.lock.host, state.lock.user) == ("web-1", "bob")
    assert state.attempts[0].error == "boomoverwritten"
    texts = [state.applied[0].applied_by, state.lock.describe(), state.attempts[0].describe()]
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for text in texts for c in text)


def test_a_head_with_control_characters_is_refused_rather_than_cleaned():
    with pytest.raises(CorruptStateError, match="is not a revision id"):
        read(state_resource(STATE, "r1\x1b[31m"))


@pytest.mark.parametrize("date", ["Thu Jan  1 00:00:30 2026", "Thu, 01 Jan 2026 00:00:30 -0000"],
                         ids=["asctime", "minus-zero-zone"])
def test_a_date_header_in_any_http_date_form_judges_the_lease_as_gmt(date):
    state = read(state_resource(STATE, "r1", extensions=[lock()], last_updated="2026-01-01T00:00:00.000Z"),
                 date=date)
    assert state.lock_expired() is False
