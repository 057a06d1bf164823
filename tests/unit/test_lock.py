"""The lease, against a scripted connection: taking it, waiting for it, fencing, proving If-Match.

No server: each test scripts what the state reads as and how each write is answered, then
asserts on the requests the lock sent (If-Match, the lease in the body) and what it raised.
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import pytest

from django_fhir_migrations.engine.clock import isoformat, utcnow
from django_fhir_migrations.engine.errors import (
    LeaseLostError,
    LockTimeoutError,
    VersionCheckNotEnforcedError,
)
from django_fhir_migrations.engine.lock import MigrationLock
from django_fhir_migrations.engine.recorder import StateRecorder
from django_fhir_migrations.engine.state import LOCK_EXTENSION, LockInfo
from tests.support.fake_connection import (
    FakeConnection,
    echo_write,
    found,
    reply,
    state_resource,
    status,
)

STATE = "unit"


def lease(token: str, *, ttl: int = 60) -> dict:
    now = isoformat(utcnow())
    return LockInfo(token=token, host="web-2", pid=99, user="bob", started_at=now, ttl=ttl,
                    renewed_at=now, command="fhirmigrate").to_extension()


def state(*, token: str | None = None, written_ago: float = 0, version: str = "3", head: str = "r1"):
    """The state's search result: held by `token` (if given), last written `written_ago`
    seconds before the server's Date."""
    now = utcnow()
    resource = state_resource(STATE, head, version=version,
                              extensions=[lease(token)] if token else [],
                              last_updated=isoformat(now - timedelta(seconds=written_ago)))
    return found(resource, date=format_datetime(now, usegmt=True))


def lease_in(body: dict) -> dict | None:
    ext = next((e for e in body.get("extension") or [] if e["url"] == LOCK_EXTENSION), None)
    return {p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in ext["extension"]} if ext else None


def new_lock(connection: FakeConnection, *, token: str | None = None, on_wait=None) -> MigrationLock:
    lock = MigrationLock(StateRecorder(connection, STATE), ttl=60, command="test", user="me", on_wait=on_wait)
    if token:
        lock.token = token
    return lock


def acquire(connection: FakeConnection, lock: MigrationLock, timeout: float = 1.0):
    return lock.acquire(lock.recorder.read(), timeout)


# --- taking it -----------------------------------------------------------------------------------


def test_a_free_state_is_taken_after_proving_if_match_and_released_with_a_fenced_write():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state())
    connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=4))
    lock = new_lock(connection)

    held = acquire(connection, lock)
    assert held.lock.token == lock.token and held.version_id == "4"
    proof, take = connection.sent("PUT")
    assert proof.headers["If-Match"] == 'W/"2"' and set(proof.allow) == {409, 412}
    assert lease_in(proof.json) is None  # the proof rewrites the state as read
    assert take.headers["If-Match"] == 'W/"3"'
    assert lease_in(take.json)["token"] == lock.token and lease_in(take.json)["user"] == "me"

    lock.release()
    release = connection.calls[-1]
    assert (release.method, release.headers["If-Match"]) == ("PUT", 'W/"4"')
    assert lease_in(release.json) is None
    assert lock.lost == "released"
    assert connection.summary() == ["GET Basic", "PUT Basic/1", "PUT Basic/1", "PUT Basic/1"]


def test_a_missing_state_is_created_with_the_lease_by_a_conditional_create():
    connection = FakeConnection()
    connection.on("GET", r"Basic", found())
    connection.on("POST", r"Basic", echo_write(first_version=1))
    connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=2))
    lock = new_lock(connection)

    held = acquire(connection, lock)
    assert held.exists and held.lock.token == lock.token
    [create] = connection.sent("POST")
    assert create.headers["If-None-Exist"] == f"identifier=http://fhir.migration.system|{STATE}"
    assert lease_in(create.json)["token"] == lock.token
    [proof] = connection.sent("PUT")
    assert proof.headers["If-Match"] == 'W/"0"'
    lock.release()


def test_a_live_lease_is_waited_for_then_the_wait_times_out_naming_its_holder():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state(token="theirs"))
    waits = []
    lock = new_lock(connection, on_wait=waits.append)

    with pytest.raises(LockTimeoutError) as caught:
        acquire(connection, lock, timeout=0.2)
    assert caught.value.exit_code == 3
    assert "bob@web-2 (pid 99" in caught.value.holder and "bob@web-2" in str(caught.value)
    assert [w.token for w in waits] == ["theirs"]  # announced once, not at every poll
    assert connection.sent("PUT") == [] and connection.sent("POST") == []
    rereads = connection.sent("GET")[1:]
    assert rereads and all(c.params["_id"] == "1" for c in rereads)


def test_an_expired_lease_is_taken_over():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state(token="theirs", written_ago=300))
    connection.on("PUT", r"Basic/1", status(409), echo_write(first_version=4))
    lock = new_lock(connection)

    held = acquire(connection, lock)
    assert held.lock.token == lock.token
    take = connection.sent("PUT")[-1]
    assert take.headers["If-Match"] == 'W/"3"' and lease_in(take.json)["token"] == lock.token
    lock.release()


def test_a_lease_freed_while_waiting_is_taken():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state(token="theirs"), state(token="theirs"), state(version="5"))
    connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=6))
    lock = new_lock(connection)

    held = acquire(connection, lock, timeout=2)
    assert held.lock.token == lock.token
    assert connection.sent("PUT")[-1].headers["If-Match"] == 'W/"5"'
    lock.release()


def test_our_own_lease_found_on_the_state_is_held_after_proving_if_match_only():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state(token="mine"))
    lock = new_lock(connection, token="mine")  # our earlier write landed; its answer was lost
    connection.once("PUT", r"Basic/1", status(412))  # the If-Match proof, refused as it must be
    held = acquire(connection, lock)
    assert held.lock.token == "mine"
    assert connection.summary() == ["GET Basic", "PUT Basic/1"]  # no lease write
    connection.on("PUT", r"Basic/1", echo_write(first_version=4))
    lock.release()
    assert connection.summary() == ["GET Basic", "PUT Basic/1", "PUT Basic/1"]


# --- proving that the server enforces If-Match -------------------------------------------------


def test_a_server_that_accepts_a_stale_if_match_is_refused_before_the_lease_is_written():
    connection = FakeConnection()
    connection.on("GET", r"Basic", state())
    connection.on("PUT", r"Basic/1", reply(None, code=200))
    lock = new_lock(connection)

    with pytest.raises(VersionCheckNotEnforcedError) as caught:
        acquire(connection, lock)
    assert caught.value.state_id == STATE and caught.value.base_url == connection.base_url
    assert connection.summary() == ["GET Basic", "PUT Basic/1"]  # the proof, and no lease


def test_a_state_created_on_such_a_server_has_its_lease_taken_off_again():
    connection = FakeConnection()
    connection.on("GET", r"Basic", found())
    connection.on("POST", r"Basic", echo_write(first_version=1))
    connection.once("PUT", r"Basic/1", reply(None, code=200))  # the proof: stale If-Match accepted
    connection.on("PUT", r"Basic/1", echo_write(first_version=2))
    lock = new_lock(connection)

    with pytest.raises(VersionCheckNotEnforcedError):
        acquire(connection, lock)
    assert lease_in(connection.calls[-1].json) is None
    assert connection.summary() == ["GET Basic", "POST Basic", "PUT Basic/1", "PUT Basic/1"]


@pytest.mark.parametrize("code", [409, 412])
def test_a_server_that_refuses_a_stale_if_match_proves_the_check(code):
    connection = FakeConnection()
    connection.on("GET", r"Basic", state())
    connection.on("PUT", r"Basic/1", status(code), echo_write(first_version=4))
    lock = new_lock(connection)
    acquire(connection, lock)
    assert lock.version_check_proven
    lock.release()


# --- fencing ------------------------------------------------------------------------------------


def held_lock(connection: FakeConnection, token: str = "mine") -> MigrationLock:
    """A lock that took a free state (version 3 -> 4)."""
    connection.once("GET", r"Basic", state())
    connection.once("PUT", r"Basic/1", status(412))
    connection.once("PUT", r"Basic/1", echo_write(first_version=4))
    lock = new_lock(connection, token=token)
    acquire(connection, lock)
    return lock


def test_a_refused_write_is_reapplied_when_the_reread_shows_our_own_lease():
    connection = FakeConnection()
    lock = held_lock(connection)
    connection.once("PUT", r"Basic/1", status(412))  # our previous write landed, its answer was lost
    connection.once("GET", r"Basic", state(token="mine", version="6", head="r1"))
    connection.on("PUT", r"Basic/1", echo_write(first_version=7))

    written = lock.update(lambda s: s.with_applied([], "r2"))
    assert written.head == "r2" and written.version_id == "7"
    refused, reapplied = connection.sent("PUT")[-2:]
    assert refused.headers["If-Match"] == 'W/"4"'
    assert reapplied.headers["If-Match"] == 'W/"6"'
    assert reapplied.json["code"]["coding"][0]["code"] == "r2"
    assert lease_in(reapplied.json)["token"] == "mine"
    lock.release()


def test_a_refused_lease_write_rereads_and_gives_up_when_another_holder_has_it():
    connection = FakeConnection()
    lock = held_lock(connection)
    connection.once("PUT", r"Basic/1", status(412))
    connection.on("GET", r"Basic", state(token="theirs", version="9"))

    with pytest.raises(LeaseLostError) as caught:
        lock.update(lambda s: s.with_applied([], "r2"))
    assert "bob@web-2" in caught.value.detail
    puts = len(connection.sent("PUT"))
    with pytest.raises(LeaseLostError):
        lock.check()
    lock.release()  # a lost lease is not released: nothing more is written
    assert len(connection.sent("PUT")) == puts
    assert connection.calls[-1].method == "GET"


def test_a_lease_broken_by_someone_else_is_lost_too():
    connection = FakeConnection()
    lock = held_lock(connection)
    connection.once("PUT", r"Basic/1", status(412))
    connection.on("GET", r"Basic", state(version="9"))
    with pytest.raises(LeaseLostError, match="held by nobody"):
        lock.update(lambda s: s)


def test_a_state_that_keeps_changing_under_our_lease_stops_after_five_tries():
    connection = FakeConnection()
    lock = held_lock(connection)
    connection.on("PUT", r"Basic/1", status(412))
    connection.on("GET", r"Basic", state(token="mine", version="9"))
    with pytest.raises(LeaseLostError, match="kept changing"):
        lock.update(lambda s: s)
    assert len(connection.sent("PUT")) == 2 + 5


def test_a_lease_found_ours_after_a_repeated_create_still_proves_if_match():
    connection = FakeConnection()
    lock = new_lock(connection, token="mine")
    connection.once("GET", r"Basic", found())
    connection.on("POST", r"Basic", reply(None, code=200))  # "exists": the repeat of our own create
    connection.on("GET", r"Basic", state(token="mine", version="1"))
    connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=2))

    acquire(connection, lock)
    assert lock.version_check_proven
    assert [c.headers.get("If-Match") for c in connection.sent("PUT")][:1] == ['W/"0"']
    lock.release()
