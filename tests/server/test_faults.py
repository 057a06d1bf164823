"""Faults between the tool and the server: what is safe is retried, nothing is recorded that did
not finish, nothing is recorded twice, and giving up is explained."""

from __future__ import annotations

import time

import pytest

from ..support.fault_proxy import Fault, FaultProxy
from ..support.helpers import call

STATE_READ = r"^/Basic\?identifier="
STATE_WRITE = r"^/Basic/[^/?]+$"
# A ctx write is a transaction (the write and its Provenance) posted to the base URL.
CTX_WRITE = r"^/?$"


@pytest.fixture
def proxy(fhir_base_url):
    running = FaultProxy(fhir_base_url).start()
    yield running
    running.stop()


@pytest.fixture
def via_proxy(fhir_settings, settings, proxy):
    settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, RETRIES=3, TIMEOUT=5)
    return proxy


def add_creates(scripts, fhir, *names):
    return [scripts.add(n, upgrade=f"ctx.create({fhir.patient_code(n)})") for n in names]


def values(fhir):
    return sorted(p["identifier"][0]["value"] for p in fhir.patients())


def test_503_with_retry_after_on_the_state_read_is_retried(via_proxy, fhir, scripts):
    add_creates(scripts, fhir, "one")
    via_proxy.add(Fault("GET", STATE_READ, "status", times=2, status=503, retry_after="1"))
    started = time.monotonic()
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert time.monotonic() - started >= 2  # Retry-After was honoured, twice
    assert via_proxy.count("GET", STATE_READ, "status") == 2
    assert values(fhir) == ["one"] and len(fhir.applied()) == 1


def test_429_on_a_create_is_retried_because_it_was_not_processed(via_proxy, fhir, scripts):
    add_creates(scripts, fhir, "one")
    via_proxy.add(Fault("POST", CTX_WRITE, "status", status=429, retry_after="1"))
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    # The create's transaction twice (refused with 429, then sent again), then the record of the
    # migration (a transaction too: the state write with its AuditEvent).
    assert via_proxy.count("POST", CTX_WRITE, "status") == 1
    assert via_proxy.count("POST", CTX_WRITE) == 3
    assert values(fhir) == ["one"]


def applied_events(fhir, revision: str) -> list[dict]:
    return [e for e in fhir.audit_events() if e["subtype"][0]["code"] == "applied"
            and {"type": "revision", "valueString": revision} in e["entity"][0].get("detail", [])]


@pytest.mark.parametrize("lost", ["the record of the first", "the record of the last, which releases the lease"])
def test_lost_answer_to_the_state_write_still_records_exactly_once(lost, via_proxy, fhir, scripts):
    revisions = add_creates(scripts, fhir, "one", "two")
    # Posted to the base URL, in order: one's create, one's record (the state write with its
    # AuditEvent, opening two's attempt), two's create, two's record (which releases the lease).
    # The server stores the record; its answer is lost; the repeat is refused (If-Match), and
    # the state read again already holds it: nothing is written twice, the AuditEvent included.
    # Where the server keeps no AuditEvents (Helios) the first record's transaction is refused
    # (405) and every record is the state's own PUT after the lease's: the lost answer is a PUT's.
    first = lost.startswith("the record of the first")
    if fhir.keeps_audit_events:
        fault = Fault("POST", CTX_WRITE, "drop-response", skip=1 if first else 3)
    else:
        fault = Fault("PUT", STATE_WRITE, "drop-response", skip=1 if first else 2)
    via_proxy.add(fault)
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert via_proxy.count(fault.method, fault.path, "drop-response") == 1
    assert fhir.applied() == revisions
    assert values(fhir) == ["one", "two"]
    if fhir.keeps_audit_events:
        assert [len(applied_events(fhir, r)) for r in revisions] == [1, 1]
    assert "migration-lock" not in str(fhir.state())


def test_lost_answer_to_taking_the_lock_is_recognised_as_our_own(via_proxy, fhir, scripts):
    add_creates(scripts, fhir, "one")
    assert call("fhirmigrate")[0] == 0
    add_creates(scripts, fhir, "two")
    via_proxy.add(Fault("PUT", STATE_WRITE, "drop-response"))
    code, _, err = call("fhirmigrate", "--lock-timeout", "3")
    assert code == 0, err
    assert values(fhir) == ["one", "two"] and len(fhir.applied()) == 2


def test_lost_answer_to_a_create_is_not_retried_and_not_recorded(via_proxy, fhir, scripts):
    add_creates(scripts, fhir, "one")
    via_proxy.add(Fault("POST", CTX_WRITE, "drop-response"))
    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "one" in err and "was not recorded" in err and "Traceback" not in err
    assert via_proxy.count("POST", CTX_WRITE) == 1  # never sent twice
    assert fhir.applied() == []
    state = fhir.state()
    assert not any(e["url"].endswith("/migration-lock") for e in state.get("extension", []))


def test_dropped_and_slow_reads_mid_migration_are_retried(via_proxy, fhir, scripts, settings):
    settings.FHIR_MIGRATIONS = dict(settings.FHIR_MIGRATIONS, TIMEOUT=1, PAGE_SIZE=2)
    for i in range(5):
        fhir.http.post(fhir.url("Patient"), json=eval(fhir.patient_code(f"seed{i}")),  # noqa: S307
                       headers={"Content-Type": "application/fhir+json"}, timeout=30)
    scripts.add("walk", upgrade=(
        f"seen = [p['id'] for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True)]\n"
        "assert len(seen) == 5, seen"
    ))
    via_proxy.add(Fault("GET", "", "drop-request", page=True),  # the first next-page read
                  Fault("GET", r"^/Patient\?", "delay", delay=2.5))
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert via_proxy.count("GET", "", "drop-request", page=True) == 1
    assert via_proxy.count("GET", r"^/Patient\?", "delay") == 1
    assert len(fhir.applied()) == 1


def test_a_server_that_keeps_failing_ends_with_a_clear_message(via_proxy, fhir, scripts):
    add_creates(scripts, fhir, "one")
    via_proxy.add(Fault("GET", STATE_READ, "status", times=-1, status=503, retry_after="0"))
    started = time.monotonic()
    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "503" in err and "Traceback" not in err
    assert time.monotonic() - started < 30
    assert via_proxy.count("GET", STATE_READ) == 4  # the first try and RETRIES=3
    assert values(fhir) == [] and fhir.state() is None


def test_failure_mid_run_keeps_what_finished_and_records_nothing_else(via_proxy, fhir, scripts):
    first, _, _ = add_creates(scripts, fhir, "one", "two", "three")
    # "two"'s create keeps answering 503: retried, then given up; "three" never runs.
    via_proxy.add(Fault("POST", CTX_WRITE, "status", skip=1, times=-1, status=503, retry_after="0"))
    code, _, err = call("fhirmigrate")
    assert code == 1 and "two" in err
    assert fhir.applied() == [first]
    assert values(fhir) == ["one"]


def test_a_server_that_is_down_fails_fast(offline_settings, settings, scripts):
    settings.FHIR_MIGRATIONS = dict(offline_settings, RETRIES=3)
    scripts.add("one", upgrade="ctx.create({'resourceType': 'Patient', 'identifier': "
                               "[{'system': 'urn:x', 'value': 'one'}]})")
    started = time.monotonic()
    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "Cannot reach the FHIR server" in err and "connection refused" in err
    assert time.monotonic() - started < 15
