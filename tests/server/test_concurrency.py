"""Concurrent deploys, a holder killed mid-migration, and fencing of a holder that lost its lease."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.errors import LeaseLostError
from django_fhir_migrations.engine.fhir.client import FhirConnection
from django_fhir_migrations.engine.lock import MigrationLock
from django_fhir_migrations.engine.recorder import StateRecorder
from django_fhir_migrations.engine.state import AppliedMigration

from ..support.concurrency import run_together, start_command, write_creating_migrations


def env_for(fhir, scripts, **extra) -> dict[str, str]:
    env = {
        "FHIR_BASE_URL": fhir.base_url,
        "FHIR_MIGRATIONS_STATE_ID": fhir.state_id,
        "MIGRATION_SCRIPTS_DIR": str(scripts.path),
        "FHIR_MIGRATIONS_LOCK_TIMEOUT": "120",
        "FHIR_MIGRATIONS_LOCK_TTL": "10",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def check_round(fhir, revisions, results) -> None:
    """Exactly one Patient per migration, each revision recorded once, every process explained."""
    values = Counter(p["identifier"][0]["value"] for p in fhir.patients())
    assert values == Counter(f"p{i}" for i in range(len(revisions))), values
    assert fhir.applied() == revisions
    for result in results:
        assert result.returncode in (0, 3), result.stderr
        if result.returncode == 3:
            assert "Timed out" in result.stderr and "held by" in result.stderr
        assert "Traceback" not in result.stderr


def test_eight_replicas_migrating_at_once_apply_each_migration_once(fhir, scripts):
    revisions = write_creating_migrations(scripts.path, fhir.system, 5)
    results = run_together(8, ["fhirmigrate"], env_for(fhir, scripts))
    check_round(fhir, revisions, results)
    appliers = [r for r in results if "Applying 5 migration" in r.stdout]
    assert len(appliers) == 1, [r.stdout for r in results]
    assert all(r.returncode == 0 for r in results)


def test_a_killed_holder_on_this_host_is_reported_taken_over_and_its_migration_not_recorded(fhir, scripts):
    (scripts.path / "slow.py").write_text(
        "import os, time\nrevision = 'slow0001'\ndown_revision = None\n\n"
        "def upgrade(ctx):\n"
        "    if os.environ.get('HANG'):\n"
        "        time.sleep(600)\n\n"
        "def downgrade(ctx):\n    pass\n"
    )
    env = env_for(fhir, scripts, FHIR_MIGRATIONS_LOCK_TTL=4)
    victim = start_command(["fhirmigrate"], dict(env, HANG="1"), time.time())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it holds the lock and runs the migration
            state = fhir.state() or {}
            if any(e["url"].endswith("/migration-lock") for e in state.get("extension", [])):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the first process never took the lock")
        time.sleep(1)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    assert fhir.applied() == []

    started = time.monotonic()
    results = run_together(1, ["fhirmigrate"], env, lead=0)
    waited = time.monotonic() - started
    assert results[0].returncode == 0, results[0].stderr
    out = results[0].stdout
    assert f"pid {victim.pid}" in out  # it said who held the lock
    # On the holder's own host a pid that is gone cannot renew: no waiting for the lease
    # (tests/server/test_second_week.py has the other host's side, which must wait or break it).
    assert f"its process (pid {victim.pid}) is no longer running on this host" in out
    assert "Waiting up to" not in out and waited < 30
    assert "Applying dir/slow" in out
    assert fhir.applied() == ["slow0001"]


def test_a_holder_whose_lease_was_taken_over_cannot_record(fhir, clean_env):
    settings = Settings.build({"BASE_URL": fhir.base_url, "STATE_ID": fhir.state_id}, environ={})
    connection = FhirConnection(settings)
    recorder = StateRecorder(connection, fhir.state_id)
    stalled = MigrationLock(recorder, ttl=3, command="stalled", user="first")
    stalled.acquire(recorder.read(), timeout=5)
    stalled._stop.set()  # its renewals stop, as in a long GC pause or a frozen VM
    time.sleep(4.5)
    successor = MigrationLock(recorder, ttl=30, command="successor", user="second")
    successor.acquire(recorder.read(), timeout=10)
    try:
        entry = AppliedMigration(revision="never", name="never")
        with pytest.raises(LeaseLostError):
            stalled.update(lambda state: state.with_applied([entry], "never"))
        state = fhir.state()
        assert fhir.applied() == []
        lock = next(e for e in state["extension"] if e["url"].endswith("/migration-lock"))
        assert {"url": "user", "valueString": "second"} in lock["extension"]
        with pytest.raises(LeaseLostError):
            stalled.update(lambda state: state)
    finally:
        successor.release()
        connection.close()
