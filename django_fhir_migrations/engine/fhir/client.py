"""The connection to one FHIR server: fhirclient's `FHIRClient` plus one guarded session.

fhirclient (the SMART on FHIR client the design asks for) owns the resource models and sends
its requests through `server.session`, which we replace with a `GuardedSession` (deadlines, byte
cap, origin-bound credentials, dry-run interception: see session.py). Its own request helpers
cannot send `If-Match`, `If-None-Exist` or `Prefer`, so the engine's requests go through
`FhirConnection.request`, on that same session, which adds the base URL, TLS verification,
retries and one error vocabulary. Each response's body is parsed once here, and every text taken
from it for a message is cleaned (`printable`) and scrubbed of credentials first.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests
from fhirclient import client as fhirclient_client

from ..config import Settings
from ..errors import (
    AuthenticationError,
    FhirMigrationError,
    FhirServerError,
    NotAFhirServerError,
    ResourceNotFoundError,
    RunTimeExceededError,
    ServerUnreachableError,
    UntrustedResponseError,
    VersionConflictError,
)
from ..redaction import printable, scrub
from ..version import __version__
from .auth import SmartBackendAuth, build_auth
from .cancel import pause
from .retries import IDEMPOTENT_METHODS, RetryPolicy
from .session import (
    DeadlineExceeded,
    GuardedSession,
    RedirectRefused,
    ResponseTooLarge,
    RunDeadlinePassed,
)

logger = logging.getLogger("django_fhir_migrations")

FHIR_JSON = "application/fhir+json"
APP_ID = "django-fhir-migrations"
USER_AGENT = APP_ID

# FHIR R4's grammar: a resource type is a name; an id is 1-64 of [A-Za-z0-9\-.].
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class InvalidResourceReference(ValueError):
    """A resource type or id that FHIR's grammar does not allow (e.g. '../Basic/900')."""


def checked_type(resource_type: Any) -> str:
    if not isinstance(resource_type, str) or not _RESOURCE_TYPE.match(resource_type):
        raise InvalidResourceReference(
            f"{printable(repr(resource_type), 80)} is not a FHIR resource type (a name such as "
            "'Patient': letters only, starting with a capital)"
        )
    return resource_type


def checked_id(resource_type: str, resource_id: Any) -> str:
    if (not isinstance(resource_id, str) or not _RESOURCE_ID.match(resource_id)
            or resource_id in (".", "..")):
        raise InvalidResourceReference(
            f"{printable(repr(resource_id), 80)} is not a valid id for {resource_type}: FHIR ids are "
            "1 to 64 of the characters A-Z a-z 0-9 - . (and not '.' or '..')"
        )
    return resource_id


def query_string(query: str | Mapping[str, str]) -> str:
    """A search query for a conditional write: a mapping (encoded here) or a query string."""
    if isinstance(query, str):
        text = query.lstrip("?")
        if not text or any(c in text for c in "#\r\n") or any(ord(c) < 32 for c in text):
            raise ValueError(f"{query!r} is not a usable search query (name=value&...)")
        return text
    return urlencode(query)


def resource_path(resource_type: Any, resource_id: Any = None, *parts: str) -> str:
    """'Patient/123' from script input, validated against FHIR's grammar and URL-encoded."""
    path = quote(checked_type(resource_type), safe="")
    if resource_id is not None:
        path += "/" + quote(checked_id(resource_type, resource_id), safe="")
    for part in parts:
        path += "/" + quote(part, safe="$")
    return path


@dataclass
class Reply:
    status: int
    url: str
    headers: Mapping[str, str]
    body: dict[str, Any] | None = field(repr=False)

    @property
    def version_id(self) -> str | None:
        """The version a write produced or a read returned (ETag, else meta.versionId)."""
        etag = self.headers.get("ETag")
        if etag:
            return etag.removeprefix("W/").strip('"')
        meta = (self.body or {}).get("meta") or {}
        return meta.get("versionId")

    @property
    def location(self) -> str | None:
        return self.headers.get("Content-Location") or self.headers.get("Location")


def version_from_location(location: str | None) -> tuple[str | None, str | None]:
    """'.../Basic/12/_history/3' -> ('12', '3')."""
    if not location:
        return None, None
    parts = urlsplit(location).path.rstrip("/").split("/")
    if "_history" in parts:
        index = parts.index("_history")
        return parts[index - 1], (parts[index + 1] if index + 1 < len(parts) else None)
    return parts[-1], None


class FhirConnection:
    """The FHIR server as the engine sees it: one guarded session, retries, typed errors.

    Built once per command run (`Project.connection`); the fhirclient `FHIRClient` and its
    server (`ctx.client`, `ctx.server`) share the session, so every request, whoever makes it,
    follows the same rules.
    """

    def __init__(self, settings: Settings, *, user_agent: str | None = None):
        self.settings = settings
        self.base_url = settings.require_base_url().rstrip("/") + "/"
        self.client = fhirclient_client.FHIRClient(
            settings={"app_id": APP_ID, "api_base": self.base_url}
        )
        self.server = self.client.server
        self.session = GuardedSession(self.base_url, timeout=settings.timeout,
                                      max_bytes=settings.max_response_bytes)
        self.server.session = self.session  # fhirclient's requests take the same road
        self.session.verify = settings.verify_tls
        self.session.headers.update(
            {"User-Agent": user_agent or f"{USER_AGENT}/{__version__}", "Accept": FHIR_JSON}
        )
        self.session.auth = build_auth(settings.auth, self.base_url, self.session, settings.timeout,
                                       retries=settings.retries)
        self.policy = RetryPolicy(retries=settings.retries)
        self.timeout = settings.timeout
        self._request_count = 0
        self._count_lock = threading.Lock()  # ctx.search reads ahead, bundles go out in workers
        self._resume_at = 0.0  # time.monotonic() before which no request is sent (429/503)
        # Set when the run is interrupted: no more waiting to retry, no more retries.
        self.stopping = threading.Event()
        self.observers: list[Callable[[str, str, int | None], None]] = []
        # What this server turned out not to do, learned once per run (e.g. "json_patch_in_bundle").
        self.capabilities: dict[str, bool] = {}

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries included (the benchmark and tests read it)."""
        return self._request_count

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def same_origin(self, url: str) -> bool:
        """Whether `url` is on BASE_URL's origin (the only one that gets our credentials)."""
        return self.session.same_origin(self.url(url))

    # --- the one request path ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        allow: tuple[int, ...] = (),
    ) -> Reply:
        """Send one request with retries; raise a FhirServerError subclass unless it succeeded.

        `json` is sent as FHIR JSON, `data` as a form (a search by POST `_search`: no URL
        length limit). `allow` lists error statuses the caller handles itself (e.g. 404).
        """
        method = method.upper()
        url = self.url(path)
        send_headers = {"Accept": FHIR_JSON}
        if json is not None:
            send_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        elif data is not None:
            send_headers["Content-Type"] = "application/x-www-form-urlencoded"
        send_headers.update(headers or {})
        if idempotent is None:
            idempotent = (method in IDEMPOTENT_METHODS or "If-None-Exist" in send_headers
                          or (method == "POST" and path.rstrip("/").endswith("_search")))
        body = jsonlib.dumps(json) if json is not None else (urlencode(data) if data is not None else None)
        refreshed_token = False
        attempt = 0
        while True:
            self._wait_for_backoff()
            with self._count_lock:
                self._request_count += 1
            try:
                response = self.session.request(
                    method, url, data=body, params=params, headers=send_headers,
                    timeout=self.timeout,
                )
            except requests.RequestException as exc:
                if attempt < self.policy.retries and self.policy.retry_exception(exc, idempotent):
                    wait = self.policy.delay(attempt)
                    logger.warning("%s %s failed (%s); retrying in %.1fs", method, url,
                                   _exception_reason(exc), wait)
                    attempt += 1
                    time.sleep(wait)
                    continue
                self._notify(method, url, None)
                raise self._unreachable(method, url, exc, attempt) from None
            self._notify(method, url, response.status_code)
            status = response.status_code
            if status == 401 and isinstance(self.session.auth, SmartBackendAuth) and not refreshed_token:
                # An expired or revoked token: fetch a new one once, then give up.
                self.session.auth.invalidate(response.request.headers.get("Authorization"))
                refreshed_token = True
                continue
            if (
                status >= 400
                and attempt < self.policy.retries
                and not self.stopping.is_set()
                and self.policy.retry_status(status, idempotent)
            ):
                wait = self.policy.delay(attempt, response)
                logger.warning("%s %s answered %s; retrying in %.1fs", method, url, status, wait)
                attempt += 1
                if status in (429, 503):
                    # The server is saturated, not this request: every thread (bundle workers,
                    # the page reader) holds back until then, not only this one.
                    self._back_off(wait)
                else:
                    pause(wait, self.stopping)
                continue
            return self._reply(method, url, response, allow, attempts=attempt + 1)

    def _back_off(self, seconds: float) -> None:
        with self._count_lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)
        self._wait_for_backoff()

    def _wait_for_backoff(self) -> None:
        remaining = self._resume_at - time.monotonic()
        if remaining > 0:
            pause(remaining, self.stopping)

    def _notify(self, method: str, url: str, status: int | None) -> None:
        for observer in self.observers:
            observer(method, url, status)

    def _unreachable(self, method: str, url: str, exc: requests.RequestException, attempt: int
                     ) -> FhirMigrationError:
        tries = f" after {attempt + 1} attempts" if attempt else ""
        if isinstance(exc, RunDeadlinePassed):
            return RunTimeExceededError(self.settings.max_run_time or 0, f"{method} {url}")
        if isinstance(exc, RedirectRefused):
            # No status: the server refused nothing we sent, so nothing here is an entry's fault
            # (a bundle is not split and retried over it).
            return FhirServerError(str(exc), url=url)
        if isinstance(exc, ResponseTooLarge):
            return FhirServerError(
                f"The FHIR server at {self.base_url} answered {method} {url} with a body larger "
                f"than {self.session.max_bytes // (1024 * 1024)} MB; it was not read. Raise "
                "MAX_RESPONSE_MB if such answers are expected (e.g. lower PAGE_SIZE instead).",
                url=url,
            )
        if isinstance(exc, DeadlineExceeded):
            return ServerUnreachableError(
                f"The FHIR server at {self.base_url} did not complete its answer to {method} {url} "
                f"within {self.timeout:g}s{tries} (TIMEOUT bounds each request as a whole, body "
                "included). Check that it is healthy, or raise TIMEOUT.", url=url,
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return ServerUnreachableError(
                f"TLS verification failed for the FHIR server at {self.base_url} ({method} {url}). "
                "Fix the certificate or point VERIFY_TLS at the CA bundle.", url=url,
            )
        if isinstance(exc, requests.Timeout):
            return ServerUnreachableError(
                f"The FHIR server at {self.base_url} did not answer {method} {url} within "
                f"{self.timeout:g}s{tries}. Check that it is up, or raise TIMEOUT.", url=url,
            )
        return ServerUnreachableError(
            f"Cannot reach the FHIR server at {self.base_url} ({method} {url}: "
            f"{_exception_reason(exc)}){tries}. Check BASE_URL / FHIR_BASE_URL and that the "
            "server is running.", url=url,
        )

    def _reply(self, method: str, url: str, response: requests.Response, allow: tuple[int, ...],
               *, attempts: int = 1) -> Reply:
        status = response.status_code
        body, not_fhir = _parse_body(response)
        detail = scrub(outcome_text(body))
        if status in (401, 403):
            # Before any body check: a login wall answers HTML, and it is still an auth problem.
            what = "refused the credentials" if status == 401 else "denied permission"
            raise AuthenticationError(
                f"The FHIR server {what} ({status}) for {method} {url}"
                f"{': ' + detail if detail else ''}. Check the AUTH setting and the client's "
                "access rights.", url=url, status=status,
            )
        reply = Reply(status=status, url=url, headers=response.headers, body=body)
        if status in allow:
            return reply
        if not_fhir:
            raise NotAFhirServerError(
                f"{method} {url} answered {status} with {not_fhir}, not FHIR JSON. Is "
                f"{self.base_url} the base URL of a FHIR server (often ending in /fhir)?",
                url=url, status=status,
            )
        if status < 400:
            return reply
        if status == 404:
            if not detail and self._type_level(url):
                raise NotAFhirServerError(
                    f"{method} {url} answered 404 without a FHIR OperationOutcome. Is "
                    f"{self.base_url} the base URL of a FHIR server (often ending in /fhir)?",
                    url=url, status=status,
                )
            raise ResourceNotFoundError(
                f"{method} {url}: not found (404){': ' + detail if detail else ''}.",
                url=url, status=status, detail=detail,
            )
        if status in (409, 412):
            raise VersionConflictError(
                f"{method} {url}: the server refused the write because it conflicts with a "
                f"concurrent change ({status}){': ' + detail if detail else ''}.",
                url=url, status=status, detail=detail,
            )
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        busy = (" The server is saturated: run again later, lower WORKERS, or raise RETRIES."
                if status in (429, 503) else "")
        raise FhirServerError(
            f"{method} {url} failed with {status} {response.reason}{tries}"
            f"{': ' + detail if detail else ''}.{busy}", url=url, status=status, detail=detail,
        )

    def _type_level(self, url: str) -> bool:
        """A request on the base or on a resource type (search, create), not on one resource."""
        rest = url[len(self.base_url):] if url.startswith(self.base_url) else url
        return "/" not in rest.split("?", 1)[0].strip("/")

    # --- conveniences ---------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Reply:
        return self.request("GET", path, params=params, **kwargs)

    def read_many(self, wanted: list[tuple[str, str, str | None]]) -> list[dict[str, Any] | None]:
        """Resources `(type, id, version or None)` in one batch of reads (vreads where a version
        is given); None for one that is gone, unreadable, or not what was asked for."""
        if not wanted:
            return []
        entries = [{"request": {"method": "GET", "url": resource_path(t, i, "_history", v) if v
                                else resource_path(t, i)}} for t, i, v in wanted]
        reply = self.request("POST", "", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
        answers = validated_results("batch", len(entries), reply.body or {}, reply.url)
        found: list[dict[str, Any] | None] = []
        for (resource_type, resource_id, _), answer in zip(wanted, answers, strict=True):
            resource = answer.get("resource")
            ok = str((answer.get("response") or {}).get("status", "")).startswith("2")
            found.append(dict(resource) if ok and isinstance(resource, Mapping)
                         and resource.get("resourceType") == resource_type
                         and resource.get("id") == resource_id else None)
        return found


def _parse_body(response: requests.Response) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object, "") or (None, what the body was instead of FHIR JSON)."""
    if not response.content:
        return None, ""
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type:
        return None, printable(content_type.split(";")[0], 80) or "no content type"
    try:
        body = response.json()
    except ValueError:
        return None, "a body that is not valid JSON"
    if not isinstance(body, dict):
        return None, "JSON that is not a FHIR resource"
    return body, ""


def outcome_text(body: Mapping[str, Any] | None) -> str:
    """The human text of an OperationOutcome, if the body is one."""
    if not body or body.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    issues = body.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, Mapping) else None)
        if isinstance(text, str) and text:
            texts.append(printable(text, 500))
    return printable("; ".join(texts), 500)


def _exception_reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "Connection reset", "Connection aborted", "RemoteDisconnected",
                   "Max retries exceeded"):
        if marker in text:
            return marker.lower() if marker != "RemoteDisconnected" else "server closed the connection"
    return type(exc).__name__


# A batch may be answered as a transaction when the server committed it whole (HAPI's
# X-Transaction-Semantics); a transaction only as a transaction.
RESPONSE_TYPES = {"batch": ("batch-response", "transaction-response"),
                  "transaction": ("transaction-response",)}


def validated_results(kind: str, sent: int, response: Mapping[str, Any], url: str
                      ) -> list[Mapping[str, Any]]:
    """The response entries, one per entry sent, or UntrustedResponseError.

    A server (or a proxy) that answers 200 with something else, an empty Bundle or fewer
    entries tells us nothing about which writes were made: acting on it would record as
    applied a migration whose writes may not exist.
    """
    what = printable(response.get("resourceType") or "an empty body", 40)
    if response.get("resourceType") == "Bundle":
        what = f"a Bundle of type {printable(response.get('type') or '(none)', 40)}"
    problem = ""
    results = response.get("entry") if isinstance(response.get("entry"), list) else None
    if response.get("resourceType") != "Bundle" or response.get("type") not in RESPONSE_TYPES[kind]:
        problem = f"answered with {what}, not a {' or '.join(RESPONSE_TYPES[kind])} Bundle"
    elif results is None or len(results) != sent:
        got = 0 if results is None else len(results)
        problem = f"answered with {got} entr{'y' if got == 1 else 'ies'} for the {sent} sent"
    elif not all(isinstance(r, Mapping) and isinstance(r.get("response"), Mapping)
                 and isinstance(r["response"].get("status"), str) for r in results):
        problem = "answered with entries that have no response status"
    if problem:
        raise UntrustedResponseError(
            f"The FHIR server {problem} ({kind} bundle POST {url}). Which of its writes were made "
            "cannot be known from that answer, so the migration stops here and is not recorded.",
            url=url,
        )
    return list(results or [])
