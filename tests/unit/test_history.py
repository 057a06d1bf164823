"""fhirhistory's fallback for servers that keep no AuditEvents: the state's own record as lines
(pure logic; the end-to-end tests are in test_audit.py, test_admin.py and test_flask.py)."""

from __future__ import annotations

from django_fhir_migrations.engine.audit import HistoryReport, attempt_record, newest_first, state_events
from django_fhir_migrations.engine.state import AppliedMigration, AttemptRecord, MigrationState
from django_fhir_migrations.formatting import format_history


def state() -> MigrationState:
    return MigrationState(
        state_id="clinic",
        applied=[
            AppliedMigration("a" * 32, name="create_cohort", applied_at="2026-11-26T12:00:00Z",
                             duration_ms=1500, applied_by="deploy@web-1 (pid 7)", attempts=("x",)),
            AppliedMigration("b" * 32, name="add_mrn", applied_at="2026-11-27T08:30:00Z",
                             duration_ms=250, applied_by="deploy@web-2 (pid 9)", attempts=("y", "z")),
            AppliedMigration("c" * 32, name="seed_codes", applied_at="2026-11-27T09:00:00Z",
                             applied_by="ops@web-1 (pid 3)", fake=True),
        ],
        attempts=[AttemptRecord("d" * 32, "upgrade", ("w",), started_at="2026-11-28T10:00:00Z",
                                written=3200, updated_at="2026-11-28T10:05:00Z",
                                error="RuntimeError: row 7")],
    )


def test_state_events_are_newest_first_with_who_when_how_long_and_attempts():
    records = state_events(state(), 10)
    assert [r.event for r in records] == ["faked", "applied", "applied"]
    faked, add_mrn, cohort = records
    assert faked.success and faked.who == "ops@web-1 (pid 3)" and faked.duration is None
    assert add_mrn.script == "add_mrn" and add_mrn.duration == 0.25 and add_mrn.detail == "in 2 attempts"
    assert cohort.detail == "" and cohort.recorded is not None and cohort.recorded.day == 26
    assert [r.event for r in state_events(state(), 2)] == ["faked", "applied"]


def history_from_the_state() -> HistoryReport:
    unfinished = [attempt_record(a, None, running=False) for a in state().attempts]
    reason = "The server keeps no AuditEvents from clients (its CapabilityStatement offers no create)."
    return HistoryReport(newest_first(state_events(state(), 10) + unfinished), from_state=True, reason=reason)


def test_history_from_the_state_says_why_and_never_says_nothing_was_recorded():
    lines = format_history(history_from_the_state(), "clinic")
    text = [line for _, line in lines]
    assert text[1].startswith("  The server keeps no AuditEvents from clients") and lines[1][0] == "warning"
    assert "What the state itself records" in text[2]
    assert text[3].startswith(f"  2026-11-28 10:05:00  interrupted  {'d' * 12}  by ?")
    assert text[3].endswith("unfinished")
    assert "3,200 resource(s) written" in text[4] and "`migrate` resumes it" in text[4]
    assert text[5] == "      RuntimeError: row 7"
    assert text[7] == f"  2026-11-27 08:30:00  applied      add_mrn ({'b' * 12})  by deploy@web-2 (pid 9)  0.25s  ok"
    assert text[8] == "      in 2 attempts"
    assert "(nothing recorded yet)" not in "\n".join(text)


def test_an_empty_history_still_says_why_there_are_no_audit_events():
    lines = format_history(HistoryReport([], from_state=True, reason="The server keeps none."), "x")
    assert [line for _, line in lines][1:] == ["  The server keeps none.", "  (nothing recorded yet)"]
    assert [line for _, line in format_history(HistoryReport(), "x")][1:] == ["  (nothing recorded yet)"]
