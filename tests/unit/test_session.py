"""What a dry run lets through: requests that change nothing (fhir/session.py is_read)."""

from __future__ import annotations

import json

import pytest

from django_fhir_migrations.engine.fhir.session import is_read

BASE = "http://fhir.example/fhir"


def bundle(kind: str, *entries: dict) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


GET = {"request": {"method": "GET", "url": "Patient/1/_history/2"}}
PUT = {"resource": {"resourceType": "Patient", "id": "1"}, "request": {"method": "PUT", "url": "Patient/1"}}


@pytest.mark.parametrize("method, url, body", [
    ("GET", f"{BASE}/Patient", None),
    ("HEAD", f"{BASE}/metadata", None),
    ("POST", f"{BASE}/Patient/_search", b"identifier=x"),
    ("POST", f"{BASE}/", bundle("batch", GET, GET)),
])
def test_reads_go_through(method, url, body):
    assert is_read(method, url, body)


@pytest.mark.parametrize("method, url, body", [
    ("PUT", f"{BASE}/Patient/1", b"{}"),
    ("POST", f"{BASE}/", bundle("batch", GET, PUT)),  # one write among reads
    ("POST", f"{BASE}/", bundle("transaction", GET)),  # only a batch counts
    ("POST", f"{BASE}/", bundle("batch")),  # no entry
    ("POST", f"{BASE}/", bundle("batch", {"request": {"method": "GET", "url": "Patient/1"}, **PUT})),
    ("POST", f"{BASE}/", b"not json"),
    ("POST", f"{BASE}/", b" " * 2_000_000),
    ("DELETE", f"{BASE}/Patient/1", None),
])
def test_anything_that_may_write_is_intercepted(method, url, body):
    assert not is_read(method, url, body)
