"""A fake of our own HTTP layer (`FhirConnection`), scripted by each test: no socket, no server.

It is a test double of the *connection*, not of a FHIR server: it stores no resource and
searches nothing. Each test says which requests it expects and what each one is answered
with (`on(method, path_regex, *answers)`), and asserts afterwards on the requests the code
under test made (`calls`). Everything FHIR-facing (what HAPI really answers) stays tested
against the real server in the other test modules.

An answer is one of:

* a `Reply` (sent as it is), or a dict (a 200 reply with that body);
* `status(code, detail)`: an error status, turned into the error the real connection raises
  for it (VersionConflictError for 409/412, ResourceNotFoundError for 404, FhirServerError
  otherwise), or returned as a Reply when the caller listed it in `allow=`, as the real one does;
* an exception instance (ServerUnreachableError(...), say), raised as it is;
* a callable taking the `Call` and returning any of the above (an answer built from what was
  sent, e.g. `echo_write()`).

A handler answers its answers in order and then keeps giving the last one; `times=n` retires
it after n requests. Handlers are tried in the order they were added. A request no handler
matches fails the test with `UnexpectedRequest` (an AssertionError, so the engine's
`except FhirServerError` never swallows it), and is kept in `unexpected`.
"""

from __future__ import annotations

import itertools
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from django_fhir_migrations.engine.errors import (
    FhirServerError,
    ResourceNotFoundError,
    VersionConflictError,
)
from django_fhir_migrations.engine.fhir.client import FhirConnection, Reply

BASE_URL = "http://fhir.test/fhir/"
REASONS = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 412: "Precondition Failed",
           422: "Unprocessable Entity", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


class UnexpectedRequest(AssertionError):
    """The code under test sent a request the test did not script."""


class NetworkUsed(AssertionError):
    """A unit test tried to open a connection."""


def forbid_network(monkeypatch: Any) -> None:
    """Make any attempt to connect a socket fail the test (the unit tests' guarantee)."""

    def refuse(sock: socket.socket, address: Any, *args: Any) -> Any:
        raise NetworkUsed(f"a unit test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@dataclass
class Call:
    """One request, as the code under test made it."""

    method: str
    path: str  # relative to the base URL, query string included if the caller put one there
    json: Any = None
    data: Mapping[str, str] | None = None
    params: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool | None = None
    allow: tuple[int, ...] = ()

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The entries of the bundle sent (for a batch or transaction POST)."""
        return list((self.json or {}).get("entry") or [])

    def __str__(self) -> str:
        return f"{self.method} {self.path or '(base)'}"


@dataclass(frozen=True)
class Status:
    """An error status the fake connection turns into what the real one would raise."""

    code: int
    detail: str = ""


def status(code: int, detail: str = "") -> Status:
    return Status(code, detail)


@dataclass
class Handler:
    method: str
    pattern: re.Pattern[str]
    answers: list[Any]
    times: int | None = None
    used: int = 0

    def matches(self, call: Call) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        return self.method == call.method and bool(self.pattern.fullmatch(call.path))

    def next_answer(self) -> Any:
        answer = self.answers[min(self.used, len(self.answers) - 1)]
        self.used += 1
        return answer


class FakeSession:
    """What the engine touches on the connection's session."""

    def __init__(self) -> None:
        self.run_deadline: float | None = None
        self.intercept: Any = None


class FakeConnection:
    """The `FhirConnection` interface the engine uses, answered from the test's script."""

    def __init__(self, base_url: str = BASE_URL, *, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.session = FakeSession()
        self.handlers: list[Handler] = []
        self.calls: list[Call] = []
        self.unexpected: list[Call] = []
        self.closed = False
        self.capabilities: dict[str, bool] = {}
        self.observers: list[Callable[[str, str, int | None], None]] = []  # never called: no HTTP
        self._mutex = threading.Lock()

    # --- scripting -------------------------------------------------------------------------

    def on(self, method: str, path: str, *answers: Any, times: int | None = None) -> Handler:
        """Answer `method` requests whose path (relative to the base URL) fully matches the
        regex `path` with `answers`, in order, then the last one again."""
        if not answers:
            raise ValueError("a handler needs at least one answer")
        handler = Handler(method.upper(), re.compile(path), list(answers), times)
        self.handlers.append(handler)
        return handler

    def once(self, method: str, path: str, answer: Any) -> Handler:
        return self.on(method, path, answer, times=1)

    # --- what the code under test sent ------------------------------------------------------

    @property
    def request_count(self) -> int:
        return len(self.calls)

    def sent(self, method: str | None = None, path: str | None = None) -> list[Call]:
        """The requests made, optionally only those of `method` whose path matches `path`."""
        return [c for c in self.calls if (method is None or c.method == method.upper())
                and (path is None or re.fullmatch(path, c.path))]

    def summary(self) -> list[str]:
        return [str(c) for c in self.calls]

    # --- the FhirConnection interface ---------------------------------------------------------

    read_many = FhirConnection.read_many  # the real one, over the scripted request()

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def same_origin(self, url: str) -> bool:
        mine, theirs = urlsplit(self.base_url), urlsplit(self.url(url))
        return (mine.scheme, mine.hostname, mine.port) == (theirs.scheme, theirs.hostname, theirs.port)

    def close(self) -> None:
        self.closed = True

    def get(self, path: str, params: Any = None, **kwargs: Any) -> Reply:
        return self.request("GET", path, params=params, **kwargs)

    def request(self, method: str, path: str, *, json: Any = None, data: Mapping[str, str] | None = None,
                params: Any = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None, allow: tuple[int, ...] = ()) -> Reply:
        method = method.upper()
        url = self.url(path)
        relative = url[len(self.base_url):] if url.startswith(self.base_url) else url
        call = Call(method, relative, json=json, data=data, params=params, headers=dict(headers or {}),
                    idempotent=idempotent, allow=tuple(allow))
        with self._mutex:
            self.calls.append(call)
            handler = next((h for h in self.handlers if h.matches(call)), None)
            answer = handler.next_answer() if handler is not None else None
        if handler is None:
            self.unexpected.append(call)
            raise UnexpectedRequest(f"unscripted request {call} (requests so far: {self.summary()})")
        if callable(answer) and not isinstance(answer, (Reply, Status)):
            answer = answer(call)
        return self._deliver(call, url, answer)

    def _deliver(self, call: Call, url: str, answer: Any) -> Reply:
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Reply):
            return answer
        if isinstance(answer, Status):
            if answer.code in call.allow:
                return Reply(answer.code, url, {}, outcome(answer.detail) if answer.detail else None)
            message = (f"{call.method} {url} failed with {answer.code} {REASONS.get(answer.code, '')}"
                       f"{': ' + answer.detail if answer.detail else ''}.")
            kind = {404: ResourceNotFoundError, 409: VersionConflictError,
                    412: VersionConflictError}.get(answer.code, FhirServerError)
            raise kind(message, url=url, status=answer.code, detail=answer.detail)
        if isinstance(answer, dict) or answer is None:
            return Reply(200, url, {}, answer)
        raise TypeError(f"a fake connection answer cannot be {answer!r}")


# --- answer builders (shapes of replies, never a store) -----------------------------------------


def reply(body: dict[str, Any] | None = None, *, code: int = 200, headers: Mapping[str, str] | None = None,
          url: str = BASE_URL) -> Reply:
    return Reply(code, url, dict(headers or {}), body)


def outcome(text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]}


def searchset(*resources: dict[str, Any], included: tuple[dict[str, Any], ...] = (),
              next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle holding exactly the resources the test gives it."""
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    entries += [{"resource": r, "search": {"mode": "include"}} for r in included]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def echo_write(resource_id: str = "1", first_version: int = 2) -> Callable[[Call], Reply]:
    """Answer a create or update of the state with what was sent, as the server would return it
    (`Prefer: return=representation`), with the next version number each time. It remembers
    nothing but the counter."""
    versions = itertools.count(first_version)

    def answer(call: Call) -> Reply:
        version = str(next(versions))
        body = dict(call.json or {}, id=resource_id, meta={"versionId": version,
                                                            "lastUpdated": "2026-01-01T00:00:00.000Z"})
        code = 201 if call.method == "POST" else 200
        return Reply(code, f"{BASE_URL}Basic/{resource_id}", {"ETag": f'W/"{version}"'}, body)

    return answer


def each_entry(status_line: str | None = None, *, kind: str = "transaction",
               drop: int = 0) -> Callable[[Call], dict[str, Any]]:
    """Answer a bundle POST with one response per entry sent (`drop` fewer): `status_line`
    (default "201 Created" for a POST, "200 OK" otherwise) and a location (the entry's
    `Type/id`; `Type/n/_history/1` for a create). The shape of a bundle response, nothing more."""
    numbers = itertools.count(100)

    def answer(call: Call) -> dict[str, Any]:
        results = []
        for entry in call.entries[:len(call.entries) - drop]:
            parts = (entry.get("request") or {}).get("url", "Resource").split("?")[0].split("/")
            location = (f"{parts[0]}/{parts[1]}" if len(parts) > 1
                        else f"{parts[0]}/{next(numbers)}/_history/1")
            method = (entry.get("request") or {}).get("method")
            line = status_line or ("201 Created" if method == "POST" else "200 OK")
            results.append({"response": {"status": line, "location": location}})
        return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": results}

    return answer


def state_resource(state_id: str, head: str | None = None, *, extensions: list[dict[str, Any]] = (),
                   resource_id: str = "1", version: str = "3",
                   last_updated: str = "2026-01-01T00:00:00.000Z") -> dict[str, Any]:
    """A migration state `Basic` as the test wants the server to hold it (the seed tool's form:
    identifier and head coding; our extensions only if the test gives them)."""
    resource: dict[str, Any] = {
        "resourceType": "Basic",
        "id": resource_id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "identifier": [{"system": "http://fhir.migration.system", "value": state_id}],
        "code": {"coding": [{"system": "http://our.migration.system", "code": head or "None"}]},
    }
    if extensions:
        resource["extension"] = list(extensions)
    return resource


def found(*resources: dict[str, Any], included: tuple[dict[str, Any], ...] = (),
          date: str | None = None) -> Reply:
    """The reply to the state search: a searchset of `resources`, with a Date header if given."""
    return Reply(200, f"{BASE_URL}Basic", {"Date": date} if date else {},
                 searchset(*resources, included=included))
