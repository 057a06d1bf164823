"""A hostile server for tests: a loopback proxy in front of the real HAPI that can lie.

`HostileProxy` forwards every request to HAPI (rewriting HAPI's base URL in bodies and headers
to its own, so paging links lead back through it) unless a `Rule` matching the request's
method and route says otherwise. The route is the path + query **relative to the base URL's
path** (`/fhir/Basic?identifier=x` is `/Basic?identifier=x`, the base itself `` or `/`), so a
rule reads the same whatever path the server is served at (HAPI's `/fhir`, Helios' `/`). A rule's `before(exchange)` may
change the request (drop a header, say) or answer it itself (`exchange.answer(...)`); its
`after(exchange)` may change HAPI's answer (rewrite a next link, replace a bundle response).
`exchange.trickle` sends the answer one byte at a time, `trickle` seconds apart;
`exchange.drop("request")` closes the connection without forwarding (the server never saw it),
`exchange.drop("response")` after forwarding (it happened, but the client cannot know).

`Catcher` is another origin on loopback: it records every request it gets (with its
Authorization header) and answers an empty searchset, as a hostile host would after luring a
client there.

Both log what they saw for the tests to assert on. Used by tests/server/test_hostile.py, and by
fault_proxy.py (retries, lost answers, delays) for tests/server/test_faults.py.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
              "upgrade", "proxy-authenticate", "proxy-authorization", "content-encoding"}
FHIR_JSON = "application/fhir+json"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that give up (deadlines) are part of the scenarios


@dataclass
class Exchange:
    """One request and (once forwarded or answered) its response, as the rules see them."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    answered: bool = False
    trickle: float = 0.0
    delay: float = 0.0  # seconds to wait (after the request is logged) before forwarding
    dropped: str = ""  # "request" or "response": the connection is closed instead of answered
    action: str = "forward"  # how the log names what was done (fault_proxy's actions)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def response_json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Answer the request here, without forwarding it (body: JSON-able or bytes)."""
        self.answered = True
        self.status = status
        self.response_headers = list((headers or {"Content-Type": FHIR_JSON}).items())
        self.response_body = body if isinstance(body, bytes) else json.dumps(body or {}).encode()

    def set_response_json(self, data: Any) -> None:
        self.response_body = json.dumps(data).encode()

    def drop(self, when: str) -> None:
        """Close the connection abruptly: before forwarding ("request"), or after ("response")."""
        self.dropped = when
        self.answered = self.answered or when == "request"


@dataclass
class Rule:
    method: str | None
    path: str
    before: Callable[[Exchange], None] | None = None
    after: Callable[[Exchange], None] | None = None
    times: int = -1  # -1: every match
    skip: int = 0  # matching requests to let through first
    page: bool | None = None  # True: only requests for a next page the proxy served; False: others
    applied: int = 0
    seen: int = 0

    def claim(self, method: str, path: str, page: bool = False) -> bool:
        if self.method is not None and self.method != method:
            return False
        if re.search(self.path, path) is None:
            return False
        if self.page is not None and self.page != page:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times != -1 and self.applied >= self.times:
            return False
        self.applied += 1
        return True


@dataclass
class Seen:
    method: str
    path: str  # as sent: path + query
    authorization: str | None
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when the request arrived
    action: str = "forward"
    route: str = ""  # path + query relative to the base URL's path (what rules match)
    page: bool = False  # it followed a `next` link this proxy served

    def __post_init__(self) -> None:
        self.route = self.route or self.path


class _Server:
    """What HostileProxy and Catcher share: a threaded loopback server with a request log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def requests(self, method: str | None = None, path: str = "", *, page: bool | None = None
                 ) -> list[Seen]:
        """What was seen, by method, a regex on the route, and (`page`) whether it followed a
        next link this proxy served: how a test names "the second page" on any server, whatever
        its paging URLs look like (HAPI's `?_getpages=`, a cursor ...)."""
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method)
                    and re.search(path, s.route) and (page is None or s.page == page)]

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.handle(self, self.rfile.read(length) if length else None)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        return Handler


def abort(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection with a reset, answering nothing."""
    handler.close_connection = True
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def send(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes,
         trickle: float = 0.0) -> None:
    """Write a whole response; with `trickle`, one byte at a time (status line included)."""
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    lines += [f"Content-Length: {len(body)}", "", ""]
    raw = "\r\n".join(lines).encode("latin-1") + body
    try:
        if not trickle:
            handler.wfile.write(raw)
            return
        for index in range(len(raw)):
            handler.wfile.write(raw[index:index + 1])
            handler.wfile.flush()
            time.sleep(trickle)
    except OSError:
        handler.close_connection = True  # the client gave up: that is the point


class HostileProxy(_Server):
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.rules: list[Rule] = []
        self.next_links: set[str] = set()  # path + query of every next link served
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.origin + self.prefix

    def route(self, path: str) -> str:
        """`path` relative to the base URL's path, for rules and `requests()` to match."""
        if self.prefix and (path == self.prefix or path.startswith((self.prefix + "/", self.prefix + "?"))):
            return path[len(self.prefix):]
        return path

    def add(self, *rules: Rule) -> HostileProxy:
        with self.lock:
            self.rules.extend(rules)
        return self

    def rewrite(self, data: bytes) -> bytes:
        upstream = f"http://{self.upstream_host}:{self.upstream_port}".encode()
        return data.replace(upstream, self.origin.encode())

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        arrived = time.monotonic()
        exchange = Exchange(handler.command, handler.path, dict(handler.headers.items()), body)
        route = self.route(exchange.path)
        with self.lock:
            page = exchange.method == "GET" and exchange.path in self.next_links
            rules = [r for r in self.rules if r.claim(exchange.method, route, page)]
        for rule in rules:
            if rule.before:
                rule.before(exchange)
        # Logged before forwarding: a client that gave up on a slow answer has still been seen.
        seen = Seen(exchange.method, exchange.path, exchange.headers.get("Authorization"),
                    exchange.status, arrived, exchange.action, route, page)
        self.record(seen)
        if exchange.delay:
            time.sleep(exchange.delay)
        if not exchange.answered:
            self._forward(exchange)
            for rule in rules:
                if rule.after:
                    rule.after(exchange)
            seen.status = exchange.status
            self._remember_next_links(exchange)
        if exchange.dropped:
            abort(handler)
            return
        send(handler, exchange.status, exchange.response_headers, exchange.response_body,
             exchange.trickle)

    def _remember_next_links(self, exchange: Exchange) -> None:
        """The next links of a Bundle as answered (after the rules), to know page requests."""
        if b'"next"' not in exchange.response_body:
            return
        try:
            bundle = exchange.response_json()
        except ValueError:
            return
        links = bundle.get("link") if isinstance(bundle, dict) else None
        for link in links if isinstance(links, list) else []:
            url = link.get("url") if isinstance(link, dict) and link.get("relation") == "next" else None
            if isinstance(url, str) and url.startswith(self.origin + "/"):
                with self.lock:
                    self.next_links.add(url[len(self.origin):])

    def _forward(self, exchange: Exchange) -> None:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        skipped = HOP_BY_HOP | {"host", "accept-encoding"}
        headers = {k: v for k, v in exchange.headers.items() if k.lower() not in skipped}
        try:
            connection.request(exchange.method, exchange.path, body=exchange.body, headers=headers)
            response = connection.getresponse()
            exchange.status = response.status
            exchange.response_headers = [
                (k, self.rewrite(v.encode()).decode() if k.lower() in ("location", "content-location") else v)
                for k, v in response.getheaders()
            ]
            exchange.response_body = self.rewrite(response.read())
        finally:
            connection.close()


class Catcher(_Server):
    """Another origin: records what reaches it, answers an empty searchset Bundle."""

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        self.record(Seen(handler.command, handler.path, handler.headers.get("Authorization"), 200))
        payload = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": 0}).encode()
        send(handler, 200, [("Content-Type", FHIR_JSON)], payload)


# --- rules used by the tests -----------------------------------------------------------------


def next_link_to_itself(exchange: Exchange) -> None:
    """An `after` that points a searchset's next link at the page just answered (a loop)."""
    def at_itself(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{exchange.path}"

    next_link_to(at_itself)(exchange)


def next_link_to(url_for: Callable[[str], str]) -> Callable[[Exchange], None]:
    """An `after` that points a searchset's next link at url_for(current next url)."""

    def after(exchange: Exchange) -> None:
        bundle = exchange.response_json()
        for link in (bundle or {}).get("link", []):
            if link.get("relation") == "next":
                link["url"] = url_for(link["url"])
        exchange.set_response_json(bundle)

    return after


def drop_header(name: str) -> Callable[[Exchange], None]:
    def before(exchange: Exchange) -> None:
        for key in [k for k in exchange.headers if k.lower() == name.lower()]:
            del exchange.headers[key]

    return before


def echo_authorization_401(exchange: Exchange) -> None:
    """A 401 whose OperationOutcome repeats the credentials it was sent (a careless server)."""
    exchange.answer(401, {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "login",
        "diagnostics": f"Refused Authorization: {exchange.headers.get('Authorization')}"}]})


def trickle(seconds_per_byte: float) -> Callable[[Exchange], None]:
    def after(exchange: Exchange) -> None:
        exchange.trickle = seconds_per_byte

    return after


def refuse_audit_events(proxy: HostileProxy) -> HostileProxy:
    """Make the server behind `proxy` keep no AuditEvents from clients, as Helios does: its
    CapabilityStatement offers no `create` for AuditEvent, and a POST of one is answered 405, as
    is a transaction or batch with one in it (Helios refuses the whole bundle)."""

    def without_audit_create(exchange: Exchange) -> None:
        statement = exchange.response_json()
        for rest in statement.get("rest", []):
            for resource in rest.get("resource", []):
                if resource.get("type") == "AuditEvent":
                    resource["interaction"] = [i for i in resource.get("interaction", [])
                                               if i.get("code") not in ("create", "update", "delete", "patch")]
        exchange.set_response_json(statement)

    def method_not_allowed(exchange: Exchange) -> None:
        exchange.answer(405, {"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "not-supported",
            "diagnostics": "Method POST not allowed for AuditEvent"}]})

    def transaction_with_an_audit_event(exchange: Exchange) -> None:
        """A bundle carrying an AuditEvent (a record with its AuditEvent) is refused whole."""
        bundle = exchange.json() if exchange.body and b'"AuditEvent"' in exchange.body else None
        if isinstance(bundle, dict) and any(
                (entry.get("resource") or {}).get("resourceType") == "AuditEvent"
                for entry in bundle.get("entry") or []):
            method_not_allowed(exchange)

    return proxy.add(Rule("GET", r"^/metadata", after=without_audit_create),
                     Rule("POST", r"^/AuditEvent/?$", before=method_not_allowed),
                     Rule("POST", r"^/?(\?.*)?$", before=transaction_with_an_audit_event))
