"""django_fhir_migrations.signals: which engine event sends which signal, with what, and that
the Django commands send them against the real server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from django_fhir_migrations import signals
from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.events import (
    ApplyFailed,
    ApplyStart,
    ApplySuccess,
    Cancelled,
    Paused,
    StopRequested,
)
from django_fhir_migrations.engine.redaction import register_secret
from django_fhir_migrations.engine.script import MigrationScript

from ..support.helpers import call

SIGNALS = ("migration_started", "migration_applied", "migration_reverted", "migration_failed",
           "migration_paused", "migration_cancelled")


@pytest.fixture
def received():
    """Every signal sent while the test runs: (signal name, kwargs without 'signal')."""
    got: list[tuple[str, dict]] = []

    def receiver_for(signal_name):
        def receiver(sender, **kwargs):
            assert sender is signals.SignalSender
            kwargs.pop("signal")
            got.append((signal_name, kwargs))

        return receiver

    receivers = {name: receiver_for(name) for name in SIGNALS}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    yield got
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def script(name: str = "add_mrn") -> MigrationScript:
    return MigrationScript(Path(f"/project/records/fhir_migrations/{name}.py"), "records", "3f2a" * 8, ())


def sender(**overrides) -> signals.SignalSender:
    values = {"BASE_URL": "http://fhir.example.org/fhir", "STATE_ID": "clinic", **overrides}
    return signals.SignalSender(Settings.build(values, environ={}), by="deploy")


def test_each_event_sends_its_signal_with_the_documented_arguments(received):
    listen, one = sender(), script()
    listen(ApplyStart("upgrade", one))
    listen(ApplySuccess("upgrade", one, 2.5, failures=3))
    listen(ApplyStart("downgrade", one))
    listen(ApplySuccess("downgrade", one, 1.0))
    listen(ApplyFailed("upgrade", one, "ValueError: no such code"))
    listen(Paused(one, 1200, by="alice (Django admin)"))
    listen(Cancelled("bob", one, 1200))
    assert [name for name, _ in received] == [
        "migration_started", "migration_applied", "migration_started", "migration_reverted",
        "migration_failed", "migration_paused", "migration_cancelled"]
    started, applied, _, reverted, failed, paused, cancelled = (kwargs for _, kwargs in received)
    assert started == {"revision": "3f2a" * 8, "name": "add_mrn", "label": "records", "state_id": "clinic",
                       "base_url": "http://fhir.example.org/fhir", "direction": "upgrade", "fake": False,
                       "duration": None, "count": 0, "error": "", "by": "deploy"}
    assert applied["duration"] == 2.5 and applied["count"] == 3
    assert reverted["direction"] == "downgrade" and reverted["duration"] == 1.0 and reverted["count"] == 0
    assert failed["error"] == "ValueError: no such code"
    assert paused["count"] == 1200 and paused["by"] == "alice (Django admin)"
    assert cancelled["count"] == 1200 and cancelled["by"] == "bob"


def test_a_process_that_only_asked_another_to_stop_sends_nothing_for_it(received):
    """`--pause` / `--cancel` report what the running process did; that process signals it."""
    listen, one = sender(), script()
    listen(StopRequested("pause", "deploy@web-1 (pid 7)"))
    listen(Paused(one, 40, by="", when="by deploy at 2026-01-01T00:00:00Z"))
    listen(Cancelled("deploy", by_running_process=True))
    assert received == []
    # A cancel that finds the migration paused (no process running) reverts it itself: sent.
    asker = sender()
    asker(Cancelled("deploy", one, 40))
    assert [name for name, _ in received] == ["migration_cancelled"]


def test_a_receiver_that_raises_is_logged_and_the_others_still_run(received, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("webhook down, token s3cr3t-SIG")

    register_secret("s3cr3t-SIG")  # as the connection's auth does with its token
    signals.migration_applied.connect(broken)
    try:
        listen = sender()
        with caplog.at_level(logging.ERROR, logger="django_fhir_migrations"):
            listen(ApplySuccess("upgrade", script(), 1.0))
    finally:
        signals.migration_applied.disconnect(broken)
    assert [name for name, _ in received] == ["migration_applied"]
    assert "migration_applied failed (RuntimeError: webhook down" in caplog.text
    assert "s3cr3t-SIG" not in caplog.text


def test_the_commands_send_the_signals_against_the_server(received, fhir_settings, fhir, scripts, clean_env):
    clean_env.setenv("FHIR_MIGRATIONS_USER", "deployer")
    one = scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})", downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirdowngrade")[0] == 0
    scripts.add("bad", upgrade="raise ValueError('no such code')")
    assert call("fhirmigrate")[0] == 1
    assert [(name, kwargs["name"], kwargs["direction"]) for name, kwargs in received] == [
        ("migration_started", "one", "upgrade"), ("migration_applied", "one", "upgrade"),
        ("migration_started", "one", "downgrade"), ("migration_reverted", "one", "downgrade"),
        ("migration_started", "one", "upgrade"), ("migration_applied", "one", "upgrade"),
        ("migration_started", "bad", "upgrade"), ("migration_failed", "bad", "upgrade")]
    applied = received[1][1]
    assert applied["revision"] == one and applied["state_id"] == fhir.state_id
    assert applied["by"] == "deployer" and applied["duration"] > 0
    assert "ValueError: no such code" in received[-1][1]["error"]
