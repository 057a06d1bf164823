"""Running a long migration on a live server (DESIGN, "Running long migrations on a live server"):
verify, failure budgets, throttling, pause and cancel; against the real server."""

from __future__ import annotations

from ..support.helpers import call
from .test_large_migrations import APPEND, NEW, appended, seed


def mine(patient: dict, system: str) -> list[dict]:
    return [i for i in patient.get("identifier", []) if i.get("system") == system]


VERIFY = ("\n\ndef verify(ctx):\n"
          "    assert ctx.count('Patient', identifier={new!r}) == {expected}, 'not every Patient has it'\n")


def test_a_verify_that_fails_is_not_recorded_and_a_rerun_repeats_only_verify(fhir_settings, fhir, scripts):
    seed(fhir, 4)
    new = fhir.system + ":new"  # this test's own: other tests on a shared server append NEW too
    revision = scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=new))
    path = scripts.path / "append.py"
    path.write_text(path.read_text() + VERIFY.format(new=new + "|", expected=5))
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "did not verify" in err and "not every Patient has it" in err and "not recorded" in err
    assert fhir.applied() == []
    assert all(len(mine(p, new)) == 1 for p in fhir.patients())

    code, out, err = call("fhirmigrate")  # nothing changed: verify() alone, and it fails again
    assert code == 1 and "running verify() again" in out
    assert all(len(mine(p, new)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())

    # The data is fixed by hand: a fifth Patient with the identifier. Now it verifies.
    fhir.http.post(fhir.url("Patient"), json={"resourceType": "Patient", "identifier": [
        {"system": fhir.system, "value": "late"}, {"system": new, "value": "by-hand"}]},
        headers={"Content-Type": "application/fhir+json"}, timeout=30).raise_for_status()
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert fhir.applied() == [revision]
    assert all(len(mine(p, new)) == 1 for p in fhir.patients())


def test_a_verify_fixed_in_the_script_runs_the_upgrade_again_resumed(fhir_settings, fhir, scripts):
    seed(fhir, 4)
    new = fhir.system + ":new"
    revision = scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=new))
    path = scripts.path / "append.py"
    source = path.read_text()
    path.write_text(source + VERIFY.format(new=new + "|", expected=99))
    assert call("fhirmigrate")[0] == 1
    path.write_text(source + VERIFY.format(new=new + "|", expected=4))  # the script changed
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "running verify() again" not in out and "4 resource(s) it wrote are skipped" in out
    assert fhir.applied() == [revision]
    assert all(len(mine(p, new)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())


BUDGET = """
BAD = {bad!r}
with ctx.batch(size=4, max_failures={budget}) as b:
    for p in ctx.search('Patient', identifier={system!r}, as_dict=True):
        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})
        if p['id'] in BAD:
            p['meta']['versionId'] = '99'  # the bug: a stale version, refused by the server
        b.update(p)
"""


def test_a_failure_budget_applies_with_failures_then_retry_failed_fixes_exactly_those(
        fhir_settings, fhir, scripts):
    patients = seed(fhir, 10)
    bad = sorted(p["id"] for p in patients[:3])
    revision = scripts.add("append", upgrade=BUDGET.format(bad=bad, budget=5, system=fhir.system + "|", new=NEW),
                           downgrade="ctx.undo()")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "3 failures" in out and "within the budget of 5 failures" in out
    assert fhir.applied() == [revision]
    by_id = {p["id"]: p for p in fhir.patients()}
    assert all(len(appended(by_id[i])) == (0 if i in bad else 1) for i in by_id)
    code, out, _ = call("fhirshowmigrations")
    assert "(with 3 failures)" in out
    applied = next(e for e in fhir.state()["extension"] if e["url"].endswith("/applied-migration"))
    assert {"url": "failures", "valueInteger": 3} in applied["extension"]

    path = scripts.path / "append.py"  # the fix
    path.write_text(path.read_text().replace("p['meta']['versionId'] = '99'", "pass"))
    code, out, err = call("fhirmigrate", retry_failed="append")
    assert code == 0, err
    assert "over the 3 resource(s) it left as failures" in out and "checksum will be accepted" in out
    by_id = {p["id"]: p for p in fhir.patients()}
    assert all(len(appended(p)) == 1 for p in by_id.values())
    assert all(by_id[i]["meta"]["versionId"] == "2" for i in by_id)  # the 7 were not touched again
    code, out, _ = call("fhirshowmigrations")
    assert "failure" not in out and "edited since applied" not in out
    assert code == 0

    assert call("fhirdowngrade")[0] == 0  # undo covers the first run and the retry
    assert all(appended(p) == [] for p in fhir.patients())


def test_past_the_failure_budget_the_run_stops_unrecorded_as_before(fhir_settings, fhir, scripts):
    patients = seed(fhir, 12)
    bad = sorted(p["id"] for p in patients[:6])
    scripts.add("append", upgrade=BUDGET.format(bad=bad, budget=5, system=fhir.system + "|", new=NEW))
    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "more than its budget of 5 failures" in err
    assert fhir.applied() == []


SLOW_APPEND = """
import time
with ctx.batch(size=10) as batch:
    for p in ctx.search('Patient', identifier={system!r}, _count=10, as_dict=True):
        time.sleep(0.03)
        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})
        batch.update(p)
"""


def start_in_background(fhir, scripts):
    import subprocess
    import sys

    from ..support.helpers import REPO
    from .test_large_migrations import manage_env

    env = manage_env(fhir, scripts, FHIR_MIGRATIONS_LOCK_TTL="30")
    return subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_writing(fhir, process, at_least: int = 40) -> None:
    import time

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for p in fhir.patients() if appended(p)) >= at_least:
            return
        time.sleep(0.3)
    raise AssertionError("the migration did not start writing")


def test_pause_from_another_process_then_continue_changes_each_resource_once(fhir_settings, fhir, scripts):
    import time

    seed(fhir, 300)
    revision = scripts.add("append", upgrade=SLOW_APPEND.format(system=fhir.system + "|", new=NEW))
    process = start_in_background(fhir, scripts)
    try:
        wait_until_writing(fhir, process)
        asked = time.monotonic()
        code, out, err = call("fhirmigrate", pause=True)
        assert code == 0, err
        assert time.monotonic() - asked < 15  # one bundle or 5 s, whichever is later (and slack)
        assert "Paused" in out and "continues it" in out
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "Paused" in stdout
    finally:
        if process.poll() is None:
            process.kill()
    state = fhir.state()
    assert not any(e["url"].endswith("migration-lock") for e in state["extension"])
    [attempt] = [e for e in state["extension"] if e["url"].endswith("/migration-attempt")]
    assert any(p["url"] == "paused" for p in attempt["extension"])
    done = sum(1 for p in fhir.patients() if appended(p))
    assert 0 < done < 300 and fhir.applied() == []
    code, out, _ = call("fhirshowmigrations")
    assert "paused by" in out

    code, out, err = call("fhirmigrate")  # continue
    assert code == 0, err
    assert f"{done:,} resource(s) it wrote are skipped" in out
    assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())
    assert fhir.applied() == [revision]


def test_cancel_from_another_process_reverts_everything_and_records_nothing(fhir_settings, fhir, scripts):
    before = {p["id"]: p for p in seed(fhir, 300)}
    scripts.add("append", upgrade=SLOW_APPEND.format(system=fhir.system + "|", new=NEW))
    process = start_in_background(fhir, scripts)
    try:
        wait_until_writing(fhir, process)
        code, out, err = call("fhirmigrate", cancel=True, interactive=False)
        assert code == 0, err
        assert "Cancelled" in out
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "Cancelled" in stdout and "nothing is recorded as applied" in stdout
    finally:
        if process.poll() is None:
            process.kill()
    assert_cancelled(fhir, before)
    kept = fhir.kept_audit_events()  # None on a server that keeps none (Helios)
    assert kept is None or "cancelled" in [e["subtype"][0]["code"] for e in kept if e.get("subtype")]


def test_cancel_of_a_paused_migration_reverts_it_without_a_running_process(fhir_settings, fhir, scripts):
    seed(fhir, 300)
    scripts.add("append", upgrade=SLOW_APPEND.format(system=fhir.system + "|", new=NEW))
    process = start_in_background(fhir, scripts)
    try:
        wait_until_writing(fhir, process)
        assert call("fhirmigrate", pause=True)[0] == 0
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert any(appended(p) for p in fhir.patients())
    code, out, err = call("fhirmigrate", cancel=True, interactive=False)
    assert code == 0, err
    assert "resource(s) it wrote were reverted" in out
    assert all(appended(p) == [] for p in fhir.patients()) and fhir.applied() == []
    code, out, _ = call("fhirmigrate", cancel=True, interactive=False)
    assert code == 0 and "nothing to pause or cancel" in out


def test_max_rate_50_over_300_resources_takes_at_least_6_seconds(fhir_settings, settings, fhir, scripts):
    import time

    seed(fhir, 300)
    settings.FHIR_MIGRATIONS = dict(fhir_settings, MAX_RATE=50)
    scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=NEW))
    started = time.monotonic()
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert time.monotonic() - started >= 300 / 50
    assert all(len(appended(p)) == 1 for p in fhir.patients())


def assert_cancelled(fhir, before: dict[str, dict]) -> None:
    """A cancel left every Patient as it was `before` and nothing in the state: no record, no
    attempt, lease or control request."""
    assert fhir.applied() == []
    state = fhir.state()
    assert not any(e["url"].endswith(("/migration-attempt", "/migration-lock", "/migration-control"))
                   for e in state.get("extension", []))
    for patient in fhir.patients():
        assert appended(patient) == []
        assert {k: v for k, v in patient.items() if k != "meta"} == \
            {k: v for k, v in before[patient["id"]].items() if k != "meta"}


def test_a_run_starts_gently_and_others_slow_searches_keep_it_there_each_resource_changed_once_then_undone(
        fhir_settings, settings, fhir, scripts, monkeypatch):
    """The back-off as users meet it: two migrations over the same Patients in one run, the
    others' searches turning slow once the first bundles go out (a proxy holds them back). The
    run starts gently (one worker, half-size bundles) as soon as it has measured the server's
    normal, does not climb while the others are slow, and goes no further down for their sake;
    every Patient is still changed exactly once per migration, and a downgrade to zero undoes
    both."""
    from django_fhir_migrations.engine import throttle

    from ..support.hostile import HostileProxy, Rule

    monkeypatch.setattr(throttle, "PROBE_EVERY", 0.0)  # a search before every bundle
    proxy = HostileProxy(fhir.base_url).start()
    try:
        # The tool's search as clinicians make it (the state by identifier, one result): its
        # baseline is measured at the server's speed, every later one is held back 0.3 s.
        probe = r"^/Basic\?identifier=.*&_count=1$"
        sizes: list[int] = []  # Patient updates per bundle, as sent (the Provenance aside)

        def batch_size(exchange) -> None:
            entries = (exchange.json() or {}).get("entry") or []
            updates = [e for e in entries if e.get("request", {}).get("url", "").startswith("Patient/")]
            if updates:
                sizes.append(len(updates))

        proxy.add(Rule("GET", probe, skip=throttle.PROBE_BASELINE,
                       before=lambda exchange: setattr(exchange, "delay", 0.3)),
                  Rule("POST", r"^/?$", before=batch_size))
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, WORKERS=2)
        seed(fhir, 300)
        before = {p["id"]: p for p in fhir.patients()}
        for name in ("first", "second"):
            scripts.add(name, upgrade=APPEND.format(system=fhir.system + "|", new=NEW), downgrade="ctx.undo()")
        code, out, err = call("fhirmigrate")
        assert code == 0, err
        assert "a live server, starting gently: 2 workers → 1 worker, half-size bundles" in out
        assert "well again" not in out  # the others' searches stay slow: no climbing
        assert "quarter-size" not in out  # others' searches alone go no further
        assert len(proxy.requests("GET", probe)) > throttle.PROBE_BASELINE
        # The blocks asked for 50: the first bundle (and up to two built while it measured the
        # server's normal: one beside it, one waiting for a worker) full-size, then half-size.
        assert sizes[0] == 50 and all(size <= 25 for size in sizes[3:]) and sizes.count(25) >= 18
        for patient in fhir.patients():
            assert len(appended(patient)) == 2 and patient["meta"]["versionId"] == "3"

        assert call("fhirdowngrade", "zero")[0] == 0
        assert fhir.applied() == []
        for patient in fhir.patients():
            assert {k: v for k, v in patient.items() if k != "meta"} == \
                {k: v for k, v in before[patient["id"]].items() if k != "meta"}
    finally:
        proxy.stop()
