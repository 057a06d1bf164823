"""The admin page's Apply, Pause, Continue and Cancel against the real server: the run goes to
the background (here a detached `python -m django fhirmigrate --noinput`, as no task backend is
configured), the page returns at once and follows the run from the state."""

from __future__ import annotations

import re
import time

from .test_admin import CANCEL_URL, MIGRATE_URL, PAUSE_URL, STATUS_URL, launch_phase, page, poll, states
from .test_large_migrations import NEW, appended, seed
from .test_long_runs import assert_cancelled

# About ten seconds: 50 Patients, 0.2 s each, in bundles of 5 (the run records its progress at
# most every 5 s), with the total given to ctx.progress so the page can show an ETA.
TEN_SECONDS = """
import time
search = dict(identifier={system!r}, _count=10)
with ctx.batch(size=5) as batch:
    for p in ctx.progress(ctx.search('Patient', as_dict=True, **search), total=ctx.count('Patient', **search),
                          desc='append'):
        time.sleep({pause})
        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})
        batch.update(p)
"""


def post_quickly(client, url: str, data: dict) -> float:
    asked = time.monotonic()
    reply = client.post(url, data)
    took = time.monotonic() - asked
    assert reply.status_code == 302 and reply["Location"] == STATUS_URL
    return took


def slow_append(fhir, scripts, count: int, pause: float) -> str:
    seed(fhir, count)
    return scripts.add("append", upgrade=TEN_SECONDS.format(system=fhir.system + "|", new=NEW, pause=pause),
                       downgrade="ctx.undo()")


def test_apply_returns_at_once_and_the_page_follows_the_run_until_applied(
        admin_client, background_settings, fhir, scripts, launches):
    revision = slow_append(fhir, scripts, 50, 0.2)
    took = post_quickly(admin_client, MIGRATE_URL, {"confirm": "yes"})
    assert took < 2.0, f"Apply took {took:.2f} s"
    assert fhir.applied() == []
    [launch] = launches
    assert launch.how == "process" and launch.action == "migrate"

    running = poll(admin_client, lambda h: states(h) == ["running"], "the migration running")
    assert '<meta http-equiv="refresh" content="3">' in running
    assert 'id="progress"' in running and 'id="pause-action"' in running and 'id="cancel-action"' in running
    assert 'id="migrate-action"' not in running
    seen_rate = False
    while "running" in states(running):
        progress = re.search(r'<div class="module" id="progress">(.*?)</div>', running, re.S)
        if progress and re.search(r"\d+/s", progress.group(1)) and re.search(r"of 50 resources", progress.group(1)):
            seen_rate = seen_rate or "left" in progress.group(1)
        time.sleep(0.5)
        running = page(admin_client)
    assert seen_rate, "the page never showed a rate and an ETA while it ran"

    done = poll(admin_client, lambda h: states(h) == ["applied"] and launch_phase(h) == "finished", "applied")
    assert "refresh" not in re.sub(r"<style>.*?</style>", "", done, flags=re.S).split("</head>")[0]
    assert "Applied 1 migration" in done  # the run's last line, from its log
    assert fhir.applied() == [revision]
    assert all(len(appended(p)) == 1 for p in fhir.patients())
    assert fhir.appliers() == ["admin (Django admin)"]


def test_pause_from_the_page_then_continue_changes_each_resource_once(
        admin_client, background_settings, fhir, scripts, launches):
    revision = slow_append(fhir, scripts, 100, 0.1)
    post_quickly(admin_client, MIGRATE_URL, {"confirm": "yes"})
    poll(admin_client, lambda h: states(h) == ["running"] and 'id="pause-action"' in h, "the migration running")

    assert admin_client.get(PAUSE_URL).status_code == 405  # a state change is a POST
    took = post_quickly(admin_client, PAUSE_URL, {})
    assert took < 2.0
    asked = admin_client.get(STATUS_URL).content.decode()
    assert "Asked the running migration" in asked and "to pause" in asked

    paused = poll(admin_client, lambda h: states(h) == ["paused"] and launch_phase(h) == "finished", "paused",
                  timeout=60)
    assert re.search(r"Paused by admin \(Django admin\)@\S+ \(pid \d+\) at \d{4}-", paused)
    assert 'id="continue-action"' in paused and 'id="cancel-action"' in paused
    assert 'id="pause-action"' not in paused and 'id="migrate-action"' not in paused
    assert re.search(r'id="lock">\s*free', paused)
    done_before = sum(1 for p in fhir.patients() if appended(p))
    assert 0 < done_before < 100 and fhir.applied() == []

    took = post_quickly(admin_client, MIGRATE_URL, {"confirm": "yes"})  # the Continue button's form
    assert took < 2.0
    assert "Continuing dir/append in the background" in page(admin_client)
    poll(admin_client, lambda h: states(h) == ["applied"] and launch_phase(h) == "finished", "applied")
    assert fhir.applied() == [revision]
    assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in fhir.patients())
    if fhir.keeps_audit_events:
        events = [e["subtype"][0]["code"] for e in fhir.audit_events()]
        assert "paused" in events and "applied" in events


def test_cancel_from_the_page_reverts_everything_and_records_nothing(
        admin_client, background_settings, fhir, scripts, launches):
    before = {p["id"]: p for p in seed(fhir, 100)}
    scripts.add("append", upgrade=TEN_SECONDS.format(system=fhir.system + "|", new=NEW, pause=0.1))
    post_quickly(admin_client, MIGRATE_URL, {"confirm": "yes"})
    poll(admin_client, lambda h: states(h) == ["running"] and 'id="cancel-action"' in h, "the migration running")

    confirm = admin_client.get(CANCEL_URL).content.decode()
    assert "Cancel dir/append and revert what it wrote" in confirm and 'name="confirm" value="yes"' in confirm
    assert "stops at its next bundle" in confirm
    took = post_quickly(admin_client, CANCEL_URL, {"confirm": "yes"})
    assert took < 2.0
    assert [launch.action for launch in launches] == ["migrate", "cancel"]

    done = poll(admin_client, lambda h: states(h) == ["pending"] and launch_phase(h) == "finished"
                and 'id="progress"' not in h, "cancelled", timeout=240)
    assert 'id="cancel-action"' not in done and re.search(r'id="lock">\s*free', done)
    assert_cancelled(fhir, before)
    if fhir.keeps_audit_events:
        assert "cancelled" in [e["subtype"][0]["code"] for e in fhir.audit_events()]
