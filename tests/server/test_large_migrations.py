"""Large data migrations (DESIGN, "Large data migrations"): Provenance for every write through
ctx, resume after a failure or a kill -9, and ctx.undo(); against the real HAPI, checked by
reading what the server holds with plain HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ..support.helpers import REPO, call

NEW = "urn:django-fhir-migrations:test:appended"
PROVENANCE_TAG = "http://fhir.migration.system/migration-attempt"


def seed(fhir, count: int, prefix: str = "p") -> list[dict]:
    """`count` Patients in the test's namespace, created with plain HTTP (not by the tool)."""
    created = []
    for start in range(0, count, 200):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "gender": "unknown",
                          "identifier": [{"system": fhir.system, "value": f"{prefix}{i:04d}"}],
                          "name": [{"family": f"Seed{i}"}]},
             "request": {"method": "POST", "url": "Patient"}} for i in range(start, min(count, start + 200))]}
        reply = fhir.http.post(fhir.base_url, json=bundle, timeout=120,
                               headers={"Content-Type": "application/fhir+json", "Prefer": "return=representation"})
        reply.raise_for_status()
        created += [e["resource"] for e in reply.json()["entry"]]
    return created


def provenance_for(fhir, reference: str) -> list[dict]:
    return fhir.search("Provenance", target=reference)


def appended(patient: dict) -> list[dict]:
    return [i for i in patient.get("identifier", []) if i.get("system") == NEW]


APPEND = (  # not idempotent on purpose: run twice on a resource, it appends twice
    "with ctx.batch(size=50) as batch:\n"
    "    for p in ctx.search('Patient', identifier={system!r}, _count=50, as_dict=True):\n"
    "        p['identifier'].append({{'system': {new!r}, 'value': p['id']}})\n"
    "        batch.update(p)\n"
)


# --- Provenance ------------------------------------------------------------------------------


def test_every_write_through_ctx_has_a_version_specific_provenance(fhir_settings, fhir, scripts):
    [kept, deleted, patched] = seed(fhir, 3)
    revision = scripts.add("writes", upgrade=(
        f"p = ctx.read('Patient', {kept['id']!r}, as_dict=True)\n"
        "p['gender'] = 'female'\n"
        "ctx.update(p)\n"
        f"ctx.delete('Patient', {deleted['id']!r})\n"
        f"ctx.patch('Patient', {patched['id']!r}, [{{'op': 'add', 'path': '/active', 'value': True}}])\n"
        "with ctx.batch() as b:\n"
        f"    b.create({fhir.patient_code('new1')})\n"
        f"    b.create({fhir.patient_code('new2')})\n"
    ))
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    new = [p for p in fhir.patients() if p["identifier"][0]["value"].startswith("new")]
    expected = {f"Patient/{kept['id']}": ("UPDATE", "2"), f"Patient/{deleted['id']}": ("DELETE", "2"),
                f"Patient/{patched['id']}": ("UPDATE", "2"),
                **{f"Patient/{p['id']}": ("CREATE", "1") for p in new}}
    for reference, (activity, version) in expected.items():
        [provenance] = provenance_for(fhir, reference)  # the standard search finds it
        [index] = [i for i, t in enumerate(provenance["target"]) if t["reference"].split("/_history/")[0] == reference]
        target = provenance["target"][index]
        # The versions of every target, in order, in one extension: previous>resulting.
        [versions] = [e["valueString"] for e in provenance["extension"] if e["url"].endswith("/target-versions")]
        assert versions.split(" ")[index] == {"CREATE": ">1"}.get(activity, f"{int(version) - 1}>{version}")
        if activity == "CREATE":
            # Committed with the creates in one transaction, where the server resolves each
            # placeholder to `Patient/<id>` and a placeholder cannot carry a version: the
            # version (always the first) is in target-versions, signed; no second request.
            assert target["reference"] == reference
        else:
            assert target["reference"] == f"{reference}/_history/{version}"
        assert provenance["activity"]["coding"][0]["code"] == activity
        assert provenance["recorded"]
        assert f"http://fhir.migration.system/migration/{revision}" in provenance["policy"]
        whos = [a["who"]["display"] for a in provenance["agent"]]
        assert any("django-fhir-migrations" in w for w in whos) and any("@" in w for w in whos)
        assert any(t["system"] == PROVENANCE_TAG for t in provenance["meta"]["tag"])
        validated = fhir.http.post(fhir.url("Provenance/$validate"), json=provenance, timeout=60,
                                   headers={"Content-Type": "application/fhir+json"}).json()
        errors = [i for i in validated["issue"] if i["severity"] in ("error", "fatal")]
        assert errors == [], errors
    # One Provenance for the two creates of the batch bundle.
    assert provenance_for(fhir, f"Patient/{new[0]['id']}")[0]["id"] == \
        provenance_for(fhir, f"Patient/{new[1]['id']}")[0]["id"]


def test_provenance_can_be_turned_off(fhir_settings, settings, fhir, scripts):
    settings.FHIR_MIGRATIONS = dict(fhir_settings, PROVENANCE=False)
    scripts.add("plain", upgrade=f"ctx.create({fhir.patient_code('plain')})")
    assert call("fhirmigrate")[0] == 0
    [patient] = fhir.patients()
    assert provenance_for(fhir, f"Patient/{patient['id']}") == []


def test_a_create_with_no_possible_key_says_so_at_the_first_write(fhir_settings, fhir, scripts):
    scripts.add("keyless", upgrade="ctx.create({'resourceType': 'Basic', 'code': {'text': 'x'}})")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "idempotency key" in err and "key=" in err
    assert fhir.applied() == []


# --- resume ----------------------------------------------------------------------------------


def manage_env(fhir, scripts, **extra: str) -> dict[str, str]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.django_settings", PYTHONPATH=str(REPO),
               FHIR_BASE_URL=fhir.base_url, FHIR_MIGRATIONS_STATE_ID=fhir.state_id,
               MIGRATION_SCRIPTS_DIR=str(scripts.path), FHIR_MIGRATIONS_LOCK_TTL="6")
    env.update(extra)
    return env


@pytest.mark.parametrize("workers", [1, 3])
def test_killed_mid_migration_then_rerun_changes_each_resource_exactly_once(workers, fhir, scripts, clean_env):
    seed(fhir, 600)
    slow = APPEND.format(system=fhir.system + "|", new=NEW).replace(
        "        batch.update(p)\n", "        batch.update(p)\n        import time; time.sleep(0.004)\n")
    revision = scripts.add("append", upgrade=slow)
    env = manage_env(fhir, scripts, FHIR_MIGRATIONS_WORKERS=str(workers))
    process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # This test's Patients only: other runs on a shared server append the same system.
        done = fhir.get("Patient", identifier=[fhir.system + "|", f"{NEW}|"], _summary="count")["total"]
        if done >= 150:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert 150 <= done < 600, done
    assert fhir.applied() == []

    shown = subprocess.run([sys.executable, "-m", "django", "fhirshowmigrations"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "partially applied" in shown.stdout, shown.stdout

    rerun = subprocess.run([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming" in rerun.stdout
    patients = fhir.patients()
    assert len(patients) == 600
    assert all(p["meta"]["versionId"] == "2" for p in patients)
    assert all(len(appended(p)) == 1 for p in patients)
    assert fhir.applied() == [revision]
    state = fhir.state()
    assert not any(e["url"].endswith("/migration-attempt") for e in state.get("extension", []))


def test_a_batch_with_a_refused_entry_records_provenance_for_exactly_the_others(fhir_settings, fhir, scripts):
    patients = seed(fhir, 6)
    stale = patients[3]["id"]
    scripts.add("recode", upgrade=(
        "with ctx.batch(raise_errors=False) as b:\n"
        f"    for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True):\n"
        "        p['gender'] = 'female'\n"
        f"        if p['id'] == {stale!r}:\n"
        "            p['meta']['versionId'] = '9'  # stale: the server refuses this one\n"
        "        b.update(p)\n"
        "assert len(b.failures) == 1, b.failures\n"))
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    for patient in patients:
        recorded = provenance_for(fhir, f"Patient/{patient['id']}")
        assert len(recorded) == (0 if patient["id"] == stale else 1), patient["id"]


def test_a_failed_third_bundle_then_a_fix_creates_exactly_300(fhir_settings, fhir, scripts, admin_client):
    def body(bad: str) -> str:
        return (
            "with ctx.transaction(size=100) as t:\n"
            "    for i in range(300):\n"
            f"        birth = {bad!r} if i == 250 else '1980-01-01'\n"
            f"        t.create({{'resourceType': 'Patient', 'birthDate': birth, 'identifier': "
            f"[{{'system': {fhir.system!r}, 'value': f'c{{i:03d}}'}}]}})\n"
        )

    revision = scripts.add("cohort", upgrade=body("not-a-date"))
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "200 entries in 2 earlier bundles were committed" in err
    assert len(fhir.patients()) == 200
    code, out, _ = call("fhirshowmigrations")
    assert "partially applied: 200 resource(s) written" in out
    page = admin_client.get("/admin/django_fhir_migrations/migrationstatus/").content.decode()
    assert "partially applied: 200 resource(s) written" in page
    scripts.add("cohort", upgrade=body("1980-01-01"), revision=revision, down=None)
    scripts.revisions.pop()
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    values = sorted(p["identifier"][0]["value"] for p in fhir.patients())
    assert values == [f"c{i:03d}" for i in range(300)]  # exactly 300: no duplicates


# --- undo ------------------------------------------------------------------------------------


def comparable(patient: dict) -> dict:
    return {k: v for k, v in patient.items() if k != "meta"}


def test_undo_reverts_updates_creates_and_deletes(fhir_settings, fhir, scripts):
    before = {p["id"]: p for p in seed(fhir, 140)}
    ids = sorted(before)
    to_update, to_delete = ids[:120], ids[120:]
    upgrade = (
        "with ctx.batch(size=50) as b:\n"
        f"    for pid in {to_update!r}:\n"
        "        p = ctx.read('Patient', pid, as_dict=True)\n"
        "        p['gender'] = 'other'\n"
        f"        p['identifier'].append({{'system': {NEW!r}, 'value': pid}})\n"
        "        b.update(p)\n"
        f"    for pid in {to_delete!r}:\n"
        "        b.delete('Patient', pid)\n"
        "    for i in range(30):\n"
        f"        b.create({{'resourceType': 'Patient', 'identifier': [{{'system': {fhir.system!r}, "
        "'value': f'created{i}'}]})\n"
    )
    revision = scripts.add("reshape", upgrade=upgrade, downgrade="ctx.undo()")
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert len(fhir.patients()) == 120 + 30
    code, out, err = call("fhirdowngrade")
    assert code == 0, err
    after = {p["id"]: p for p in fhir.patients()}
    assert sorted(after) == ids  # created ones gone, deleted ones back under the same ids
    for pid in ids:
        assert comparable(after[pid]) == comparable(before[pid]), pid
    assert fhir.applied() == []
    # Undo left Provenance of its own, and the migration can be applied again.
    assert len(provenance_for(fhir, f"Patient/{to_update[0]}")) == 2
    code, _, err = call("fhirmigrate")
    assert code == 0, err
    assert fhir.applied() == [revision] and len(fhir.patients()) == 150


def test_undo_refuses_when_a_resource_changed_since_and_writes_nothing(fhir_settings, fhir, scripts):
    patients = seed(fhir, 5)
    scripts.add("recode", upgrade=(
        f"for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True):\n"
        "    p['gender'] = 'female'\n"
        "    ctx.update(p)\n"), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    changed = fhir.get(f"Patient/{patients[2]['id']}")
    changed["gender"] = "male"
    fhir.http.put(fhir.url(f"Patient/{changed['id']}"), json=changed, timeout=30,
                  headers={"Content-Type": "application/fhir+json"}).raise_for_status()
    code, out, err = call("fhirdowngrade")
    assert code == 1
    assert f"Patient/{changed['id']}" in err and "now version 3" in err and "wrote nothing" in err
    versions = sorted(p["meta"]["versionId"] for p in fhir.patients())
    assert versions == ["2", "2", "2", "2", "3"]  # nothing reverted
    assert len(fhir.applied()) == 1


def test_undo_of_a_migration_applied_without_provenance_is_refused(fhir_settings, fhir, scripts):
    scripts.add("old", downgrade="ctx.undo()")
    assert call("fhirmigrate", "--fake")[0] == 0
    code, _, err = call("fhirdowngrade")
    assert code == 1 and "without Provenance" in err and "--fake" in err
    assert len(fhir.applied()) == 1


def test_an_interrupted_undo_resumes_and_reverts_each_resource_once(fhir_settings, settings, fhir, scripts):
    from ..support.fault_proxy import Fault, FaultProxy

    patients = seed(fhir, 30)
    scripts.add("tag", upgrade=APPEND.format(system=fhir.system + "|", new=NEW), downgrade="ctx.undo()")
    assert call("fhirmigrate")[0] == 0
    proxy = FaultProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, BUNDLE_SIZE=10, RETRIES=0)
        # The undo's second bundle is committed by the server but its answer is lost.
        proxy.add(Fault("POST", r"^/?$", "drop-response", skip=2))
        code, _, err = call("fhirdowngrade")
        assert code == 1
        code, _, err = call("fhirdowngrade")
        assert code == 0, err
    finally:
        proxy.stop()
    for patient in fhir.patients():
        assert appended(patient) == []
        history = fhir.get(f"Patient/{patient['id']}/_history")
        assert history["total"] == 3  # seeded, appended, reverted once
    assert len(patients) == 30 and fhir.applied() == []


# --- the server's bulk patch -----------------------------------------------------------------


BULK = (
    "n = ctx.bulk_patch('Patient', [{{'type': 'add', 'path': 'Patient', 'name': 'identifier', "
    "'value': {{'valueIdentifier': {{'system': {new!r}, 'value': 'bulk'}}}}}}], "
    "identifier={system!r}{job})\n"
    "assert n == 12, n\n"
)
SERVER_JOB = ", server_job=True"  # patch bundles are the default (measured faster: bulk.py)


def offers_bulk_patch(fhir) -> bool:
    rest = fhir.get("metadata").get("rest") or [{}]
    return any(op.get("name") == "hapi.fhir.bulk-patch" for op in rest[0].get("operation") or [])


KICK_OFF = r"\$hapi\.fhir\.bulk-patch$"


def assert_patched_once_recorded_and_undone(fhir) -> None:
    """Every Patient patched once and named by a Provenance; the downgrade takes the patch out."""
    patients = fhir.patients()
    assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in patients)
    assert all(provenance_for(fhir, f"Patient/{p['id']}") for p in patients)
    assert call("fhirdowngrade")[0] == 0
    assert all(appended(p) == [] for p in fhir.patients())


@pytest.mark.parametrize("job", [SERVER_JOB, ""], ids=["server_job=True", "default"])
def test_bulk_patch_runs_as_the_servers_job_when_asked_and_as_patch_bundles_by_default(
        job, fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy

    if job and not offers_bulk_patch(fhir):
        pytest.skip("this server has no $hapi.fhir.bulk-patch (the default case covers patch bundles)")
    proxy = HostileProxy(fhir.base_url).start()  # forwards everything; counts the job's kick-off
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url)
        seed(fhir, 12)
        scripts.add("bulk", upgrade=BULK.format(new=NEW, system=fhir.system + "|", job=job),
                    downgrade="ctx.undo()")
        code, out, err = call("fhirmigrate")
        assert code == 0, err
        assert len(proxy.requests("POST", KICK_OFF)) == (1 if job else 0)
        if job:
            assert "    bulk patch: 12 done in " in out and ": 0 done" not in out  # what the job changed
        assert_patched_once_recorded_and_undone(fhir)
    finally:
        proxy.stop()


def test_bulk_patch_where_the_server_has_no_job_sends_patch_bundles_and_refuses_server_job(
        fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy, Rule

    def hide_operation(exchange):
        body = exchange.response_json()
        for rest in body.get("rest") or []:
            rest["operation"] = [op for op in rest.get("operation") or []
                                 if op.get("name") != "hapi.fhir.bulk-patch"]
        exchange.set_response_json(body)

    proxy = HostileProxy(fhir.base_url).start()
    try:
        proxy.add(Rule("GET", r"^/metadata", after=hide_operation),
                  Rule("POST", r"bulk-patch", before=lambda ex: ex.answer(404, {"resourceType": "OperationOutcome"})))
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url)
        seed(fhir, 12)
        first = scripts.add("forced", upgrade=BULK.format(new=NEW, system=fhir.system + "|", job=SERVER_JOB))
        code, out, err = call("fhirmigrate")
        assert code == 1 and "server_job=True" in err and "lists no $hapi.fhir.bulk-patch" in err, err
        assert all(appended(p) == [] for p in fhir.patients()) and fhir.applied() == []
        scripts.revisions.remove(first)  # the same migration, edited to take the default
        scripts.add("forced", upgrade=BULK.format(new=NEW, system=fhir.system + "|", job=""), revision=first,
                    down=None, downgrade="ctx.undo()")
        code, out, err = call("fhirmigrate")
        assert code == 0, err
        assert proxy.requests("POST", "bulk-patch") == []
        assert_patched_once_recorded_and_undone(fhir)
    finally:
        proxy.stop()


def test_a_killed_run_reattaches_to_its_bulk_job_instead_of_starting_another(fhir, scripts, clean_env):
    from ..support.hostile import HostileProxy

    if not offers_bulk_patch(fhir):
        pytest.skip("this server has no $hapi.fhir.bulk-patch")
    proxy = HostileProxy(fhir.base_url).start()
    try:
        seed(fhir, 12)
        scripts.add("bulk", upgrade=BULK.format(new=NEW, system=fhir.system + "|", job=SERVER_JOB))
        env = manage_env(fhir, scripts, FHIR_BASE_URL=proxy.base_url)
        process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60

        def job_recorded() -> bool:
            state = fhir.state() or {}
            return any(p["url"] == "job" and p["valueString"].startswith("http")
                       for e in state.get("extension", [])
                       if e["url"].endswith("/migration-attempt") for p in e["extension"])

        # Killed once the job's status URL is recorded (killed between the kick-off and that
        # state write, the next run refuses to start another: see the test after this one).
        while not job_recorded() and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 1
        state = fhir.state()
        [attempt] = [e for e in state["extension"] if e["url"].endswith("/migration-attempt")]
        assert any(p["url"] == "job" for p in attempt["extension"])
        rerun = subprocess.run([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert len(proxy.requests("POST", r"\$hapi\.fhir\.bulk-patch$")) == 1  # re-attached
        patients = fhir.patients()
        assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in patients)
        assert all(len(provenance_for(fhir, f"Patient/{p['id']}")) == 1 for p in patients)
    finally:
        proxy.stop()


TWO_JOBS = BULK + (
    "ctx.bulk_patch('Patient', [{{'type': 'add', 'path': 'Patient', 'name': 'active', "
    "'value': {{'valueBoolean': True}}}}], identifier={system!r}{job})\n"
)


def test_two_bulk_jobs_of_one_migration_each_run_once_when_killed_during_the_second(fhir, scripts, clean_env):
    """Each ctx.bulk_patch call has its own job: the second call starts its own (it does not
    re-attach to the first's), and a run killed during the second passes the finished first by
    and re-attaches to the second; undo reverts both."""
    from ..support.hostile import HostileProxy

    if not offers_bulk_patch(fhir):
        pytest.skip("this server has no $hapi.fhir.bulk-patch")
    proxy = HostileProxy(fhir.base_url).start()
    try:
        seed(fhir, 12)
        scripts.add("jobs", upgrade=TWO_JOBS.format(new=NEW, system=fhir.system + "|", job=SERVER_JOB),
                    downgrade="ctx.undo()")
        env = manage_env(fhir, scripts, FHIR_BASE_URL=proxy.base_url)
        process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120

        def second_job_recorded() -> bool:
            state = fhir.state() or {}
            for e in state.get("extension", []):
                if e["url"].endswith("/migration-attempt"):
                    parts = {p["url"]: next(v for k, v in p.items() if k.startswith("value"))
                             for p in e["extension"] if p["url"] in ("job", "jobCall")}
                    if str(parts.get("job", "")).startswith("http") and parts.get("jobCall") == 2:
                        return True
            return False

        while not second_job_recorded() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert len(proxy.requests("POST", KICK_OFF)) == 2  # the second call started its own job
        rerun = subprocess.run([sys.executable, "-m", "django", "fhirmigrate"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert len(proxy.requests("POST", KICK_OFF)) == 2  # neither job started again
        patients = fhir.patients()
        assert all(len(appended(p)) == 1 and p.get("active") is True and p["meta"]["versionId"] == "3"
                   for p in patients)
        undo = subprocess.run([sys.executable, "-m", "django", "fhirdowngrade"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert undo.returncode == 0, undo.stderr
        assert all(appended(p) == [] and "active" not in p for p in fhir.patients())
    finally:
        proxy.stop()


# --- several bundles at once -------------------------------------------------------------------


def test_workers_send_bundles_at_once_and_hold_back_together_on_429(fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy, Rule

    seed(fhir, 300)
    proxy = HostileProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url, WORKERS=3, BUNDLE_SIZE=25)
        proxy.add(Rule("POST", r"^/?$", times=1, before=lambda ex: ex.answer(
            429, {"resourceType": "OperationOutcome"}, {"Content-Type": "application/fhir+json",
                                                          "Retry-After": "2"})))
        scripts.add("append", upgrade=APPEND.format(system=fhir.system + "|", new=NEW).replace(
            "size=50", "size=25"), downgrade="ctx.undo()")
        code, _, err = call("fhirmigrate")
        assert code == 0, err
        patients = fhir.patients()
        assert all(len(appended(p)) == 1 and p["meta"]["versionId"] == "2" for p in patients)
        posts = [s for s in proxy.requests("POST", r"^/?$")]
        refused = next(s for s in posts if s.status == 429)
        # Bundles already on their way when the 429 came back (the workers start together, once
        # the attempt is recorded) could not know; any sent later must wait out Retry-After.
        during = [s for s in posts if refused.at + 0.3 < s.at < refused.at + 1.8]
        assert during == [], "other workers went on while the server asked to wait"
        assert call("fhirdowngrade")[0] == 0
        assert all(appended(p) == [] for p in fhir.patients())
    finally:
        proxy.stop()


ORDERED = """
import uuid
run = uuid.uuid4().hex[:8]
with ctx.batch(size=10, workers=3) as b:
    for i in range(20):
        b.update({{"resourceType": "Patient", "id": f"ord-{{run}}-{{i}}",
                   "identifier": [{{"system": "{system}", "value": f"ord-{{i}}"}}]}}, check_version=False)
    for i in range(20):
        b.create({{"resourceType": "Observation", "status": "final", "code": {{"text": "ordered"}},
                   "identifier": [{{"system": "{system}", "value": f"obs-{{run}}-{{i}}"}}],
                   "subject": {{"reference": f"Patient/ord-{{run}}-{{i}}"}}}})
"""


def test_bundles_that_create_wait_for_the_ones_before_them_even_with_workers(fhir_settings, settings, fhir,
                                                                              scripts):
    """Observations referencing Patients created by the block's earlier bundles: HAPI refuses a
    reference to a resource that does not exist yet, so sending them side by side (the Patient
    bundles held back by the proxy) would fail them; the order of the block holds instead."""
    from ..support.hostile import HostileProxy, Rule

    def slow_patient_bundles(exchange):
        entries = (exchange.json() or {}).get("entry", [])
        if any(e.get("request", {}).get("url", "").startswith("Patient/") for e in entries):
            time.sleep(1.5)

    proxy = HostileProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url)
        proxy.add(Rule("POST", r"^/?$", before=slow_patient_bundles))
        by_hand = "\n".join(f"for r in ctx.search({t!r}, identifier={fhir.system + '|'!r}):\n    ctx.delete(r)"
                            for t in ("Observation", "Patient"))  # undo cannot revert upserts
        scripts.add("ordered", upgrade=ORDERED.format(system=fhir.system), downgrade=by_hand)
        code, _, err = call("fhirmigrate")
        assert code == 0, err
        observations = fhir.search("Observation", identifier=f"{fhir.system}|")
        assert len(observations) == 20 and len(fhir.patients()) == 20
        assert call("fhirdowngrade")[0] == 0
        assert fhir.search("Observation", identifier=f"{fhir.system}|") == [] and fhir.patients() == []
    finally:
        proxy.stop()


# --- long histories --------------------------------------------------------------------------


def test_a_long_history_moves_into_records_written_once_and_back(fhir_settings, fhir, scripts, monkeypatch):
    from django_fhir_migrations.engine import state as state_format

    monkeypatch.setattr(state_format, "INLINE_LIMIT", 3)
    revisions = [scripts.add(f"m{i}") for i in range(6)]
    assert call("fhirmigrate", "+2")[0] == 0
    state = fhir.state()
    assert sum(e["url"].endswith("/applied-migration") for e in state["extension"]) == 2
    assert call("fhirmigrate")[0] == 0
    state = fhir.state()
    assert not any(e["url"].endswith("/applied-migration") for e in state["extension"])
    [count] = [e["valueInteger"] for e in state["extension"] if e["url"].endswith("/applied-count")]
    assert count == 6 and fhir.applied() == revisions
    records = fhir.search("Basic", subject=f"Basic/{state['id']}")
    assert len(records) == 6 and all(r["meta"]["versionId"] == "1" for r in records)  # written once
    code, out, _ = call("fhirshowmigrations")
    assert code == 0 and out.count(" [X] ") == 6
    assert call("fhirdowngrade", "--steps", "4")[0] == 0
    state = fhir.state()
    assert sum(e["url"].endswith("/applied-migration") for e in state["extension"]) == 2
    assert fhir.search("Basic", subject=f"Basic/{state['id']}") == []
    assert fhir.applied() == revisions[:2]


def test_records_beyond_the_servers_include_limit_are_read_page_by_page(fhir_settings, settings, fhir, scripts,
                                                                       monkeypatch):
    from django_fhir_migrations.engine import state as state_format

    from ..support.hostile import HostileProxy, Rule

    monkeypatch.setattr(state_format, "INLINE_LIMIT", 2)
    revisions = [scripts.add(f"m{i}") for i in range(5)]
    assert call("fhirmigrate")[0] == 0

    def cap_includes(exchange):  # a server whose include limit is 2
        bundle = exchange.response_json()
        kept, included = [], 0
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode") == "include":
                included += 1
                if included > 2:
                    continue
            kept.append(entry)
        bundle["entry"] = kept
        exchange.set_response_json(bundle)

    proxy = HostileProxy(fhir.base_url).start()
    try:
        proxy.add(Rule("GET", r"_revinclude", after=cap_includes))
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url)
        code, out, _ = call("fhirshowmigrations")
        assert code == 0 and out.count(" [X] ") == 5
        assert proxy.requests("GET", r"subject=Basic")  # the records, read on their own
        assert call("fhirmigrate")[0] == 0 and "No migrations to apply" in call("fhirmigrate")[1]
    finally:
        proxy.stop()
    assert fhir.applied() == revisions
