"""The executor, against a scripted connection: what it runs, records, reports and refuses.

No server: the state reads as the test scripts it, every state write is answered with what was
sent (`echo_write`), and the tests assert on the order of events, on which scripts ran (each
appends its name to a log file) and on the heads and applied lists the executor wrote.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from django_fhir_migrations.engine.audit import Actor
from django_fhir_migrations.engine.clock import isoformat, utcnow
from django_fhir_migrations.engine.config import ScriptLocation, Settings
from django_fhir_migrations.engine.errors import LockError, MigrationFailedError, RevisionError
from django_fhir_migrations.engine.events import EventStream
from django_fhir_migrations.engine.executor import MigrationExecutor
from django_fhir_migrations.engine.loader import MigrationLoader
from django_fhir_migrations.engine.state import (
    APPLIED_EXTENSION,
    ATTEMPT_EXTENSION,
    LOCK_EXTENSION,
    AttemptRecord,
    LockInfo,
)
from tests.support.fake_connection import (
    BASE_URL,
    FakeConnection,
    each_entry,
    echo_write,
    found,
    searchset,
    state_resource,
    status,
)

STATE = "unit"


class World:
    """A scripts folder whose scripts log what they run, an executor over it, its events."""

    def __init__(self, scripts, tmp_path: Path, **settings):
        self.scripts = scripts
        self.log = tmp_path / "ran.log"
        self.connection = FakeConnection()
        self.events: list = []
        self.settings = Settings(base_url=BASE_URL, locations=(ScriptLocation(scripts.path, "dir"),),
                                 state_id=STATE, audit_events=False, lock_timeout=2, lock_ttl=60,
                                 signing_keys=("unit-test-signing-key",),
                                 **settings)

    def add(self, name: str, *, upgrade: str = "", downgrade: str = "") -> str:
        return self.scripts.add(
            name, header=f"LOG = {str(self.log)!r}",
            upgrade=f"open(LOG, 'a').write('up {name}\\n')\n{upgrade}",
            downgrade=f"open(LOG, 'a').write('down {name}\\n')\n{downgrade}")

    @property
    def ran(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @property
    def executor(self) -> MigrationExecutor:
        return MigrationExecutor(self.settings, MigrationLoader(self.settings.locations), self.connection,
                                 events=EventStream([self.events.append]),
                                 actor=Actor("tester", "unit-host", 1, "test", "tests"))

    def state_reads(self, *answers) -> None:
        self.connection.on("GET", r"Basic", *answers)

    def writes_succeed(self) -> None:
        """The If-Match proof is refused (as it must be), every state write is accepted."""
        self.connection.on("PUT", r"Basic/1", status(412), echo_write(first_version=4))

    def actions(self) -> list[str]:
        return [e.action + (f" {script.name}" if (script := getattr(e, "script", None)) else "")
                for e in self.events]

    def state_writes(self) -> list[dict]:
        """The bodies of the state writes after the lease was taken (proof and lease excluded)."""
        return [c.json for c in self.connection.sent("PUT", r"Basic/1")[2:]]


def head_of(body: dict) -> str:
    return body["code"]["coding"][0]["code"]


def lease_in(body: dict) -> bool:
    return any(e["url"] == LOCK_EXTENSION for e in body.get("extension") or [])


def attempts_in(body: dict) -> list[str]:
    """The revisions of the attempt records in a state body."""
    return [p["valueString"] for e in body.get("extension") or [] if e["url"] == ATTEMPT_EXTENSION
            for p in e["extension"] if p["url"] == "revision"]


def applied_in(body: dict) -> list[str]:
    return [p["valueString"] for e in body.get("extension") or [] if e["url"] == APPLIED_EXTENSION
            for p in e["extension"] if p["url"] == "revision"]


def state(head: str | None = None, *, holder: str | None = None, version: str = "3"):
    now = utcnow()
    extensions = []
    if holder:
        extensions.append(LockInfo(token=holder, host="web-2", pid=99, user="bob", started_at=isoformat(now),
                                   ttl=60, renewed_at=isoformat(now)).to_extension())
    return found(state_resource(STATE, head, version=version, extensions=extensions,
                                last_updated=isoformat(now - timedelta(seconds=1))),
                 date=format_datetime(now, usegmt=True))


@pytest.fixture
def world(scripts, tmp_path):
    return World(scripts, tmp_path)


# --- planning ------------------------------------------------------------------------------------


def test_nothing_pending_costs_exactly_one_request_and_takes_no_lock(world):
    world.add("first")
    head = world.add("second")
    world.state_reads(state(head))

    outcome = world.executor.migrate()
    assert outcome.done == [] and outcome.exit_code == 0
    assert world.connection.summary() == ["GET Basic"]
    assert world.actions() == ["nothing_to_do"]
    assert world.ran == []


def test_check_reports_pending_migrations_with_exit_code_1_and_changes_nothing(world):
    first = world.add("first")
    world.add("second")
    world.state_reads(state(first))

    outcome = world.executor.migrate(check=True)
    assert outcome.exit_code == 1 and [s.name for s in outcome.pending] == ["second"]
    assert world.connection.summary() == ["GET Basic"]


# --- applying ------------------------------------------------------------------------------------


def test_pending_migrations_run_in_order_each_recorded_after_it_ran(world):
    a, b, c = world.add("first"), world.add("second"), world.add("third")
    world.state_reads(state(a))  # the seed tool's form: its head alone
    world.writes_succeed()

    outcome = world.executor.migrate()
    assert [s.name for s in outcome.done] == ["second", "third"]
    assert world.ran == ["up second", "up third"]
    record_b, record_c = world.state_writes()
    assert (head_of(record_b), applied_in(record_b)) == (b, [a, b])
    assert lease_in(record_b) and attempts_in(record_b) == [c]  # opens the next one's attempt
    # The last record is the write that releases the lease: one request for both.
    assert (head_of(record_c), applied_in(record_c)) == (c, [a, b, c])
    assert not lease_in(record_c) and attempts_in(record_c) == []
    # read, the If-Match proof, the lease (with b's attempt), b's record, c's record + release
    assert world.connection.summary() == ["GET Basic"] + ["PUT Basic/1"] * 4


def test_events_are_emitted_in_the_order_things_happen(world):
    world.add("first")
    world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()

    world.executor.migrate()
    assert world.actions() == ["run_start", "apply_start first", "apply_success first",
                               "apply_start second", "apply_success second", "run_done"]
    done = world.events[-1]
    assert [s.name for s in done.scripts] == ["first", "second"] and done.duration >= 0
    assert all(e.duration is not None for e in world.events if e.action == "apply_success")


def test_a_failing_migration_stops_the_run_and_is_not_recorded(world):
    a = world.add("first")
    b = world.add("second", upgrade="raise ValueError('bad data in row 7')")
    world.add("third")
    world.state_reads(state(None))
    world.writes_succeed()

    with pytest.raises(MigrationFailedError) as caught:
        world.executor.migrate()
    error = caught.value
    assert (error.revision, error.direction, type(error.error)) == (b, "upgrade", ValueError)
    assert "bad data in row 7" in str(error) and "second" in str(error)
    assert world.ran == ["up first", "up second"]  # third never ran
    assert world.actions() == ["run_start", "apply_start first", "apply_success first", "apply_start second",
                              "apply_failed second"]
    record_a, release = world.state_writes()
    assert (head_of(record_a), applied_in(record_a)) == (a, [a])
    assert (head_of(release), applied_in(release)) == (a, [a])  # the lease goes, the head stays


def test_a_runtime_error_names_the_scripts_own_file_line_and_text(world):
    world.add("typo", upgrade="for patient in ctx.serch('Patient'):\n    pass")
    world.state_reads(state(None))
    world.writes_succeed()

    with pytest.raises(MigrationFailedError) as caught:
        world.executor.migrate()
    error = caught.value
    path = world.scripts.path / "typo.py"
    line = path.read_text().splitlines().index("    for patient in ctx.serch('Patient'):") + 1
    assert (error.frame.path, error.frame.line, error.frame.function) == (str(path), line, "upgrade")
    assert f"(at {path}:{line} in upgrade(): for patient in ctx.serch('Patient'):)" in str(error)
    assert "no attribute 'serch'. Did you mean: 'search'?" in str(error)
    assert "\n" not in str(error)  # one paragraph


def test_sys_exit_in_a_script_is_a_failed_migration_not_an_exit(world):
    world.add("first", upgrade="import sys\nsys.exit(3)")
    world.state_reads(state(None))
    world.writes_succeed()

    with pytest.raises(MigrationFailedError) as caught:
        world.executor.migrate()
    assert isinstance(caught.value.error, SystemExit)
    assert "sys.exit()" in str(caught.value)
    [release] = world.state_writes()
    assert head_of(release) == "None"


def test_plus_one_applies_only_the_next_migration(world):
    a = world.add("first")
    world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()

    outcome = world.executor.migrate("+1")
    assert [s.revision for s in outcome.done] == [a]
    assert world.ran == ["up first"]


def test_a_relative_target_with_the_wrong_sign_is_refused_before_any_request(world):
    world.add("first")
    with pytest.raises(RevisionError, match="relative target for downgrade"):
        world.executor.migrate("-1")
    with pytest.raises(RevisionError, match="relative target for migrate"):
        world.executor.downgrade("+1")
    assert world.connection.calls == []


def test_a_replica_that_waited_for_the_lock_finds_the_work_done_and_runs_nothing(world):
    a = world.add("first")
    b = world.add("second")
    world.state_reads(state(a, holder="theirs"), state(b, version="5"))
    world.writes_succeed()

    outcome = world.executor.migrate()
    assert outcome.done == [] and world.ran == []
    assert world.actions() == ["lock_wait", "nothing_to_do"]
    assert world.events[-1].reason == "another_process"
    [release] = world.state_writes()
    assert head_of(release) == b


# --- with PROVENANCE: the attempt ------------------------------------------------------------------


def test_a_migrations_first_write_goes_out_after_its_attempt_is_recorded(world):
    patient = "{'resourceType': 'Patient', 'id': 'p1', 'meta': {'versionId': '2'}}"
    rev = world.add("first", upgrade=f"ctx.update({patient})")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("POST", r"", each_entry("200 OK"))

    world.executor.migrate()
    summary = world.connection.summary()
    # read, the If-Match proof, the lease with the attempt, the data, the record + release
    assert summary == ["GET Basic", "PUT Basic/1", "PUT Basic/1", "POST (base)", "PUT Basic/1"]
    _, started, recorded = [c.json for c in world.connection.sent("PUT", r"Basic/1")]
    assert lease_in(started) and attempts_in(started) == [rev]  # recorded before the first write
    assert not lease_in(recorded)
    [attempt] = [e for e in started["extension"] if e["url"] == ATTEMPT_EXTENSION]
    attempt_id = next(p["valueString"] for p in attempt["extension"] if p["url"] == "attempt")
    [transaction] = world.connection.sent("POST")
    assert [e["request"]["method"] for e in transaction.entries] == ["PUT", "POST"]
    provenance = transaction.entries[1]["resource"]
    assert {"system": "http://fhir.migration.system/migration-attempt", "code": attempt_id} in provenance["meta"]["tag"]
    assert provenance["target"][0]["reference"] == "Patient/p1/_history/3"
    assert applied_in(recorded) == [rev]
    assert not any(e["url"] == ATTEMPT_EXTENSION for e in recorded["extension"])  # complete: it goes
    [entry] = [e for e in recorded["extension"] if e["url"] == APPLIED_EXTENSION]
    assert {"url": "attempt", "valueString": attempt_id} in entry["extension"]


def test_a_migration_that_fails_after_writing_leaves_its_attempt_and_error_for_the_next_run(world):
    patient = "{'resourceType': 'Patient', 'id': 'p1', 'meta': {'versionId': '2'}}"
    world.add("first", upgrade=f"ctx.update({patient})\nraise RuntimeError('halfway')")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("POST", r"", each_entry("200 OK"))

    with pytest.raises(MigrationFailedError):
        world.executor.migrate()
    # The error is recorded by the write that releases the lease.
    [release] = world.state_writes()
    [attempt] = [e for e in release["extension"] if e["url"] == ATTEMPT_EXTENSION]  # kept for the resume
    parts = {p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in attempt["extension"]}
    assert parts["written"] == 1 and "RuntimeError: halfway" in parts["error"]
    assert head_of(release) == "None" and applied_in(release) == [] and not lease_in(release)


def test_a_migration_that_fails_before_writing_leaves_no_attempt(world):
    world.add("first", upgrade="raise RuntimeError('before any write')")
    world.state_reads(state(None))
    world.writes_succeed()

    with pytest.raises(MigrationFailedError):
        world.executor.migrate()
    _, lease, release = [c.json for c in world.connection.sent("PUT", r"Basic/1")]
    assert attempts_in(lease) != []  # opened with the lease ...
    assert attempts_in(release) == [] and not lease_in(release)  # ... and taken out with it


def test_an_interrupted_attempt_opened_again_with_the_lease_continues_it(world):
    rev = world.add("first", upgrade="raise RuntimeError('again')")
    interrupted = AttemptRecord(revision=rev, direction="upgrade", attempts=("old-1",),
                                started_at=isoformat(utcnow()), written=7)
    world.state_reads(found(state_resource(STATE, None, version="3", extensions=[interrupted.to_extension()],
                                           last_updated=isoformat(utcnow() - timedelta(seconds=1))),
                            date=format_datetime(utcnow(), usegmt=True)))
    world.writes_succeed()
    world.connection.on("GET", r"Provenance", searchset())  # what old-1 wrote: nothing found

    with pytest.raises(MigrationFailedError):
        world.executor.migrate()
    _, lease, release = [c.json for c in world.connection.sent("PUT", r"Basic/1")]
    [opened] = [AttemptRecord.from_extension(e) for e in lease["extension"] if e["url"] == ATTEMPT_EXTENSION]
    assert opened.attempts[0] == "old-1" and len(opened.attempts) == 2 and opened.written == 7
    # It wrote nothing: the release puts the interrupted attempts' record back as it was.
    [kept] = [AttemptRecord.from_extension(e) for e in release["extension"] if e["url"] == ATTEMPT_EXTENSION]
    assert kept.attempts == ("old-1",) and kept.written == 7


# --- downgrading ---------------------------------------------------------------------------------


def test_minus_one_reverts_only_the_last_migration(world):
    world.add("first")
    b = world.add("second")
    c = world.add("third")
    world.state_reads(state(c))
    world.writes_succeed()

    outcome = world.executor.downgrade("-1")
    assert [s.revision for s in outcome.done] == [c]
    assert world.ran == ["down third"]
    [release] = world.state_writes()  # the record of the downgrade releases the lease
    assert head_of(release) == b and c not in applied_in(release) and not lease_in(release)


def test_a_downgrade_whose_plan_changed_while_waiting_for_the_lock_reverts_nothing(world):
    world.add("first")
    b = world.add("second")
    c = world.add("third")
    # Asked to revert "one step" (third); meanwhile someone else reverted third.
    world.state_reads(state(c, holder="theirs"), state(b, version="6"))
    world.writes_succeed()

    with pytest.raises(LockError, match="changed while this process waited"):
        world.executor.downgrade()
    assert world.ran == []
    assert world.actions() == ["lock_wait"]
    [release] = world.state_writes()
    assert head_of(release) == b


# --- runs that change no data ------------------------------------------------------------------


def test_a_dry_run_runs_the_scripts_with_every_write_intercepted_and_takes_no_lock(world):
    patient = "{'resourceType': 'Patient', 'id': 'p1', 'meta': {'versionId': '2'}, 'active': True}"
    world.add("first", upgrade=f"ctx.update({patient})")
    world.state_reads(state(None))

    outcome = world.executor.migrate(dry_run=True)
    assert [s.name for s in outcome.pending] == ["first"]
    assert world.connection.summary() == ["GET Basic"]
    assert world.ran == ["up first"]
    assert world.actions() == ["dry_run_start", "dry_run_script first", "write_intercepted first",
                               "dry_run_done first"]
    assert world.events[2].request.startswith("PUT Patient/p1")
    assert world.connection.session.intercept is None  # handed back after the script


def test_fake_records_the_migrations_without_running_them(world):
    a, b = world.add("first"), world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("GET", r"Provenance", searchset())  # no earlier application to adopt

    outcome = world.executor.migrate(fake=True)
    assert [s.name for s in outcome.done] == ["first", "second"] and world.ran == []
    adopted = [e for e in world.events if e.action == "adopted"]
    assert [e.attempts for e in adopted] == [0, 0]
    assert all("the server holds no record of its writes" in e.why for e in adopted)
    _, recorded = world.state_writes()
    assert applied_in(recorded) == [a, b] and not lease_in(recorded)
    fakes = [p for e in recorded["extension"] if e["url"] == APPLIED_EXTENSION for p in e["extension"]
             if p["url"] == "fake"]
    assert fakes == [{"url": "fake", "valueBoolean": True}] * 2


# --- the AuditEvent rides with the record ------------------------------------------------------


def committing_state(call) -> dict:
    """A transaction-response to a state write with more entries: the state as written, and
    AuditEvent/77 for each AuditEvent."""
    results = []
    for entry in call.entries:
        if entry["request"]["method"] == "PUT":
            results.append({"response": {"status": "200 OK", "location": "Basic/1/_history/9"},
                            "resource": dict(entry["resource"], id="1", meta={"versionId": "9"})})
        else:
            results.append({"response": {"status": "201 Created", "location": "AuditEvent/77/_history/1"}})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": results}


def audited(world: World) -> MigrationExecutor:
    world.settings = replace(world.settings, audit_events=True)
    return world.executor


def test_each_record_carries_its_audit_event_and_the_last_one_releases_the_lease(world):
    a, b = world.add("first"), world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("POST", r"", committing_state)
    executor = audited(world)

    executor.migrate()
    # read, the If-Match proof, the lease (with first's attempt), two records: 5 requests
    assert world.connection.summary() == ["GET Basic", "PUT Basic/1", "PUT Basic/1", "POST (base)", "POST (base)"]
    first, second = world.connection.sent("POST", r"")
    for transaction, revision in ((first, a), (second, b)):
        state_entry, event = transaction.entries
        assert (state_entry["request"]["method"], state_entry["request"]["url"]) == ("PUT", "Basic/1")
        assert state_entry["request"]["ifMatch"].startswith('W/"')
        assert event["request"] == {"method": "POST", "url": "AuditEvent"}
        assert event["resource"]["subtype"][0]["code"] == "applied"
        assert {"type": "revision", "valueString": revision} in event["resource"]["entity"][0]["detail"]
    assert lease_in(first.entries[0]["resource"]) and not lease_in(second.entries[0]["resource"])
    assert applied_in(second.entries[0]["resource"]) == [a, b]
    assert executor.audit.written == ["77", "77"]


def test_an_audit_event_the_server_refuses_never_stops_the_record(world):
    a, b = world.add("first"), world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("POST", r"", status(403, "AuditEvent: create not allowed"))
    world.connection.on("POST", r"AuditEvent", status(403, "AuditEvent: create not allowed"))
    executor = audited(world)

    outcome = executor.migrate()
    assert [s.revision for s in outcome.done] == [a, b]
    # The refused transaction wrote nothing; the record is written alone, then the AuditEvent is
    # tried alone (and refused: a warning); the second record does not try the transaction again.
    assert world.connection.summary() == ["GET Basic", "PUT Basic/1", "PUT Basic/1", "POST (base)",
                                          "PUT Basic/1", "POST AuditEvent", "PUT Basic/1", "POST AuditEvent"]
    record_a, record_b = world.state_writes()
    assert applied_in(record_a) == [a] and applied_in(record_b) == [a, b] and not lease_in(record_b)


def test_a_server_that_keeps_no_audit_events_is_asked_once_per_run(world):
    a, b = world.add("first"), world.add("second")
    world.state_reads(state(None))
    world.writes_succeed()
    world.connection.on("POST", r"", status(405, "Method POST not allowed on AuditEvent"))
    executor = audited(world)

    outcome = executor.migrate()
    assert [s.revision for s in outcome.done] == [a, b]
    # 405 is a policy (Helios), not a passing fault: no AuditEvent is sent alone after the
    # refused transaction, and none is built for the rest of the run.
    assert world.connection.summary() == ["GET Basic", "PUT Basic/1", "PUT Basic/1", "POST (base)",
                                          "PUT Basic/1", "PUT Basic/1"]
    assert "405" in executor.audit.refused
