"""Undo you can rely on (DESIGN, "Trust"): whole chains revert, and undo and resume act only on
records the tool can prove it wrote. Against the real server, checked with plain HTTP."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time

import pytest

from ..support.helpers import REPO, call
from .test_large_migrations import APPEND, NEW, appended, manage_env, offers_bulk_patch, seed

STATE_SYSTEM = "http://fhir.migration.system"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def content(resource: dict) -> dict:
    """What undo restores: the resource without meta."""
    return {k: v for k, v in resource.items() if k != "meta"}


def by_id(resources: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in resources}


def provenance_of(fhir, revision: str) -> list[dict]:
    return fhir.search("Provenance", _tag=f"http://fhir.migration.system/migration-revision|{revision}")


def post(fhir, resource: dict) -> dict:
    reply = fhir.http.post(fhir.url(resource["resourceType"]), json=resource, headers=FHIR_JSON, timeout=30)
    reply.raise_for_status()
    return reply.json()


# --- chains ------------------------------------------------------------------------------------

CHAIN_GENDER = """
with ctx.batch() as b:
    for p in ctx.search('Patient', identifier={system!r}, as_dict=True):
        p['gender'] = 'female'
        b.update(p)
"""
CHAIN_BULK = """
ctx.bulk_patch('Patient', [{{'type': 'add', 'path': 'Patient', 'name': 'active', 'value': {{'valueBoolean': True}}}}],
               identifier={system!r}{job})
"""
SERVER_JOB = ", server_job=True"  # patch bundles are the default


def test_a_dry_run_downgrade_reports_what_undo_would_write_and_writes_nothing(fhir_settings, fhir, scripts):
    seed(fhir, 6)
    system = fhir.system + "|"
    scripts.add("gender", upgrade=CHAIN_GENDER.format(system=system), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    migrated = by_id(fhir.patients())

    code, out, err = call("fhirdowngrade", "--dry-run", "-v", "2")
    assert code == 0, err
    assert out.count("PUT Patient/") == 6, out  # each revert, reported (names, never values)
    assert all(f"Patient/{pid}" in out for pid in migrated)
    assert "female" not in out and "unknown" not in out
    assert by_id(fhir.patients()) == migrated and len(fhir.applied()) == 1  # nothing written

    code, _, err = call("fhirdowngrade")
    assert code == 0, err
    assert all(p["gender"] == "unknown" for p in fhir.patients())


def test_a_dry_run_of_downgrade_zero_over_a_chain_checks_each_step_as_the_real_run_would(
        fhir_settings, fhir, scripts):
    seed(fhir, 5)
    system = fhir.system + "|"
    scripts.add("gender", upgrade=CHAIN_GENDER.format(system=system), downgrade="ctx.undo()")
    scripts.add("append", upgrade=APPEND.format(system=system, new=NEW), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    migrated = by_id(fhir.patients())
    # The second step's resources still hold the first step's change (a dry run does not make
    # it): that is not a change since, as it would not be in the real run.
    code, out, err = call("fhirdowngrade", "zero", "--dry-run", "-v", "2")
    assert code == 0, err
    assert out.count("PUT Patient/") == 10, out
    assert by_id(fhir.patients()) == migrated and len(fhir.applied()) == 2
    # Someone else's change is still found in the first step, and nothing is written.
    other = copy.deepcopy(next(iter(migrated.values())))
    other["name"] = [{"family": "Changed"}]
    reply = fhir.http.put(fhir.url(f"Patient/{other['id']}"), json=other, headers=FHIR_JSON, timeout=30)
    reply.raise_for_status()
    code, out, err = call("fhirdowngrade", "zero", "--dry-run")
    assert code == 1 and "changed since" in err and f"Patient/{other['id']}" in err, err
    assert len(fhir.applied()) == 2


@pytest.mark.parametrize("bulk_path", ["server job", "patch bundles"])
def test_downgrade_zero_over_three_migrations_on_the_same_patients_restores_every_one(
        bulk_path, fhir_settings, fhir, scripts):
    if bulk_path == "server job" and not offers_bulk_patch(fhir):
        pytest.skip("the server offers no $hapi.fhir.bulk-patch job (HAPI only); the other case runs")
    job = SERVER_JOB if bulk_path == "server job" else ""  # patch bundles: the default
    before = by_id(seed(fhir, 40))
    system = fhir.system + "|"
    scripts.add("gender", upgrade=CHAIN_GENDER.format(system=system), downgrade="ctx.undo()")
    scripts.add("append", upgrade=APPEND.format(system=system, new=NEW), downgrade="ctx.undo()")
    scripts.add("activate", upgrade=CHAIN_BULK.format(system=system, job=job), downgrade="ctx.undo()")
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    after = by_id(fhir.patients())
    assert all(p["gender"] == "female" and len(appended(p)) == 1 and p["active"] is True
               for p in after.values())
    assert {p["meta"]["versionId"] for p in after.values()} == {"4"}

    code, out, err = call("fhirdowngrade", "zero")
    assert code == 0, err
    restored = by_id(fhir.patients())
    assert restored.keys() == before.keys()
    assert all(content(restored[pid]) == content(before[pid]) for pid in before)
    assert {p["meta"]["versionId"] for p in restored.values()} == {"7"}  # three undos, three versions
    assert fhir.applied() == []


def test_a_real_change_in_the_middle_of_a_chain_is_still_a_conflict(fhir_settings, fhir, scripts):
    """Content, not versions: the chain's own undo is not a change, a clinician's edit is."""
    seed(fhir, 5)
    system = fhir.system + "|"
    scripts.add("gender", upgrade=CHAIN_GENDER.format(system=system), downgrade="ctx.undo()")
    scripts.add("append", upgrade=APPEND.format(system=system, new=NEW), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirdowngrade")[0] == 0  # "append" reverted: version 4, content of version 2
    edited = fhir.patients()[0]
    edited["birthDate"] = "1970-01-01"
    fhir.http.put(fhir.url(f"Patient/{edited['id']}"), json=edited, headers=FHIR_JSON,
                  timeout=30).raise_for_status()
    code, out, err = call("fhirdowngrade")
    assert code == 1
    assert f"Patient/{edited['id']}" in err and "wrote nothing" in err and "force=True" in err
    assert "back to the version" not in err  # no impossible advice
    assert all(p["gender"] == "female" for p in fhir.patients())


def test_fake_after_reset_adopts_the_latest_application_so_undo_works_again(fhir_settings, fhir, scripts):
    before = by_id(seed(fhir, 6))
    scripts.add("gender", upgrade=CHAIN_GENDER.format(system=fhir.system + "|"), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirreset", interactive=False)[0] == 0
    code, out, _ = call("fhirmigrate", fake=True)
    assert code == 0
    assert "Adopted the recorded writes of 1 earlier attempt(s) of gender" in out
    code, _, err = call("fhirdowngrade")
    assert code == 0, err
    assert all(content(p) == content(before[p["id"]]) for p in fhir.patients())


def test_fake_of_a_migration_never_applied_says_there_is_nothing_to_adopt(fhir_settings, fhir, scripts):
    scripts.add("never", upgrade=CHAIN_GENDER.format(system=fhir.system + "|"), downgrade="ctx.undo()")
    code, out, _ = call("fhirmigrate", fake=True)
    assert code == 0
    assert "No earlier application of never to adopt" in out and "cannot revert it" in out


# --- forged records ------------------------------------------------------------------------------


def forge(genuine: dict, targets: list[dict]) -> dict:
    """A copy of a genuine Provenance (tags, policy, agents, signature and all) pointed elsewhere."""
    copied = copy.deepcopy(genuine)
    copied.pop("id", None)
    copied.pop("meta", None)
    copied["meta"] = {"tag": genuine["meta"]["tag"]}
    copied["target"] = targets
    copied.pop("entity", None)
    return copied


def test_a_forged_copy_of_a_genuine_provenance_changes_nothing(fhir_settings, fhir, scripts, fhir_base_url):
    patients = seed(fhir, 5)
    touched, untouched = patients[:3], patients[3:]
    revision = scripts.add("reshape", upgrade=(
        "with ctx.batch() as b:\n"
        f"    for pid in {[p['id'] for p in touched]!r}:\n"
        "        p = ctx.read('Patient', pid, as_dict=True)\n"
        "        p['gender'] = 'other'\n"
        "        b.update(p)\n"
        f"    b.create({fhir.patient_code('created')})\n"), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    # Another project's migration state, and an AuditEvent: things a forger would love undone
    # (the AuditEvent where the server keeps ours; Helios keeps none).
    other_state = post(fhir, {"resourceType": "Basic",
                              "identifier": [{"system": STATE_SYSTEM, "value": f"other-{fhir.state_id}"}],
                              "code": {"coding": [{"system": "http://our.migration.system", "code": "abc"}]}})
    kept = fhir.kept_audit_events()
    audit = kept[0] if kept else None
    victims = untouched + [other_state]
    genuine = provenance_of(fhir, revision)
    update = next(p for p in genuine if p["activity"]["coding"][0]["code"] == "UPDATE")
    create = next(p for p in genuine if p["activity"]["coding"][0]["code"] == "CREATE")
    forged_update = forge(update, [
        {"reference": f"{v['resourceType']}/{v['id']}/_history/{v['meta']['versionId']}",
         "extension": [{"url": "http://fhir.migration.system/StructureDefinition/resulting-version",
                        "valueString": v["meta"]["versionId"]},
                       {"url": "http://fhir.migration.system/StructureDefinition/previous-version",
                        "valueString": v["meta"]["versionId"]}]} for v in victims]
        + ([{"reference": f"AuditEvent/{audit['id']}"}] if audit else []))
    forged_create = forge(create, [dict(create["target"][0], reference=f"Patient/{v['id']}/_history/1")
                                   for v in untouched])
    unsigned = forge(update, [{"reference": f"Patient/{untouched[0]['id']}"}])  # no version either
    del unsigned["signature"]
    for forged in (forged_update, forged_create, unsigned):
        post(fhir, forged)
    victims_before = {v["id"]: fhir.get(f"{v['resourceType']}/{v['id']}") for v in victims}
    audit_before = fhir.get(f"AuditEvent/{audit['id']}") if audit else None

    code, out, err = call("fhirdowngrade")
    assert code == 0, err
    assert "undo ignored" in out + err and "cannot prove this tool wrote" in out + err
    for victim in victims:  # not deleted, not rolled back: the same version as before
        now = fhir.get(f"{victim['resourceType']}/{victim['id']}")
        assert now == victims_before[victim["id"]]
    if audit:
        assert fhir.get(f"AuditEvent/{audit['id']}") == audit_before
    # The genuine record was obeyed: the migration's own changes are reverted.
    now = by_id(fhir.patients())
    assert all(now[p["id"]].get("gender") == "unknown" for p in touched)
    assert not any(p["identifier"][0]["value"] == "created" for p in now.values())


def test_undo_of_records_that_are_not_signed_needs_trust_unsigned(fhir_settings, fhir, scripts):
    seed(fhir, 3)
    revision = scripts.add("legacy", upgrade=CHAIN_GENDER.format(system=fhir.system + "|"),
                           downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    for record in provenance_of(fhir, revision):  # as versions before signatures wrote them
        record.pop("signature")
        fhir.http.put(fhir.url(f"Provenance/{record['id']}"), json=record, headers=FHIR_JSON,
                      timeout=30).raise_for_status()
    code, _, err = call("fhirdowngrade")
    assert code == 1
    assert "trust_unsigned=True" in err and "Nothing was reverted" in err
    assert all(p["gender"] == "female" for p in fhir.patients())
    path = scripts.path / "legacy.py"
    path.write_text(path.read_text().replace("ctx.undo()", "ctx.undo(trust_unsigned=True)"))
    code, _, err = call("fhirdowngrade")
    assert code == 0, err
    assert all(p["gender"] == "unknown" for p in fhir.patients())


FAIL_AFTER_FIRST_BUNDLE = """
import os
with ctx.batch(size=2) as batch:
    for i, p in enumerate(ctx.search('Patient', identifier={system!r}, _count=2, as_dict=True, read_ahead=False)):
        if i == 2 and os.path.exists({flag!r}):
            raise RuntimeError('stopped on purpose after the first bundle')
        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})
        batch.update(p)
"""


def test_resume_ignores_a_forged_record_and_migrates_every_resource_once(fhir_settings, fhir, scripts, tmp_path):
    seed(fhir, 6)
    flag = tmp_path / "fail"
    flag.write_text("")
    revision = scripts.add("append", upgrade=FAIL_AFTER_FIRST_BUNDLE.format(
        system=fhir.system + "|", flag=str(flag), new=NEW))
    code, _, err = call("fhirmigrate")
    assert code == 1 and "stopped on purpose" in err
    done = [p for p in fhir.patients() if appended(p)]
    waiting = [p for p in fhir.patients() if not appended(p)]
    assert len(done) == 2 and len(waiting) == 4
    [genuine] = provenance_of(fhir, revision)
    post(fhir, forge(genuine, [
        {"reference": f"Patient/{p['id']}/_history/2",
         "extension": [{"url": "http://fhir.migration.system/StructureDefinition/resulting-version",
                        "valueString": "2"},
                       {"url": "http://fhir.migration.system/StructureDefinition/previous-version",
                        "valueString": "1"}]} for p in waiting]))
    flag.unlink()
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "2 resource(s) it wrote are skipped" in out
    assert "could not be verified" in out
    assert all(len(appended(p)) == 1 for p in fhir.patients())  # every one, exactly once
    assert fhir.applied() == [revision]


# --- bulk patch ----------------------------------------------------------------------------------


def test_bulk_patch_searches_exactly_what_ctx_search_would(fhir_settings, fhir, scripts):
    for value in ("A+B", "A B"):
        post(fhir, {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": value}]})
    job = SERVER_JOB if offers_bulk_patch(fhir) else ""  # the job's search (bundles use ctx.search)
    scripts.add("plus", upgrade=CHAIN_BULK.format(system=f"{fhir.system}|A+B", job=job), downgrade="ctx.undo()")
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    patients = {p["identifier"][0]["value"]: p for p in fhir.patients()}
    assert patients["A+B"].get("active") is True and "active" not in patients["A B"]
    assert fhir.search("Provenance", target=f"Patient/{patients['A+B']['id']}")
    assert fhir.search("Provenance", target=f"Patient/{patients['A B']['id']}") == []
    assert call("fhirdowngrade")[0] == 0
    assert all("active" not in p for p in fhir.patients())


BULK_ACTIVE = CHAIN_BULK.replace("{job}", SERVER_JOB)  # these tests are about the server's job
BULK_APPEND = (  # not idempotent: two jobs would append twice
    "ctx.bulk_patch('Patient', [{{'type': 'add', 'path': 'Patient', 'name': 'identifier', "
    "'value': {{'valueIdentifier': {{'system': {new!r}, 'value': 'bulk'}}}}}}], identifier={system!r}, "
    "server_job=True)\n")


def test_a_job_whose_start_answer_was_lost_is_never_started_twice(fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy, Rule

    if not offers_bulk_patch(fhir):
        pytest.skip("the server offers no $hapi.fhir.bulk-patch job (HAPI only)")
    proxy = HostileProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, RETRIES=0)
        proxy.add(Rule("POST", r"\$hapi\.fhir\.bulk-patch$", times=1, after=lambda ex: ex.drop("response")))
        seed(fhir, 8)
        scripts.add("append", upgrade=BULK_APPEND.format(system=fhir.system + "|", new=NEW),
                    downgrade="ctx.undo()")
        code, _, err = call("fhirmigrate")
        assert code == 1
        code, _, err = call("fhirmigrate")  # the job may be running: no second one
        assert code == 1
        assert "may still be running" in err and "fhirmigrate --forget-bulk-job" in err
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 1
        code, out, err = call("fhirmigrate", forget_bulk_job=True, interactive=False)
        assert code == 0, err
        assert "Forgot the bulk job" in out
        code, _, err = call("fhirmigrate")  # a human decided: a new job, then Provenance
        assert code == 0, err
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 2
        assert all(appended(p) for p in fhir.patients())
        assert any(e["subtype"][0]["code"] == "bulk-job-forgotten" for e in fhir.audit_events()
                   if e.get("subtype"))
    finally:
        proxy.stop()


def test_a_job_status_url_on_another_origin_is_recorded_and_not_followed(fhir_settings, settings, fhir, scripts,
                                                                          catcher):
    catcher_url = catcher.origin
    from ..support.hostile import HostileProxy, Rule

    if not offers_bulk_patch(fhir):
        pytest.skip("the server offers no $hapi.fhir.bulk-patch job (HAPI only)")
    proxy = HostileProxy(fhir.base_url).start()

    def elsewhere(exchange):
        exchange.response_headers = [(k, f"{catcher_url}/fhir/$job?id=1" if k == "Content-Location" else v)
                                     for k, v in exchange.response_headers]

    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, RETRIES=0)
        proxy.add(Rule("POST", r"\$hapi\.fhir\.bulk-patch$", after=elsewhere))
        seed(fhir, 4)
        scripts.add("activate", upgrade=BULK_ACTIVE.format(system=fhir.system + "|"))
        for _ in range(2):
            code, _, err = call("fhirmigrate")
            assert code == 1 and "another origin" in err and "may still be running" in err
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 1
        attempt = next(e for e in fhir.state()["extension"] if e["url"].endswith("/migration-attempt"))
        assert any(p["url"] == "job" and catcher_url in p["valueString"] for p in attempt["extension"])
    finally:
        proxy.stop()


def test_a_reattached_bulk_job_is_undone_like_any_other(fhir, scripts, clean_env):
    from ..support.hostile import HostileProxy

    if not offers_bulk_patch(fhir):
        pytest.skip("the server offers no $hapi.fhir.bulk-patch job (HAPI only)")
    proxy = HostileProxy(fhir.base_url).start()
    try:
        before = by_id(seed(fhir, 30))
        scripts.add("activate", upgrade=BULK_ACTIVE.format(system=fhir.system + "|"), downgrade="ctx.undo()")
        env = manage_env(fhir, scripts, FHIR_BASE_URL=proxy.base_url)
        process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not proxy.requests("GET", r"bulk-patch-status"):
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        rerun = subprocess.run([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 1  # re-attached
        assert all(p.get("active") is True for p in fhir.patients())
        down = subprocess.run([sys.executable, "-m", "django", "fhirdowngrade"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        assert all(content(p) == content(before[p["id"]]) for p in fhir.patients())
    finally:
        proxy.stop()


# --- the HTTP layer ------------------------------------------------------------------------------


def test_a_redirect_to_another_origin_is_refused_and_nothing_is_sent_there(
        fhir_settings, settings, fhir, scripts, catcher):
    from ..support.hostile import HostileProxy, Rule

    catcher_url = catcher.origin
    seed(fhir, 3)
    proxy = HostileProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, RETRIES=0)
        proxy.add(Rule("POST", r"^/?$", before=lambda ex: ex.answer(
            307, b"", {"Location": f"{catcher_url}/fhir/"})))
        scripts.add("gender", upgrade=CHAIN_GENDER.format(system=fhir.system + "|"))
        code, out, err = call("fhirmigrate")
        assert code == 1, (out, err, proxy.requests())
        assert "redirect (307)" in err and catcher_url.replace("http://", "") in err
        assert proxy.base_url.split("/fhir")[0].replace("http://", "") in err
        assert all(p["gender"] == "unknown" for p in fhir.patients())
        assert fhir.applied() == []
        assert catcher.requests() == []  # the bundle (clinical data) was not sent there
    finally:
        proxy.stop()


# --- exactly-once windows -------------------------------------------------------------------------


def test_sigterm_while_the_lease_is_being_taken_releases_it(fhir, scripts, clean_env):
    from ..support.hostile import HostileProxy, Rule

    proxy = HostileProxy(fhir.base_url).start()
    arrived = []

    def late_answer(exchange):  # the server has stored the state with our lease; the answer is late
        arrived.append(time.monotonic())
        time.sleep(6)

    try:
        proxy.add(Rule("POST", r"^/Basic", after=late_answer))
        scripts.add("one", upgrade="pass")
        env = manage_env(fhir, scripts, FHIR_BASE_URL=proxy.base_url, FHIR_MIGRATIONS_LOCK_TTL="600")
        process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)  # the state (with our lease) is on the server; its answer is not back
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        assert process.returncode == 143
        state = fhir.state()
        assert state is not None
        assert not any(e["url"].endswith("migration-lock") for e in state.get("extension", []))
    finally:
        proxy.stop()


def test_sigterm_while_the_page_reader_waits_out_a_long_retry_after_ends_promptly(fhir, scripts, clean_env):
    from ..support.hostile import HostileProxy, Rule

    proxy = HostileProxy(fhir.base_url).start()
    try:
        seed(fhir, 12)
        # Every next page (recognised by the links the proxy served, whatever the server's paging URLs).
        proxy.add(Rule("GET", "", page=True, times=-1, before=lambda ex: ex.answer(
            503, {"resourceType": "OperationOutcome"}, {"Content-Type": "application/fhir+json",
                                                         "Retry-After": "120"})))
        scripts.add("slow", upgrade=(
            f"for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, _count=2, as_dict=True):\n"
            "    import time; time.sleep(0.5)\n"))
        env = manage_env(fhir, scripts, FHIR_BASE_URL=proxy.base_url, FHIR_MIGRATIONS_RETRIES="5")
        process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not proxy.requests("GET", page=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        process.communicate(timeout=60)
        assert time.monotonic() - stopped < 15, "a background thread held the process"
        assert process.returncode == 143
    finally:
        proxy.stop()


def test_workers_do_not_send_before_the_attempt_is_recorded(fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy, Rule

    seed(fhir, 60)
    proxy = HostileProxy(fhir.base_url).start()
    recorded: list[float] = []

    def slow_attempt_record(exchange):
        if b"migration-attempt" in (exchange.body or b"") and not recorded:
            exchange.delay = 1.5
            recorded.append(time.monotonic() + 1.5)

    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, WORKERS=3)
        proxy.add(Rule("PUT", r"^/Basic/", before=slow_attempt_record))
        scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=NEW).replace(
            "size=50", "size=10"))
        code, _, err = call("fhirmigrate")
        assert code == 0, err
        bundles = proxy.requests("POST", r"^/?$")
        assert recorded and bundles
        assert min(b.at for b in bundles) >= recorded[0] - 0.05
        assert all(len(appended(p)) == 1 for p in fhir.patients())
    finally:
        proxy.stop()


# --- settings and keys ----------------------------------------------------------------------------


def test_the_cli_without_a_signing_key_says_which_setting_to_give_and_writes_nothing(fhir, scripts, clean_env):
    from ..support.helpers import run

    scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})")
    clean_env.delenv("FHIR_MIGRATIONS_SIGNING_KEY")
    env = dict(FHIR_BASE_URL=fhir.base_url, FHIR_MIGRATIONS_STATE_ID=fhir.state_id,
               MIGRATION_SCRIPTS_DIR=str(scripts.path))
    result = run([sys.executable, "-m", "django_fhir_migrations", "migrate"], env=env)
    assert result.returncode == 1
    assert "SIGNING_KEY" in result.stderr and "FHIR_MIGRATIONS_SIGNING_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert fhir.patients() == [] and fhir.state() is None
