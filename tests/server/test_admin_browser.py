"""End to end in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
logs in to the admin of a live Django server, reads the FHIR migrations page, checks it against
what the FHIR server holds, saves the screenshot the README shows, then applies the pending
migration through the confirmation page: it runs in the background, and the page, refreshing
itself, shows it applied without anyone reloading it.

Without Chromium or Playwright this test fails under CI (env CI set) and skips locally.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from ..support.helpers import REPO, call

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The README's picture is refreshed only on request (UPDATE_SCREENSHOTS=1); otherwise the
# screenshot goes to the test's tmp folder, so test runs leave the working tree clean.
README_SCREENSHOT = REPO / "docs" / "screenshots" / "admin-status.png"
STATUS_PATH = "/admin/django_fhir_migrations/migrationstatus/"


def require_browser():
    """(Playwright's sync API, the Chromium binary), or fail (CI) / skip (locally) saying what
    to install."""
    missing = []
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not executable:
        missing.append(f"Chromium ({CHROMIUM}; install it with `apt-get install -y chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("Playwright's Python package (`pip install -e '.[browser]'`)")
    if missing:
        message = "The browser test needs " + " and ".join(missing) + "."
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return sync_playwright, executable


def add_script(scripts, name: str, doc: str, upgrade: str, *, revision: str | None = None) -> str:
    """A script with a real one-line docstring, as the screenshot should show."""
    revision = scripts.add(name, upgrade=upgrade, revision=revision,
                           down=scripts.revisions[-1] if scripts.revisions else None)
    path = scripts.path / f"{name}.py"
    scripts.write(name, path.read_text().replace(f'"""{name}."""', f'"""{doc}"""', 1))
    return revision


def create_patient(fhir, value: str) -> str:
    return f"ctx.create({fhir.patient_code(value)})"


def test_admin_status_page_in_a_browser(live_server, django_user_model, background_settings, fhir, scripts,
                                        clean_env, tmp_path, launches):
    sync_playwright, chromium = require_browser()
    clean_env.setenv("FHIR_MIGRATIONS_USER", "deployer")
    # A history with something to see: two applied, one pending after a failed first attempt.
    first = add_script(scripts, "create_patients", "Create the demo patients.",
                       create_patient(fhir, "alice"))
    second = add_script(scripts, "add_mrn", "Give every Patient an MRN identifier.",
                        create_patient(fhir, "bob"))
    recode = "Recode Patient.gender 'u' to 'unknown'."
    third = add_script(scripts, "recode_gender", recode,
                       "raise ValueError('unknown gender code \"u\" in Patient/42')")
    assert call("fhirmigrate")[0] == 1
    scripts.revisions.pop()
    add_script(scripts, "recode_gender", recode, create_patient(fhir, "carol"), revision=third)
    assert fhir.applied() == [first, second]
    # ORM work before the browser starts: Playwright's sync API runs an event loop in this thread.
    django_user_model.objects.create_superuser("root", email="root@example.org", password="pw-e2e-root")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(live_server.url + STATUS_PATH)
            # Not logged in: the admin's login form, which brings us back to the page.
            assert "/admin/login/" in page.url
            page.fill("#id_username", "root")
            page.fill("#id_password", "pw-e2e-root")
            page.click("input[type=submit]")
            page.wait_for_selector("#fhir-scripts")
            assert page.url.endswith(STATUS_PATH)

            states = page.eval_on_selector_all(
                "#fhir-scripts tr[data-revision]",
                "rows => rows.map(r => [r.dataset.revision, r.dataset.state])",
            )
            assert states == [[first, "applied"], [second, "applied"], [third, "pending"]]
            assert [rev for rev, state in states if state == "applied"] == fhir.applied()
            assert "dir/add_mrn" in page.inner_text("#head")
            assert page.inner_text("#pending-count").strip() == "1 of 3 migrations"
            assert page.inner_text("#state-id") == fhir.state_id
            events = page.eval_on_selector_all("#fhir-audit-events tr[data-event]",
                                               "rows => rows.map(r => r.dataset.event)")
            if fhir.keeps_audit_events:
                assert events == ["failed", "applied", "applied"]
                assert "unknown gender code" in page.inner_text("#fhir-audit-events")
            else:  # Helios: what the state records, and why (a failure that wrote nothing is not there)
                assert events == ["applied", "applied"]
                assert "keeps no AuditEvents from clients" in page.inner_text("#fhir-audit-note")

            shot = README_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "admin-status.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # Apply the pending one through the confirmation page.
            page.click("#migrate-action")
            page.wait_for_selector("#confirm-button")
            assert "dir/recode_gender" in page.inner_text("#plan")
            page.click("#confirm-button")
            page.wait_for_selector("#fhir-scripts")
            assert "Applying 1 migration(s) in the background" in page.inner_text(".messagelist")
            # No reload from here on: the page refreshes itself while the run is followed.
            deadline = time.monotonic() + 60
            states = []
            while states != ["applied", "applied", "applied"]:
                assert time.monotonic() < deadline, f"the page never showed it applied: {states}"
                time.sleep(0.5)
                try:
                    states = page.eval_on_selector_all(
                        "#fhir-scripts tr[data-revision]", "rows => rows.map(r => r.dataset.state)")
                except Exception:  # noqa: BLE001 - the page is being reloaded right now
                    continue
            assert "finished" in page.inner_text("#launch") and "Applied 1 migration" in page.inner_text("#launch")
        finally:
            browser.close()
    assert fhir.applied() == [first, second, third]
    assert sorted(p["identifier"][0]["value"] for p in fhir.patients()) == ["alice", "bob", "carol"]

