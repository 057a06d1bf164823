"""The admin's "FHIR migrations" status page and its actions, through Django's test client,
against the real server: who may see it, what it shows, and that it survives a dead server."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.contrib.auth.models import Permission
from django.db import connection as db_connection
from django.test import Client

from django_fhir_migrations.conf import get_settings
from django_fhir_migrations.engine import Project
from django_fhir_migrations.engine.lock import MigrationLock
from django_fhir_migrations.engine.recorder import StateRecorder
from django_fhir_migrations.models import MigrationStatus

from ..support.helpers import call

STATUS_URL = "/admin/django_fhir_migrations/migrationstatus/"
MIGRATE_URL = STATUS_URL + "migrate/"
BREAK_LOCK_URL = STATUS_URL + "break-lock/"
PAUSE_URL = STATUS_URL + "pause/"
CANCEL_URL = STATUS_URL + "cancel/"


def create_patient(fhir, value: str) -> str:
    return f"ctx.create({fhir.patient_code(value)})"


def rows(html: str) -> list[tuple[str, str]]:
    """(revision, applied|pending|unknown) of every script row, in page order."""
    return re.findall(r'data-revision="([0-9a-f]+)" data-state="(\w+)"', html)


def audit_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-event="([\w-]+)"', html)


def page(client) -> str:
    return client.get(STATUS_URL).content.decode()


def poll(client, until, what: str, timeout: float = 180, every: float = 0.3) -> str:
    """The status page once `until(html)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        html = page(client)
        if until(html):
            return html
        if time.monotonic() > deadline:
            launch = re.search(r'<p class="help" id="launch".*?</p>', html, re.S)
            raise AssertionError(f"the page never showed {what}: rows {rows(html)}, "
                                 f"{launch.group(0) if launch else 'no launch'}")
        time.sleep(every)


def states(html: str) -> list[str]:
    return [state for _, state in rows(html)]


def launch_phase(html: str) -> str:
    found = re.search(r'id="launch" data-phase="(\w+)"', html)
    return found.group(1) if found else ""


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("staffer", password="pw-staffer", is_staff=True)


@pytest.fixture
def viewer(staff):
    staff.user_permissions.add(Permission.objects.get(
        codename="view_fhir_migrations", content_type__app_label="django_fhir_migrations"))
    return staff


def hold_lock(fhir, user: str) -> tuple[Project, MigrationLock]:
    """A lease taken by 'another process' that then stops renewing, as a dead one would."""
    project = Project(get_settings())
    recorder = StateRecorder(project.connection, fhir.state_id)
    lock = MigrationLock(recorder, ttl=300, command="crashed deploy", user=user)
    lock.acquire(recorder.read(), timeout=5)
    lock._stop.set()
    return project, lock


# --- the permission model ----------------------------------------------------------------


def test_migrate_creates_the_permission_and_no_table(db):
    permission = Permission.objects.get(codename="view_fhir_migrations",
                                        content_type__app_label="django_fhir_migrations")
    assert permission.name == "Can view FHIR migration status"
    # Only the dedicated permission: no add/change/delete/view_migrationstatus.
    assert list(Permission.objects.filter(content_type=permission.content_type)
                .values_list("codename", flat=True)) == ["view_fhir_migrations"]
    assert MigrationStatus._meta.db_table not in db_connection.introspection.table_names()


def test_anonymous_user_is_sent_to_the_admin_login(client, fhir_settings):
    reply = client.get(STATUS_URL)
    assert reply.status_code == 302
    assert reply["Location"].startswith("/admin/login/") and "next=" in reply["Location"]


def test_logged_in_user_who_is_not_staff_is_sent_to_the_login(client, django_user_model, fhir_settings):
    user = django_user_model.objects.create_user("outsider", password="pw")
    client.force_login(user)
    reply = client.get(STATUS_URL)
    assert reply.status_code == 302 and reply["Location"].startswith("/admin/login/")


def test_staff_without_the_permission_gets_403_and_no_menu_entry(client, staff, fhir_settings):
    client.force_login(staff)
    assert client.get(STATUS_URL).status_code == 403
    assert client.get(MIGRATE_URL).status_code == 403
    assert STATUS_URL not in client.get("/admin/").content.decode()


def test_staff_with_the_permission_sees_the_page_and_the_menu_entry(client, viewer, fhir_settings, fhir,
                                                                    scripts):
    scripts.add("one")
    client.force_login(viewer)
    index = client.get("/admin/").content.decode()
    assert STATUS_URL in index and "FHIR migrations" in index
    reply = client.get(STATUS_URL)
    assert reply.status_code == 200
    html = reply.content.decode()
    assert fhir.state_id in html and fhir.base_url in html
    # Not a superuser: no action buttons.
    assert 'id="migrate-action"' not in html


# --- what the page shows ---------------------------------------------------------------------


def test_page_lists_every_script_in_order_with_what_the_server_holds(admin_client, fhir_settings, fhir,
                                                                     scripts, clean_env):
    clean_env.setenv("FHIR_MIGRATIONS_USER", "deployer")
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    two = scripts.add("two")
    three = scripts.add("three")
    assert call("fhirmigrate", two)[0] == 0
    html = admin_client.get(STATUS_URL).content.decode()
    assert rows(html) == [(one, "applied"), (two, "applied"), (three, "pending")]
    assert [r for r, s in rows(html) if s == "applied"] == fhir.applied()
    state_id = fhir.state()["id"]
    assert f"Basic/{state_id}" in html
    head = re.search(r'<td id="head">(.*?)</td>', html, re.S).group(1)
    assert "dir/two" in head and two in head
    assert re.search(r'id="pending-count">\s*1 of 3 migrations', html)
    assert "deployer@" in html  # applied by
    assert re.search(r"\d\d\d\d-\d\d-\d\d \d\d:\d\d:\d\d", html)  # applied at
    assert re.search(r"\d+\.\d\d s", html)  # duration
    assert 'id="lock">\n          free' in html or re.search(r'id="lock">\s*free', html)
    # The recent AuditEvents of this state, newest first.
    assert audit_rows(html) == ["applied", "applied"]
    assert "Migration applied" in html


def test_page_on_a_server_that_keeps_no_audit_events_shows_what_the_state_records(
        admin_client, no_audit_server, fhir, scripts, clean_env):
    clean_env.setenv("FHIR_MIGRATIONS_USER", "deployer")
    scripts.add("one", upgrade=create_patient(fhir, "one"))
    scripts.add("two", upgrade=create_patient(fhir, "two") + "\nraise RuntimeError('row 7')")
    assert call("fhirmigrate")[0] == 1
    html = admin_client.get(STATUS_URL).content.decode()
    note = re.search(r'<p class="help audit-note" id="fhir-audit-note">(.*?)</p>', html, re.S).group(1)
    assert "keeps no AuditEvents from clients" in note and "what the migration state itself records" in note
    assert "History from the migration state" in html and "No AuditEvents recorded" not in html
    assert audit_rows(html) == ["interrupted", "applied"]  # newest first
    assert "partially applied: 1 resource(s) written" in html and "RuntimeError: row 7" in html
    assert "deployer@" in html and "unfinished" in html


def test_page_shows_drift_and_out_of_order_problems(admin_client, fhir_settings, fhir, scripts):
    one = scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    scripts.add("one", revision=one, down=None, upgrade="x = 'edited'")
    scripts.revisions.pop()
    html = admin_client.get(STATUS_URL).content.decode()
    assert "edited since applied" in html
    assert 'id="problems"' in html and "was edited after it was applied" in html


def test_graph_problems_are_shown_as_errors(admin_client, fhir_settings, fhir, scripts):
    scripts.add("one")
    scripts.add("orphan", down="f" * 32)
    reply = admin_client.get(STATUS_URL)
    assert reply.status_code == 200
    html = reply.content.decode()
    problems = re.search(r'<div class="module" id="problems">(.*?)</div>', html, re.S).group(1)
    assert 'class="errorlist"' in problems
    assert "orphan.py" in problems and "f" * 32 in problems


def test_page_names_the_lock_holder_and_offers_breaking_it(admin_client, fhir_settings, fhir, scripts):
    scripts.add("one")
    project, _ = hold_lock(fhir, "mallory")
    try:
        html = admin_client.get(STATUS_URL).content.decode()
        lock = re.search(r'<td id="lock">(.*?)</td>', html, re.S).group(1)
        assert "mallory@" in lock and "crashed deploy" in lock
        assert 'id="break-lock-action"' in html
    finally:
        project.close()


def test_dead_server_shows_a_banner_not_a_500(admin_client, offline_settings, scripts):
    port = offline_settings["BASE_URL"].split(":")[2].split("/")[0]
    one = scripts.add("one")
    reply = admin_client.get(STATUS_URL)
    assert reply.status_code == 200
    html = reply.content.decode()
    banner = re.search(r'<p class="errornote banner" id="server-error">(.*?)</p>', html, re.S).group(1)
    assert f"127.0.0.1:{port}" in banner and "Cannot reach the FHIR server" in banner
    assert rows(html) == [(one, "unknown")]
    assert 'id="migrate-action"' not in html
    # The actions refuse politely too.
    reply = admin_client.post(MIGRATE_URL, {"confirm": "yes"}, follow=True)
    assert reply.status_code == 200 and "Cannot apply migrations" in reply.content.decode()


def test_unusable_settings_show_a_banner_not_a_500(admin_client, settings, clean_env):
    settings.FHIR_MIGRATIONS = {"BASE_URL": "http://127.0.0.1:8090/fhir", "NOT_A_KEY": 1}
    reply = admin_client.get(STATUS_URL)
    assert reply.status_code == 200
    assert "NOT_A_KEY" in reply.content.decode() and 'id="settings-error"' in reply.content.decode()
    settings.FHIR_MIGRATIONS = {}
    reply = admin_client.get(STATUS_URL)
    assert reply.status_code == 200 and "no FHIR server is configured" in reply.content.decode()


# --- actions -------------------------------------------------------------------------------


def test_actions_are_superuser_only(client, viewer, fhir_settings, fhir, scripts, launches):
    scripts.add("one", upgrade=create_patient(fhir, "one"))
    client.force_login(viewer)
    assert client.get(MIGRATE_URL).status_code == 403
    assert client.post(MIGRATE_URL, {"confirm": "yes"}).status_code == 403
    assert client.post(BREAK_LOCK_URL, {"confirm": "yes"}).status_code == 403
    assert client.post(PAUSE_URL).status_code == 403
    assert client.get(CANCEL_URL).status_code == 403
    assert client.post(CANCEL_URL, {"confirm": "yes"}).status_code == 403
    assert launches == [] and fhir.patients() == [] and fhir.applied() == []


def test_migrate_action_confirms_then_applies_in_the_background_as_the_admin_user(
        admin_client, background_settings, fhir, scripts, launches):
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    two = scripts.add("two", upgrade=create_patient(fhir, "two"))
    status = admin_client.get(STATUS_URL).content.decode()
    assert 'id="migrate-action"' in status and "Apply 2 pending migrations" in status

    confirm = admin_client.get(MIGRATE_URL)
    assert confirm.status_code == 200
    page_ = confirm.content.decode()
    assert "dir/one" in page_ and "dir/two" in page_ and 'name="confirm" value="yes"' in page_
    assert "run in the background" in page_
    assert fhir.applied() == []  # GET only asks

    unconfirmed = admin_client.post(MIGRATE_URL)
    assert unconfirmed.status_code == 200 and 'id="confirm-button"' in unconfirmed.content.decode()
    assert fhir.applied() == [] and launches == []

    started = admin_client.post(MIGRATE_URL, {"confirm": "yes"}, follow=True)
    assert started.redirect_chain[-1][0] == STATUS_URL
    assert "Applying 2 migration(s) in the background (as process" in started.content.decode()
    html = poll(admin_client, lambda h: launch_phase(h) == "finished", "the run finished")
    assert "Applied 2 migrations" in html  # the run's last line
    assert fhir.applied() == [one, two] and len(fhir.patients()) == 2
    assert rows(html) == [(one, "applied"), (two, "applied")]
    events = fhir.kept_audit_events()
    if events is not None:
        applied = [e for e in events if e["subtype"][0]["code"] == "applied"]
        assert applied and all(e["agent"][0]["who"]["display"] == "admin (Django admin)" for e in applied)
    else:  # the page's history then comes from the state, which names the admin user too
        assert audit_rows(html) == ["applied", "applied"] and html.count("admin (Django admin)@") >= 2


def test_migrate_action_reports_a_failing_migration(admin_client, background_settings, fhir, scripts, launches):
    scripts.add("bad", upgrade="raise ValueError('no such code')")
    admin_client.post(MIGRATE_URL, {"confirm": "yes"})
    html = poll(admin_client, lambda h: launch_phase(h) == "failed", "the run failed")
    launch = re.search(r'<p class="help" id="launch".*?</p>', html, re.S).group(0)
    assert "CommandError: Migration bad" in launch and "ValueError: no such code" in launch
    assert fhir.applied() == []
    if fhir.keeps_audit_events:
        assert audit_rows(html) == ["failed"]
    else:  # a failure that wrote nothing leaves no trace in the state; the page says why
        assert audit_rows(html) == [] and 'id="fhir-audit-note"' in html


def test_actions_need_a_csrf_token(django_user_model, background_settings, fhir, scripts, launches):
    scripts.add("one", upgrade=create_patient(fhir, "one"))
    admin = django_user_model.objects.create_superuser("root", password="pw-root")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin)
    assert strict.post(MIGRATE_URL, {"confirm": "yes"}).status_code == 403
    assert strict.post(STATUS_URL + "pause/").status_code == 403
    assert strict.post(STATUS_URL + "cancel/", {"confirm": "yes"}).status_code == 403
    assert launches == [] and fhir.applied() == [] and fhir.patients() == []
    page_ = strict.get(MIGRATE_URL).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page_).group(1)
    assert strict.post(MIGRATE_URL, {"confirm": "yes", "csrfmiddlewaretoken": token}).status_code == 302
    poll(strict, lambda h: launch_phase(h) == "finished", "the run finished")
    assert len(fhir.applied()) == 1


def test_actions_refuse_other_methods(admin_client, fhir_settings, scripts):
    scripts.add("one")
    assert admin_client.put(MIGRATE_URL).status_code == 405
    assert admin_client.delete(BREAK_LOCK_URL).status_code == 405


def test_break_lock_action_confirms_then_removes_the_lease(admin_client, background_settings, fhir, scripts,
                                                          launches):
    scripts.add("one", upgrade=create_patient(fhir, "one"))
    project, _ = hold_lock(fhir, "mallory")
    try:
        confirm = admin_client.get(BREAK_LOCK_URL).content.decode()
        assert "mallory@" in confirm and 'name="confirm" value="yes"' in confirm
        assert "migration-lock" in str(fhir.state())  # still held after GET
        done = admin_client.post(BREAK_LOCK_URL, {"confirm": "yes"}, follow=True)
        html = done.content.decode()
        assert "Broke the migration lock held by mallory@" in html
        assert "migration-lock" not in str(fhir.state())
        assert re.search(r'id="lock">\s*free', html)
        if fhir.keeps_audit_events:
            assert "lock-broken" in audit_rows(html)
        else:
            assert 'id="fhir-audit-note"' in html
    finally:
        project.close()
    # With the lock gone, migrating from the admin works again.
    admin_client.post(MIGRATE_URL, {"confirm": "yes"})
    poll(admin_client, lambda h: launch_phase(h) == "finished", "the run finished")
    assert len(fhir.applied()) == 1


def test_break_lock_without_a_lock_says_so(admin_client, fhir_settings, scripts):
    scripts.add("one")
    reply = admin_client.get(BREAK_LOCK_URL, follow=True)
    assert "No process holds the migration lock." in reply.content.decode()


def test_a_failing_migrations_message_shows_no_secret(admin_client, background_settings, fhir, scripts,
                                                     clean_env, launches):
    token = "s3cr3t-admin-T0KEN-77"
    background_settings["AUTH"] = {"type": "bearer", "token": token}
    clean_env.setenv("FHIR_MIGRATIONS_AUTH", json.dumps(background_settings["AUTH"]))  # the run's
    scripts.add("leaky", upgrade=f"raise RuntimeError('rejected {token}')")
    admin_client.post(MIGRATE_URL, {"confirm": "yes"})
    html = poll(admin_client, lambda h: launch_phase(h) == "failed", "the run failed")
    assert "RuntimeError: rejected ***" in html
    assert token not in html
    assert token not in open(launches[0].log).read()
