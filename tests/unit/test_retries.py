"""Retries: which failures are repeated, how long to wait, and what is said when they run out.

RetryPolicy is tested on its own; FhirConnection.request's retry loop with its session's
`request` replaced by a scripted one, so no socket is ever opened.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from email.utils import format_datetime

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from django_fhir_migrations.engine.clock import utcnow
from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.errors import (
    FhirServerError,
    ServerUnreachableError,
    VersionConflictError,
)
from django_fhir_migrations.engine.fhir.client import FhirConnection
from django_fhir_migrations.engine.fhir.retries import RetryPolicy, parse_retry_after

BASE = "http://fhir.test/fhir"
REFUSED = ("HTTPConnectionPool(host='fhir.test', port=80): Max retries exceeded with url: /fhir/Patient "
           "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to establish "
           "a new connection: [Errno 111] Connection refused'))")
DROPPED = ("('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))")


def response(code: int, body: dict | None = None, *, retry_after: str | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code = code
    answer.reason = {200: "OK", 201: "Created", 412: "Precondition Failed", 429: "Too Many Requests",
                     502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(code, "")
    answer.headers = CaseInsensitiveDict({"Content-Type": "application/fhir+json"})
    if retry_after is not None:
        answer.headers["Retry-After"] = retry_after
    answer._content = json.dumps(body).encode() if body is not None else b""
    return answer


def ok() -> requests.Response:
    return response(200, {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}})


def busy(code: int) -> requests.Response:
    return response(code, {"resourceType": "OperationOutcome",
                           "issue": [{"severity": "error", "code": "transient", "diagnostics": "overloaded"}]},
                    retry_after="0")


class ScriptedSession:
    """Stands in for GuardedSession.request: answers (or raises) from the script, in order."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent: list[tuple[str, str]] = []

    def __call__(self, method, url, **kwargs):
        self.sent.append((method, url))
        answer = self.answers[min(len(self.sent), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        answer.url = url
        return answer


@pytest.fixture
def connect(monkeypatch):
    def connect(*answers, retries: int = 2) -> tuple[FhirConnection, ScriptedSession]:
        connection = FhirConnection(Settings(base_url=BASE, retries=retries, timeout=5))
        # Tiny back-off between attempts that carry no Retry-After (the policy's own maths is
        # tested below).
        connection.policy = RetryPolicy(retries=retries, backoff=0.001, max_backoff=0.002)
        session = ScriptedSession(*answers)
        monkeypatch.setattr(connection.session, "request", session)
        return connection, session

    return connect


# --- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("code, idempotent, retried", [
    (429, False, True), (503, False, True), (429, True, True), (503, True, True),
    (502, True, True), (504, True, True), (502, False, False), (504, False, False),
    (500, True, False), (400, True, False), (409, True, False), (412, True, False),
])
def test_which_statuses_are_retried(code, idempotent, retried):
    assert RetryPolicy().retry_status(code, idempotent) is retried


@pytest.mark.parametrize("error, idempotent, retried", [
    (requests.ConnectionError(REFUSED), False, True),  # never reached the server
    (requests.exceptions.ConnectTimeout("connect timed out"), False, True),
    (requests.ConnectionError(DROPPED), False, False),  # may have been processed
    (requests.exceptions.ReadTimeout("read timed out"), False, False),
    (requests.ConnectionError(DROPPED), True, True),
    (requests.exceptions.ReadTimeout("read timed out"), True, True),
    (requests.exceptions.SSLError("certificate verify failed"), True, False),
    (requests.exceptions.TooManyRedirects("loop"), True, False),
], ids=["refused-post", "connect-timeout-post", "dropped-post", "read-timeout-post", "dropped-get",
        "read-timeout-get", "tls", "redirects"])
def test_which_failures_are_retried(error, idempotent, retried):
    assert RetryPolicy().retry_exception(error, idempotent) is retried


def test_retry_after_in_seconds_or_as_a_date_is_honoured_up_to_a_cap():
    policy = RetryPolicy(max_retry_after=120)
    assert policy.delay(0, response(503, retry_after="7")) == 7
    assert policy.delay(0, response(503, retry_after="0")) == 0
    assert policy.delay(0, response(503, retry_after="86400")) == 120
    in_30s = format_datetime(utcnow() + timedelta(seconds=30), usegmt=True)
    assert 28 <= policy.delay(0, response(503, retry_after=in_30s)) <= 30
    past = format_datetime(utcnow() - timedelta(minutes=5), usegmt=True)
    assert policy.delay(0, response(503, retry_after=past)) == 0


def test_without_a_usable_retry_after_the_wait_backs_off_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(backoff=0.5, max_backoff=8.0)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [policy.delay(attempt, response(503, retry_after="soon")) for _ in range(50)]
        assert all(0.75 * base <= w <= 1.25 * base for w in waits)
    assert parse_retry_after("soon") is None and parse_retry_after("") is None


# --- the connection's retry loop ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("code", [429, 503])
def test_429_and_503_are_retried_for_every_method_honouring_retry_after(connect, method, code):
    connection, session = connect(busy(code), busy(code), ok())
    started = time.monotonic()
    reply = connection.request(method, "Patient/p1", json={"resourceType": "Patient"} if method in ("POST", "PUT")
                               else None)
    assert reply.status == 200 and reply.body["id"] == "p1"
    assert session.sent == [(method, f"{BASE}/Patient/p1")] * 3
    assert connection.request_count == 3
    assert time.monotonic() - started < 0.5  # Retry-After: 0 means now


@pytest.mark.parametrize("method, path, headers", [
    ("GET", "Patient/p1", {}), ("PUT", "Patient/p1", {}), ("DELETE", "Patient/p1", {}),
    ("POST", "Patient/_search", {}), ("POST", "Patient", {"If-None-Exist": "identifier=urn:x|1"}),
], ids=["GET", "PUT", "DELETE", "search-by-POST", "conditional-create"])
@pytest.mark.parametrize("code", [502, 504])
def test_a_gateway_error_is_retried_for_idempotent_requests(connect, code, method, path, headers):
    connection, session = connect(response(code), ok())
    assert connection.request(method, path, headers=headers).status == 200
    assert len(session.sent) == 2


@pytest.mark.parametrize("code", [502, 504])
def test_a_gateway_error_on_a_plain_post_is_not_retried(connect, code):
    connection, session = connect(response(code), ok())
    with pytest.raises(FhirServerError) as caught:
        connection.request("POST", "", json={"resourceType": "Bundle", "type": "transaction"})
    assert caught.value.status == code
    assert len(session.sent) == 1


def test_a_post_the_caller_declares_idempotent_is_retried(connect):
    connection, session = connect(response(502), ok())
    connection.request("POST", "", json={"resourceType": "Bundle"}, idempotent=True)
    assert len(session.sent) == 2


@pytest.mark.parametrize("lost", [requests.ConnectionError(DROPPED), requests.exceptions.ReadTimeout("timed out")],
                         ids=["connection-dropped", "read-timeout"])
def test_a_lost_answer_to_a_post_is_not_sent_again(connect, lost):
    connection, session = connect(lost, ok())
    with pytest.raises(ServerUnreachableError) as caught:
        connection.request("POST", "AuditEvent", json={"resourceType": "AuditEvent"})
    assert len(session.sent) == 1
    assert "after" not in str(caught.value)  # a single attempt
    assert BASE in str(caught.value)


def test_a_lost_answer_to_a_get_is_asked_again(connect):
    connection, session = connect(requests.exceptions.ReadTimeout("timed out"), ok())
    assert connection.get("Patient/p1").status == 200
    assert len(session.sent) == 2


def test_a_refused_connection_is_retried_even_for_a_post(connect):
    connection, session = connect(requests.ConnectionError(REFUSED), ok())
    assert connection.request("POST", "AuditEvent", json={"resourceType": "AuditEvent"}).status == 200
    assert len(session.sent) == 2


def test_a_certificate_problem_is_not_retried_and_says_so(connect):
    connection, session = connect(requests.exceptions.SSLError("certificate verify failed"), ok())
    with pytest.raises(ServerUnreachableError, match="TLS verification failed"):
        connection.get("metadata")
    assert len(session.sent) == 1


def test_a_version_conflict_is_never_retried(connect):
    connection, session = connect(response(412), ok())
    with pytest.raises(VersionConflictError) as caught:
        connection.request("PUT", "Basic/1", json={"resourceType": "Basic"}, headers={"If-Match": 'W/"3"'})
    assert caught.value.status == 412 and len(session.sent) == 1


# --- when the retries run out --------------------------------------------------------------------


def test_retries_exhausted_on_an_unreachable_server_say_where_and_how_often(connect):
    connection, session = connect(requests.ConnectionError(REFUSED), retries=3)
    with pytest.raises(ServerUnreachableError) as caught:
        connection.get("Basic")
    assert len(session.sent) == 4
    message = str(caught.value)
    assert message.startswith(f"Cannot reach the FHIR server at {BASE}/ (GET {BASE}/Basic: connection refused)")
    assert "after 4 attempts" in message and "FHIR_BASE_URL" in message
    assert caught.value.url == f"{BASE}/Basic"


def test_retries_exhausted_on_a_silent_server_name_the_timeout(connect):
    connection, session = connect(requests.exceptions.ReadTimeout("timed out"))
    with pytest.raises(ServerUnreachableError) as caught:
        connection.get("Basic")
    assert len(session.sent) == 3
    assert "did not answer GET" in str(caught.value) and "within 5s after 3 attempts" in str(caught.value)


@pytest.mark.parametrize("code", [429, 503])
def test_retries_exhausted_on_a_busy_server_raise_its_last_status_and_words(connect, code):
    connection, session = connect(busy(code))
    with pytest.raises(FhirServerError) as caught:
        connection.request("POST", "", json={"resourceType": "Bundle", "type": "batch"})
    assert len(session.sent) == 3
    assert (caught.value.status, caught.value.detail) == (code, "overloaded")
    assert f"failed with {code}" in str(caught.value) and "overloaded" in str(caught.value)


def test_retries_zero_sends_once(connect):
    connection, session = connect(busy(503), ok(), retries=0)
    with pytest.raises(FhirServerError):
        connection.get("Patient/p1")
    assert len(session.sent) == 1


@pytest.mark.parametrize("code", [429, 503])
def test_a_server_busy_past_every_retry_says_how_often_it_was_asked_and_what_to_do(connect, code):
    connection, session = connect(busy(code), busy(code), busy(code), retries=2)
    with pytest.raises(FhirServerError) as caught:
        connection.request("POST", "", json={"resourceType": "Bundle", "type": "batch"})
    assert len(session.sent) == 3
    message = str(caught.value)
    assert f"failed with {code}" in message and "after 3 attempts" in message
    assert "lower WORKERS, or raise RETRIES" in message
    assert caught.value.status == code
