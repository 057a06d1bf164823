"""A fault-injecting HTTP proxy for tests: sits on loopback between the tool and the real server.

Each `Fault` matches requests by method and a regex on the path (with query) and, for the
matches it is told to affect, does one of:

- "drop-request":  close the connection without forwarding (the server never saw it);
- "drop-response": forward, let the server process it, then close without answering
                   (the ambiguous case: it happened, but the client cannot know);
- "delay":         wait `delay` seconds, then forward;
- "status":        answer `status` (e.g. 503, 429) with `Retry-After` without forwarding.

Everything else is forwarded unchanged, with the server's base URL in bodies and headers
rewritten to the proxy's, so paging links and Locations lead back through the proxy.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
              "upgrade", "proxy-authenticate", "proxy-authorization"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that gave up (timeouts) are part of the scenarios, not errors


@dataclass
class Fault:
    method: str | None
    path: str
    action: str
    times: int = 1  # how many matching requests to affect; -1 for all
    skip: int = 0  # matching requests to let through first
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    seen: int = 0
    applied: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None

    def claim(self) -> bool:
        """Called for each matching request; True if this one is to be faulted."""
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times != -1 and self.applied >= self.times:
            return False
        self.applied += 1
        return True


@dataclass
class LogEntry:
    method: str
    path: str
    action: str
    status: int | None = None


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:8090/fhir
    faults: list[Fault] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        parts = urlsplit(self.upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path) and fault.claim():
                    return fault
        return None

    def record(self, entry: LogEntry) -> None:
        with self._lock:
            self.log.append(entry)

    def count(self, method: str, path: str, action: str | None = None) -> int:
        return sum(1 for e in self.log if e.method == method and re.search(path, e.path)
                   and (action is None or e.action == action))

    def rewrite(self, data: bytes) -> bytes:
        upstream_root = f"http://{self.upstream_host}:{self.upstream_port}".encode()
        ours = f"http://127.0.0.1:{self.server.server_address[1]}".encode()
        return data.replace(upstream_root, ours)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # keep test output clean
            pass

        def _abort(self) -> None:
            """Close the connection abruptly (RST), answering nothing."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            method, path = self.command, self.path
            fault = proxy.pick(method, path)
            action = fault.action if fault else "forward"
            if fault and fault.action == "drop-request":
                proxy.record(LogEntry(method, path, action))
                self._abort()
                return
            if fault and fault.action == "status":
                payload = (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                           b'"code":"transient","diagnostics":"injected fault"}]}')
                self.send_response(fault.status)
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                proxy.record(LogEntry(method, path, action, fault.status))
                return
            if fault and fault.action == "delay":
                proxy.record(LogEntry(method, path, action))  # now: the client may give up first
                time.sleep(fault.delay)
            status, headers, data = self._forward(method, path, body)
            if action != "delay":
                proxy.record(LogEntry(method, path, action, status))
            if fault and fault.action == "drop-response":
                self._abort()
                return
            data = proxy.rewrite(data)
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    if name.lower() in ("location", "content-location"):
                        value = proxy.rewrite(value.encode()).decode()
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _forward(self, method: str, path: str, body: bytes | None):
            connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
            # No compression upstream: bodies are rewritten (links must lead back through us).
            skipped = HOP_BY_HOP | {"host", "accept-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            finally:
                connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    return Handler
