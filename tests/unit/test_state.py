"""The attempt record's bulk job fields survive the state's round trip, and are checked."""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine.state import AttemptRecord


def record(**fields) -> AttemptRecord:
    return AttemptRecord("a" * 32, "upgrade", ("w1", "w2"), started_at="2026-12-07T10:00:00Z", **fields)


def test_a_job_names_its_call_and_finished_jobs_are_kept_in_order():
    before = record(job="http://fhir.example/fhir/$hapi.fhir.bulk-patch-poll-status?_jobId=x",
                    job_started="2026-12-07T10:00:01Z", job_call=2, jobs_done=("1:12",))
    after = AttemptRecord.from_extension(before.to_extension())
    assert (after.job, after.job_call, after.jobs_done) == (before.job, 2, ("1:12",))
    assert AttemptRecord.from_extension(record(jobs_done=("1:12", "2:30")).to_extension()).jobs_done == (
        "1:12", "2:30")


def test_a_record_from_before_calls_were_counted_names_no_call():
    old = record(job="http://fhir.example/fhir/status", job_started="2026-12-07T10:00:01Z").to_extension()
    old["extension"] = [p for p in old["extension"] if p["url"] != "jobCall"]
    assert AttemptRecord.from_extension(old).job_call == 0


@pytest.mark.parametrize("done", ["1", "x:3", "1:2:3", "-1:4", "1:" + "9" * 20])
def test_a_finished_job_that_is_not_call_and_count_is_refused(done):
    extension = record(jobs_done=("1:12",)).to_extension()
    for part in extension["extension"]:
        if part["url"] == "jobDone":
            part["valueString"] = done
    with pytest.raises(ValueError, match="jobDone"):
        AttemptRecord.from_extension(extension)
