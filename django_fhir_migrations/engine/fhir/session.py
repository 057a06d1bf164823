"""The one HTTP session every request goes through: ours, and fhirclient's on our behalf.

fhirclient sends its requests through `server.session`; `FhirConnection` replaces that session
with a `GuardedSession`, so the rules below hold for `ctx.server` / fhirclient model calls
(`Patient(...).create(ctx.server)`) exactly as for the engine's own requests:

* **A total deadline per request** (TIMEOUT: connect + headers + the whole body). requests'
  own timeout bounds each socket read, so a server trickling one byte a second would never
  trip it; a watchdog shuts the socket down when the deadline passes.
* **A byte cap** on every response body (after decompression), so a hostile or broken server
  cannot exhaust memory.
* **Credentials only for BASE_URL's origin** (scheme, host and port). The auth objects check
  this themselves; the session strips an `Authorization` header bound elsewhere as well.
* **Dry runs intercept every write**: while `intercept` is set, any request that is not a read
  (GET, HEAD, a POST `_search`, or a batch of GETs) is handed to it instead of being sent.
* **A run deadline** (MAX_RUN_TIME): once past, requests fail instead of being sent.
* **No redirect is followed.** A redirect would re-send the request (a transaction full of
  Patients, a token request) to wherever the server says; a server that moved is a
  configuration change for the user to make, so a 3xx with a Location is an error naming both
  origins (`RedirectRefused`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

DEFAULT_PORTS = {"http": 80, "https": 443}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHUNK = 64 * 1024

Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in; host lower-cased."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def describe_origin(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


READS_BUNDLE_LIMIT = 1_000_000  # bytes: a batch of reads is small (ids and versions only)


def is_read(method: str, url: str, body: Any = None) -> bool:
    """Requests that change nothing on the server: GET/HEAD/OPTIONS, search by POST, and a
    batch whose every entry is a GET (how several versions are read at once)."""
    method = method.upper()
    if method in READ_METHODS:
        return True
    if method != "POST":
        return False
    return urlsplit(url).path.rstrip("/").endswith("/_search") or _batch_of_reads(body)


def _batch_of_reads(body: Any) -> bool:
    if not isinstance(body, (bytes, str)) or not body or len(body) > READS_BUNDLE_LIMIT:
        return False
    try:
        bundle = json.loads(body)
    except ValueError:
        return False
    entries = bundle.get("entry") if isinstance(bundle, dict) and bundle.get("type") == "batch" else None
    return bool(entries) and isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("request"), dict) and e["request"].get("method") == "GET"
        and "resource" not in e for e in entries)


class DeadlineExceeded(requests.exceptions.Timeout):
    """The whole request (connect to last body byte) took longer than its deadline."""


class ResponseTooLarge(requests.exceptions.RequestException):
    """The response body is larger than the byte cap."""


class RunDeadlinePassed(requests.exceptions.RequestException):
    """MAX_RUN_TIME of the migration has passed: no more requests for it."""


class RedirectRefused(requests.exceptions.RequestException):
    """The server answered with a redirect: never followed (see the module docstring)."""

    def __init__(self, message: str, *, source: str, target: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.source = source  # the origin asked
        self.target = target  # the origin it pointed at


# --- the watchdog -----------------------------------------------------------------------------

_current = threading.local()


class _Watch:
    """One request's deadline; the connection it uses registers itself here."""

    def __init__(self) -> None:
        self.connection: Any = None
        self.fired = False
        self.done = False
        self.lock = threading.Lock()

    def fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read in the request's thread
            except OSError:
                pass

    def finish(self) -> None:
        with self.lock:
            self.done = True


def _register(connection: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.connection = connection


class _Watched:
    """Mixed into urllib3's connections: each tells the current request's watch its socket."""

    def connect(self) -> None:
        _register(self)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose connections tell the watchdog which socket to shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


# --- the session ------------------------------------------------------------------------------

Interceptor = Callable[[requests.PreparedRequest], requests.Response]


class GuardedSession(requests.Session):
    """A requests session with the tool's rules for every request (see the module docstring)."""

    def __init__(self, base_url: str, *, timeout: float, max_bytes: int):
        super().__init__()
        self.base_origin = origin_of(base_url)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.intercept: Interceptor | None = None
        self.run_deadline: float | None = None  # time.monotonic() value
        self.mount("http://", _WatchedAdapter())
        self.mount("https://", _WatchedAdapter())

    def same_origin(self, url: str) -> bool:
        return origin_of(url) == self.base_origin

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        # fhirclient passes no timeout at all: every request gets ours.
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        method = (request.method or "GET").upper()
        url = request.url or ""
        if not self.same_origin(url):
            request.headers.pop("Authorization", None)
        if self.intercept is not None and not is_read(method, url, request.body):
            return self.intercept(request)
        if self.run_deadline is not None and time.monotonic() > self.run_deadline:
            raise RunDeadlinePassed(f"{method} {url} not sent: the migration's MAX_RUN_TIME has passed",
                                    request=request)
        streaming = kwargs.pop("stream", False)
        kwargs["allow_redirects"] = False
        deadline = time.monotonic() + self.timeout
        kwargs["timeout"] = _socket_timeouts(kwargs.get("timeout"), self.timeout)
        watch = _Watch()
        timer = threading.Timer(self.timeout, watch.fire)
        timer.daemon = True
        previous = getattr(_current, "watch", None)
        _current.watch = watch
        timer.start()
        try:
            response = super().send(request, stream=True, **kwargs)
            if response.is_redirect:
                response.close()
                raise _redirect(method, url, response)
            if not streaming:
                self._read_body(response, deadline)
            if watch.fired:  # a body delimited by the connection's end looks complete when cut
                raise DeadlineExceeded(f"{method} {url} did not complete within {self.timeout:g}s",
                                       request=request)
            return response
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError, OSError):
            if watch.fired:
                raise DeadlineExceeded(
                    f"{method} {url} did not complete within {self.timeout:g}s", request=request
                ) from None
            raise
        finally:
            watch.finish()
            timer.cancel()
            _current.watch = previous

    def _read_body(self, response: requests.Response, deadline: float) -> None:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise ResponseTooLarge(
                f"{response.request.method} {response.url} announced {int(declared):,} bytes, more "
                f"than the {self.max_bytes:,}-byte limit", response=response)
        chunks = []
        size = 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise ResponseTooLarge(
                    f"{response.request.method} {response.url} sent more than the "
                    f"{self.max_bytes:,}-byte limit", response=response)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                response.close()
                raise DeadlineExceeded(f"{response.request.method} {response.url} did not complete "
                                       f"within {self.timeout:g}s", response=response)
        response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]  # requests' own flag


def _redirect(method: str, url: str, response: requests.Response) -> RedirectRefused:
    from urllib.parse import urljoin

    from ..redaction import printable

    target = urljoin(url, response.headers.get("Location", ""))
    source, goes = describe_origin(origin_of(url)), describe_origin(origin_of(target))
    where = f"another origin ({goes})" if goes != source else f"{printable(target, 200)}"
    return RedirectRefused(
        f"The FHIR server at {source} answered {method} {printable(url, 200)} with a redirect "
        f"({response.status_code}) to {where}. Redirects are never followed: the request (its "
        f"data and credentials) is not sent again elsewhere. If the server moved, set BASE_URL "
        "to its new address.", source=source, target=goes, request=response.request,
        response=response)


def _socket_timeouts(given: Any, total: float) -> Any:
    """requests' (connect, read) socket timeouts, never longer than the total deadline."""
    if isinstance(given, tuple):
        return tuple(total if t is None else min(float(t), total) for t in given)
    if given is None:
        return total
    return min(float(given), total)
