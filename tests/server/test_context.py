"""`ctx`, the migration author's toolkit, against the real server."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

import pytest

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.context import MigrationContext
from django_fhir_migrations.engine.errors import BundleError, FhirServerError, VersionConflictError
from django_fhir_migrations.engine.fhir.client import FhirConnection
from django_fhir_migrations.engine.fhir.paging import PAGES_AHEAD, THREAD_NAME, search_entries

from ..support.helpers import call


@pytest.fixture
def make_ctx(fhir, clean_env):
    connections = []

    def build(**options):
        dry_run = options.pop("dry_run", False)
        values = {"BASE_URL": fhir.base_url, "STATE_ID": fhir.state_id}
        values.update(options)
        settings = Settings.build(values, environ={})
        connection = FhirConnection(settings)
        connections.append(connection)
        return MigrationContext(connection, settings, dry_run=dry_run, stdout=io.StringIO())

    yield build
    for connection in connections:
        connection.close()


def patient(fhir, value):
    return {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": value}]}


def seed_patients(fhir, count):
    entries = [{"resource": patient(fhir, f"p{i:03d}"), "request": {"method": "POST", "url": "Patient"}}
               for i in range(count)]
    reply = fhir.http.post(fhir.base_url, json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                           headers={"Content-Type": "application/fhir+json"}, timeout=60)
    reply.raise_for_status()


def test_search_follows_next_links_page_by_page(fhir, make_ctx):
    seed_patients(fhir, 10)
    ctx = make_ctx(PAGE_SIZE=3)
    results = ctx.search("Patient", read_ahead=False, identifier=f"{fhir.system}|")
    first = next(results)
    assert ctx.connection.request_count == 1  # lazily: one page fetched so far
    rest = list(results)
    assert ctx.connection.request_count == 4  # 10 matches / 3 per page
    assert type(first).__name__ == "Patient"  # fhirclient models by default
    values = {first.identifier[0].value} | {p.identifier[0].value for p in rest}
    assert values == {f"p{i:03d}" for i in range(10)}
    as_dicts = list(ctx.search("Patient", identifier=f"{fhir.system}|", as_dict=True))
    assert all(isinstance(p, dict) for p in as_dicts) and len(as_dicts) == 10
    assert ctx.count("Patient", identifier=f"{fhir.system}|") == 10


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_search_reads_up_to_pages_ahead_on_a_background_thread(fhir, make_ctx):
    seed_patients(fhir, 10)
    ctx = make_ctx(PAGE_SIZE=1)
    threads = []
    ctx.connection.observers.append(lambda method, url, status: threads.append(threading.current_thread().name))
    results = ctx.search("Patient", as_dict=True, identifier=f"{fhir.system}|")
    taken = [next(results)]
    assert threads[0] == threading.current_thread().name  # the first page: on the caller's thread
    # The reader runs ahead while the caller works, but never more than PAGES_AHEAD pages.
    assert wait_for(lambda: len(threads) == 1 + PAGES_AHEAD)
    time.sleep(0.5)
    assert len(threads) == 1 + PAGES_AHEAD
    taken.append(next(results))  # taking a page makes room for one more
    assert wait_for(lambda: len(threads) == 2 + PAGES_AHEAD)
    taken += list(results)
    assert len(taken) == 10 and len({p["id"] for p in taken}) == 10
    assert len(threads) == 10 and all(name.startswith(THREAD_NAME) for name in threads[1:])

    threads.clear()
    plain = list(ctx.search("Patient", as_dict=True, read_ahead=False, identifier=f"{fhir.system}|"))
    assert len(plain) == 10 and threads == [threading.current_thread().name] * 10


def test_search_stopped_early_leaves_no_thread_behind(fhir, make_ctx):
    seed_patients(fhir, 12)
    ctx = make_ctx(PAGE_SIZE=2)
    results = ctx.search("Patient", as_dict=True, identifier=f"{fhir.system}|")
    next(results), next(results), next(results)
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
    assert ctx.connection.request_count <= 2 + PAGES_AHEAD  # 6 pages exist; the reader stopped


def test_an_error_reading_ahead_is_raised_where_the_caller_waits(fhir, make_ctx):
    """A page the server refuses (here: a next link to a resource type no server knows)."""
    bogus_next = f"{fhir.base_url}/NoSuchSearch{fhir.system[-8:]}?_count=1"
    page = {"resourceType": "Bundle", "type": "collection",
            "link": [{"relation": "next", "url": bogus_next}],
            "entry": [{"resource": patient(fhir, "first-page")}]}
    reply = fhir.http.post(f"{fhir.base_url}/Bundle", json=page, timeout=30,
                           headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 201, reply.text
    ctx = make_ctx()
    results = search_entries(ctx.connection, f"Bundle/{reply.json()['id']}")
    assert next(results)["resource"]["identifier"][0]["value"] == "first-page"
    with pytest.raises(FhirServerError, match=f"NoSuchSearch{fhir.system[-8:]}"):
        next(results)
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_update_is_version_aware(fhir, make_ctx):
    ctx = make_ctx()
    created = ctx.create(patient(fhir, "v"))
    assert created["meta"]["versionId"] == "1"
    stale = dict(created)
    changed = ctx.update(dict(created, gender="male"))
    assert changed["meta"]["versionId"] == "2"
    with pytest.raises(VersionConflictError):
        ctx.update(dict(stale, gender="female"))
    assert ctx.read("Patient", created["id"], as_dict=True)["gender"] == "male"
    with pytest.raises(ValueError, match="meta.versionId"):
        ctx.update({"resourceType": "Patient", "id": created["id"]})
    forced = ctx.update(dict(stale, gender="female"), check_version=False)
    assert forced["gender"] == "female"


def test_conditional_create_update_patch_and_delete(fhir, make_ctx):
    ctx = make_ctx()
    query = {"identifier": f"{fhir.system}|cond"}
    one = ctx.conditional_create(patient(fhir, "cond"), query)
    two = ctx.conditional_create(patient(fhir, "cond"), query)
    assert one["id"] == two["id"]
    ctx.conditional_update(dict(patient(fhir, "cond"), gender="other"), query)
    assert ctx.read("Patient", one["id"], as_dict=True)["gender"] == "other"
    ctx.patch("Patient", one["id"], [{"op": "add", "path": "/active", "value": True}])
    model = ctx.read("Patient", one["id"])
    assert model.active is True
    ctx.delete(model)
    assert ctx.read("Patient", one["id"], missing_ok=True) is None


def test_batch_flushes_every_bundle_size(fhir, make_ctx):
    ctx = make_ctx(BUNDLE_SIZE=4)
    bundles = []

    def count_bundles(method, url, status):
        if method == "POST" and url.rstrip("/") == fhir.base_url:
            bundles.append(url)

    ctx.connection.observers.append(count_bundles)
    with ctx.batch() as batch:
        for i in range(10):
            batch.create(patient(fhir, f"b{i}"))
        assert len(bundles) == 2  # flushed at 4 and 8, two entries still waiting
    assert len(bundles) == 3
    assert batch.written == 10
    assert len(fhir.patients()) == 10


def test_updates_keep_meta_profiles_tags_and_security_labels(fhir, make_ctx):
    ctx = make_ctx()
    meta = {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}],
            "tag": [{"system": fhir.system, "code": "kept"}]}
    one = ctx.create(dict(patient(fhir, "meta-1"), meta=meta))
    two = ctx.create(dict(patient(fhir, "meta-2"), meta=meta))
    ctx.update(dict(one, gender="female"))
    with ctx.batch() as batch:
        batch.update(dict(two, gender="male"))
    with ctx.transaction() as transaction:
        transaction.update(dict(ctx.read("Patient", one["id"], as_dict=True), gender="other"))
    for created, gender in ((one, "other"), (two, "male")):
        stored = ctx.read("Patient", created["id"], as_dict=True)
        assert stored["gender"] == gender
        assert stored["meta"]["profile"] == meta["profile"]
        assert [t["code"] for t in stored["meta"]["tag"]] == ["kept"]
        assert [s["code"] for s in stored["meta"]["security"]] == ["HTEST"]


def test_batch_reports_failed_entries_by_type_and_id_only(fhir, make_ctx):
    ctx = make_ctx()
    created = ctx.create(patient(fhir, "stale"))
    with pytest.raises(BundleError) as info:
        with ctx.batch() as batch:
            batch.create(patient(fhir, "fine"))
            batch.update(dict(created, meta={"versionId": "99"}))
    # A stale version: 409 (HAPI) or 412 (the spec's answer, Helios) is the server's choice.
    assert f"Patient/{created['id']}" in str(info.value)
    assert re.search(r"\b1 x (409|412)\b", str(info.value)), str(info.value)
    assert "stale" not in str(info.value)  # never the resource itself (clinical data)
    assert len(info.value.failures) == 1
    assert len(fhir.patients()) == 2  # the good entry of the batch was applied


def hapi_version(fhir):
    """(major, minor) of a HAPI FHIR server, from its X-Powered-By header; None for others."""
    powered = fhir.http.get(fhir.url("metadata"), timeout=30).headers.get("X-Powered-By", "")
    found = re.search(r"HAPI FHIR (\d+)\.(\d+)", powered)
    return (int(found.group(1)), int(found.group(2))) if found else None


def test_clean_batch_is_committed_whole_and_a_failing_one_falls_back_to_batch(fhir, make_ctx):
    # HAPI 8.2+ honours X-Transaction-Semantics: a batch without failures is committed as one
    # transaction (one timestamp for all its entries); other servers process a plain batch.
    ctx = make_ctx()
    with ctx.batch() as batch:
        for i in range(5):
            batch.create(patient(fhir, f"clean{i}"))
    whole = (hapi_version(fhir) or (0, 0)) >= (8, 2)
    assert batch.written == 5 and batch.committed_whole == (1 if whole else 0)
    if whole:
        assert len({p["meta"]["lastUpdated"] for p in fhir.patients()}) == 1

    created = ctx.create(patient(fhir, "stale"))
    with pytest.raises(BundleError) as info:
        with ctx.batch() as mixed:
            for i in range(3):
                mixed.create(patient(fhir, f"mixed{i}"))
            mixed.update(dict(created, meta={"versionId": "99"}))
    assert mixed.committed_whole == 0 and mixed.written == 3
    assert [f.write.ref for f in mixed.failures] == [f"Patient/{created['id']}"]
    assert len(info.value.failures) == 1
    assert len(fhir.patients()) == 9  # the failed transaction attempt left nothing; the batch did

    with ctx.batch(transaction_first=False) as plain:
        plain.create(patient(fhir, "plain"))
    assert plain.committed_whole == 0 and plain.written == 1


def test_transaction_is_all_or_nothing_and_stops_the_migration(fhir_settings, fhir, scripts):
    existing = fhir.http.post(fhir.url("Patient"), json=patient(fhir, "existing"),
                              headers={"Content-Type": "application/fhir+json"}, timeout=30).json()
    scripts.add("tx", upgrade=(
        "with ctx.transaction() as tx:\n"
        f"    tx.create({patient(fhir, 'new')!r})\n"
        f"    tx.update(dict({existing!r}, gender='other', meta={{'versionId': '42'}}))\n"
    ))
    code, _, err = call("fhirmigrate")
    assert code == 1 and "transaction" in err
    assert [p["identifier"][0]["value"] for p in fhir.patients()] == ["existing"]
    assert fhir.applied() == []


def test_dry_run_prints_every_write_and_sends_none(fhir, make_ctx):
    seed_patients(fhir, 2)
    ctx = make_ctx(dry_run=True)
    for found in ctx.search("Patient", identifier=f"{fhir.system}|", as_dict=True):
        found["gender"] = "unknown"
        ctx.update(found)
    ctx.create(patient(fhir, "never"))
    with ctx.batch() as batch:
        batch.create(patient(fhir, "never-either"))
    ctx.delete("Patient", "whatever")
    printed = ctx.stdout.getvalue()
    assert printed.count("[dry-run] PUT Patient/") == 2 and "changes gender" in printed
    assert "[dry-run] POST Patient" in printed and "[dry-run] DELETE Patient/whatever" in printed
    values = sorted(p["identifier"][0]["value"] for p in fhir.patients())
    assert values == ["p000", "p001"]
    assert all("gender" not in p for p in fhir.patients())


def test_progress_logs_quietly_when_not_a_terminal(make_ctx, caplog):
    ctx = make_ctx()
    with caplog.at_level(logging.INFO, logger="django_fhir_migrations.scripts"):
        assert list(ctx.progress(range(5), total=5, desc="walk")) == [0, 1, 2, 3, 4]
    assert any("walk: 5 done" in r.getMessage() for r in caplog.records)
    assert ctx.stdout.getvalue() == ""
