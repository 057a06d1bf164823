"""The FHIR server behaves the way the tool relies on (plain HTTP, no tool code).

Run against the local HAPI JPA server, or any server named by FHIR_BASE_URL.
"""

from __future__ import annotations

import uuid

JSON = "application/fhir+json"

def post(fhir, path, body, **headers):
    return fhir.http.post(fhir.url(path), json=body, timeout=30,
                          headers={"Content-Type": JSON, "Accept": JSON, **headers})


def put(fhir, path, body, **headers):
    return fhir.http.put(fhir.url(path), json=body, timeout=30,
                         headers={"Content-Type": JSON, "Accept": JSON, **headers})


def patient(fhir, value, **extra):
    return {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": value}],
            **extra}


def test_metadata_is_a_capability_statement(fhir):
    body = fhir.get("metadata")
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"].startswith("4.0")
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"Basic", "Patient", "Observation", "AuditEvent"} <= types


def test_create_read_update_vread_history_delete(fhir):
    created = post(fhir, "Patient", patient(fhir, "crud"))
    assert created.status_code == 201
    resource = created.json()
    pid = resource["id"]
    assert resource["meta"]["versionId"] == "1"
    resource["gender"] = "female"
    updated = put(fhir, f"Patient/{pid}", resource)
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"Patient/{pid}")["gender"] == "female"
    assert "gender" not in fhir.get(f"Patient/{pid}/_history/1")
    history = fhir.get(f"Patient/{pid}/_history")
    assert history["type"] == "history" and len(history["entry"]) == 2
    assert fhir.http.delete(fhir.url(f"Patient/{pid}"), timeout=30).status_code in (200, 204)
    assert fhir.http.get(fhir.url(f"Patient/{pid}"), timeout=30).status_code == 410


def test_stale_if_match_is_refused_and_nothing_is_overwritten(fhir):
    resource = post(fhir, "Patient", patient(fhir, "ifmatch")).json()
    pid = resource["id"]
    fresh = dict(resource, gender="male")
    assert put(fhir, f"Patient/{pid}", fresh, **{"If-Match": 'W/"1"'}).status_code == 200
    stale = dict(resource, gender="female")
    refused = put(fhir, f"Patient/{pid}", stale, **{"If-Match": 'W/"1"'})
    assert refused.status_code in (409, 412)
    current = fhir.get(f"Patient/{pid}")
    assert current["gender"] == "male" and current["meta"]["versionId"] == "2"


def test_conditional_create_does_not_duplicate(fhir):
    query = f"identifier={fhir.system}|cond"
    first = post(fhir, "Patient", patient(fhir, "cond"), **{"If-None-Exist": query})
    second = post(fhir, "Patient", patient(fhir, "cond"), **{"If-None-Exist": query})
    assert first.status_code == 201
    assert second.status_code == 200
    assert len(fhir.search("Patient", identifier=f"{fhir.system}|cond")) == 1


def test_conditional_update_creates_then_updates(fhir):
    body = {"resourceType": "Basic", "identifier": [{"system": fhir.system, "value": "cu"}],
            "code": {"coding": [{"system": "http://our.migration.system", "code": "None"}]}}
    url = f"Basic?identifier={fhir.system}|cu"
    assert put(fhir, url, body).status_code == 201
    body["code"]["coding"][0]["code"] = "abc"
    assert put(fhir, url, body).status_code == 200
    found = fhir.search("Basic", identifier=f"{fhir.system}|cu")
    assert len(found) == 1 and found[0]["code"]["coding"][0]["code"] == "abc"


def test_token_search_on_identifier_and_code(fhir):
    post(fhir, "Patient", patient(fhir, "tok-1"))
    post(fhir, "Patient", patient(fhir, "tok-2"))
    code = uuid.uuid4().hex
    post(fhir, "Observation", {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": fhir.system, "code": code}]},
    })
    assert len(fhir.search("Patient", identifier=f"{fhir.system}|tok-1")) == 1
    assert len(fhir.search("Patient", identifier=f"{fhir.system}|")) == 2
    assert len(fhir.search("Observation", code=f"{fhir.system}|{code}")) == 1


def test_paging_follows_next_links_across_three_pages(fhir):
    entries = [{"resource": patient(fhir, f"page-{i}"), "request": {"method": "POST", "url": "Patient"}}
               for i in range(7)]
    assert post(fhir, "", {"resourceType": "Bundle", "type": "batch", "entry": entries}).ok
    bundle = fhir.get("Patient", identifier=f"{fhir.system}|", _count=3)
    pages, seen = 0, set()
    while True:
        pages += 1
        seen |= {e["resource"]["id"] for e in bundle.get("entry", [])}
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert nxt[0].startswith(fhir.base_url)  # links lead back to the base URL clients use
        bundle = fhir.http.get(nxt[0], headers={"Accept": JSON}, timeout=30).json()
    assert pages == 3
    assert len(seen) == 7


def test_transaction_is_atomic(fhir):
    existing = post(fhir, "Patient", patient(fhir, "tx-existing")).json()
    good = {"resource": patient(fhir, "tx-good"), "request": {"method": "POST", "url": "Patient"}}
    # A stale version-aware update: the server must refuse it and roll back the whole bundle.
    bad = {"request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"7"'},
           "resource": dict(existing, gender="other")}
    reply = post(fhir, "", {"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]})
    assert reply.status_code >= 400
    assert fhir.search("Patient", identifier=f"{fhir.system}|tx-good") == []
    assert "gender" not in fhir.get(f"Patient/{existing['id']}")
    ok = post(fhir, "", {"resourceType": "Bundle", "type": "transaction", "entry": [good]})
    assert ok.status_code == 200
    assert ok.json()["type"] == "transaction-response"
    assert len(fhir.search("Patient", identifier=f"{fhir.system}|tx-good")) == 1


def test_batch_applies_entries_independently(fhir):
    good = {"resource": patient(fhir, "batch-good"), "request": {"method": "POST", "url": "Patient"}}
    bad = {"request": {"method": "GET", "url": "Patient/does-not-exist-" + uuid.uuid4().hex}}
    reply = post(fhir, "", {"resourceType": "Bundle", "type": "batch", "entry": [good, bad]})
    assert reply.status_code == 200
    statuses = [e["response"]["status"] for e in reply.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("404")
    assert len(fhir.search("Patient", identifier=f"{fhir.system}|batch-good")) == 1


def test_basic_and_audit_event_are_stored(fhir):
    basic = post(fhir, "Basic", {"resourceType": "Basic", "code": {"text": "x"},
                                 "identifier": [{"system": fhir.system, "value": "b"}]})
    assert basic.status_code == 201
    event = post(fhir, "AuditEvent", {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": "2026-11-26T12:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "tests"}}],
        "source": {"observer": {"display": "tests"}},
    })
    assert event.status_code == 201
