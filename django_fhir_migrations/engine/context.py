"""`ctx`, what `upgrade(ctx)` and `downgrade(ctx)` get: the right way to change data, made easy.

It carries the SMART on FHIR client (`ctx.client`, `ctx.server`) and helpers: `search` that
follows `link[next]` page by page (constant memory), `count`, `read`, version-aware `update`,
`create`/`delete`/`patch`, conditional create/update, `batch()`/`transaction()` bundles, a logger,
a progress bar and `dry_run`. Every write goes through `_write`, so `--dry-run` intercepts them
all: it prints what would be sent and sends nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, TypeVar

import requests
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from .bundles import BundleWriter
from .config import Settings
from .events import Event, EventStream
from .fhir.client import FhirConnection, Reply, query_string, resource_path
from .fhir.paging import search_entries
from .redaction import printable

T = TypeVar("T")
PROGRESS_INTERVAL = 0.25  # seconds between progress events (a bar redraws no faster)

script_logger = logging.getLogger("django_fhir_migrations.scripts")


class MigrationContext:
    def __init__(self, connection: FhirConnection, settings: Settings, *, dry_run: bool = False,
                 script: Any = None, direction: str = "upgrade", events: EventStream | None = None,
                 stdout: IO[str] | None = None):
        self.connection = connection
        self.settings = settings
        self.dry_run = dry_run
        self.script = script
        self.direction = direction
        self.stdout = stdout or sys.stdout
        # A ctx made on its own (tests, a notebook) has no front end listening: it prints its
        # intercepted writes to its stdout itself.
        self.events = events or EventStream([self._print_intercepted])
        self.log = script_logger
        self.dry_run_writes: list[tuple[str, str]] = []
        # Last version of resources this migration has seen, for dry-run diffs. Bounded: memory
        # must not grow with the number of resources a migration walks through.
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # --- the SMART on FHIR client --------------------------------------------------------

    @property
    def client(self):
        return self.connection.client

    @property
    def server(self):
        return self.connection.server

    @property
    def revision(self) -> str | None:
        return self.script.revision if self.script is not None else None

    # --- reading -------------------------------------------------------------------------

    def search(self, resource_type: str, *, as_dict: bool = False, read_ahead: bool = True,
               params: Mapping[str, Any] | None = None, **search: Any) -> Iterator[Any]:
        """Every resource of `resource_type` matching the search, across all pages.

        Pages are fetched by following `link[next]`, never by offset arithmetic, so memory
        holds a few pages whatever the number of matches: the caller's, and up to
        PAGES_AHEAD (3) that a background thread reads ahead while the caller writes
        (read_ahead=False: one page, read when needed). Yields fhirclient models, or dicts with
        as_dict=True. Only resources that matched are yielded (included resources are skipped).
        """
        query = dict(params or {})
        query.update(search)
        query.setdefault("_count", self.settings.page_size)
        entries = search_entries(self.connection, resource_path(resource_type), query,
                                 read_ahead=read_ahead)
        try:
            for entry in entries:
                if (entry.get("search") or {}).get("mode", "match") != "match":
                    continue
                resource = entry.get("resource")
                if resource is None:
                    continue
                self._remember(resource)
                yield resource if as_dict else self.to_model(resource)
        finally:
            entries.close()  # a caller that stopped early: stop the reader thread now

    def count(self, resource_type: str, *, params: Mapping[str, Any] | None = None,
              **search: Any) -> int:
        query = dict(params or {})
        query.update(search)
        query["_summary"] = "count"
        reply = self.connection.get(resource_path(resource_type), query)
        return int((reply.body or {}).get("total", 0))

    def read(self, resource_type: str, resource_id: str, *, as_dict: bool = False,
             missing_ok: bool = False) -> Any:
        reply = self.connection.get(resource_path(resource_type, resource_id),
                                    allow=(404, 410) if missing_ok else ())
        if reply.status in (404, 410):
            return None
        return self._result(reply.body or {}, as_dict)

    # --- writing -------------------------------------------------------------------------

    def create(self, resource: Any) -> Any:
        data = self.as_json(resource)
        reply = self._write("POST", resource_path(data["resourceType"]), data)
        return self._returned(resource, data, reply)

    def conditional_create(self, resource: Any, query: str | Mapping[str, str]) -> Any:
        """Create unless a resource matches `query` (If-None-Exist); returns the one that is."""
        data = self.as_json(resource)
        reply = self._write("POST", resource_path(data["resourceType"]), data,
                            headers={"If-None-Exist": query_string(query)})
        return self._returned(resource, data, reply)

    def update(self, resource: Any, *, check_version: bool = True) -> Any:
        """PUT the resource. Version-aware by default: refused (412) if it changed since read."""
        data = self.as_json(resource)
        path = resource_path(data["resourceType"], data.get("id"))
        headers = {}
        if check_version:
            version = (data.get("meta") or {}).get("versionId")
            if not version:
                raise ValueError(
                    f"{path}: a version-aware update needs meta.versionId from a read; pass "
                    "check_version=False to overwrite whatever is there"
                )
            headers["If-Match"] = f'W/"{version}"'
        reply = self._write("PUT", path, data, headers=headers)
        return self._returned(resource, data, reply)

    def conditional_update(self, resource: Any, query: str | Mapping[str, str]) -> Any:
        data = self.as_json(resource)
        data_without_id = {k: v for k, v in data.items() if k != "id"}
        reply = self._write("PUT", f"{resource_path(data['resourceType'])}?{query_string(query)}", data_without_id)
        return self._returned(resource, data, reply)

    def patch(self, resource_type: str, resource_id: str, operations: list[dict[str, Any]],
              *, version: str | None = None) -> Any:
        """JSON Patch (RFC 6902) the resource; optionally only if it is still at `version`."""
        headers = {"Content-Type": "application/json-patch+json"}
        if version:
            headers["If-Match"] = f'W/"{version}"'
        reply = self._write("PATCH", resource_path(resource_type, resource_id), operations, headers=headers)
        return reply.body if reply is not None else None

    def delete(self, resource_or_type: Any, resource_id: str | None = None) -> None:
        if resource_id is None and not isinstance(resource_or_type, str):
            data = self.as_json(resource_or_type)
            resource_or_type, resource_id = data["resourceType"], data.get("id")
        if resource_id is None:
            raise TypeError(
                f"ctx.delete({resource_or_type!r}) names no resource: give a resource, or a type and "
                "an id (use ctx.conditional_delete for a search)"
            )
        self._write("DELETE", resource_path(resource_or_type, resource_id), None)

    def conditional_delete(self, resource_type: str, query: str | Mapping[str, str]) -> None:
        self._write("DELETE", f"{resource_path(resource_type)}?{query_string(query)}", None)

    def batch(self, *, size: int | None = None, raise_errors: bool = True,
              transaction_first: bool = True) -> BundleWriter:
        """Collect writes into batch bundles of `size` (BUNDLE_SIZE); see bundles.py."""
        return BundleWriter(self, "batch", size=size, raise_errors=raise_errors,
                            transaction_first=transaction_first)

    def transaction(self, *, size: int | None = None) -> BundleWriter:
        return BundleWriter(self, "transaction", size=size)

    def _write(self, method: str, path: str, body: Any, headers: Mapping[str, str] | None = None
               ) -> Reply | None:
        if self.dry_run:
            self.show_write(method, path, body)
            return None
        return self.connection.request(method, path, json=body, headers=headers)

    def intercept_request(self, request: requests.PreparedRequest) -> requests.Response:
        """A write sent through the session itself (fhirclient models, ctx.server): printed as
        any other intercepted write, answered with an empty 200, never sent."""
        url = request.url or ""
        path = url[len(self.connection.base_url):] if url.startswith(self.connection.base_url) else url
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except (TypeError, ValueError):
                body = None
        self.show_write(request.method or "?", path, body)
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK (dry run: not sent)"
        response.url = url
        response.request = request
        response._content = b""
        return response

    def _print_intercepted(self, event: Event) -> None:
        if event.action == "write_intercepted":
            self.stdout.write(f"  [dry-run] {event.detail}\n")

    def show_write(self, method: str, path: str, body: Any) -> None:
        """Print one intercepted write: method, URL and what it changes."""
        summary = self._summarize(method, path, body)
        path = printable(path, 300)
        self.dry_run_writes.append((method, path))
        self.events.emit("write_intercepted", script=self.script, detail=f"{method} {path}{summary}")

    def _summarize(self, method: str, path: str, body: Any) -> str:
        if not isinstance(body, Mapping):
            return f" ({len(body)} patch operations)" if isinstance(body, list) else ""
        key = f"{body.get('resourceType')}/{body.get('id')}"
        before = self._seen.get(key)
        if method == "PUT" and before is not None:
            changed = sorted(
                k for k in set(before) | set(body)
                if k != "meta" and before.get(k) != body.get(k)
            )
            return f": changes {', '.join(changed)}" if changed else ": no changes"
        fields = [k for k in body if k not in ("resourceType", "id", "meta")]
        return f": {body.get('resourceType', 'resource')} with {', '.join(fields)}" if fields else ""

    # --- progress and output ---------------------------------------------------------------

    def progress(self, iterable: Iterable[T], total: int | None = None,
                 desc: str | None = None) -> Iterator[T]:
        """Yield from `iterable`, reporting how far it got: a bar on a terminal, a line every
        10 seconds otherwise (the front end decides, from `progress` events), and one log line
        at the end."""
        desc = desc or (self.script.name if self.script is not None else "progress")
        started = last = time.monotonic()
        count = 0
        self.events.emit("progress", script=self.script, detail=desc, count=0, total=total,
                         duration=0.0)
        try:
            for count, item in enumerate(iterable, 1):
                yield item
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    self.events.emit("progress", script=self.script, detail=desc, count=count,
                                     total=total, duration=now - started)
        finally:
            elapsed = time.monotonic() - started
            self.events.emit("progress", script=self.script, detail=desc, count=count, total=total,
                             duration=elapsed, final=True)
            self.log.info("%s: %d done in %.1fs", desc, count, elapsed)

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def as_json(resource: Any) -> dict[str, Any]:
        if isinstance(resource, Mapping):
            data = dict(resource)
        elif hasattr(resource, "as_json"):
            data = resource.as_json()
        else:
            raise TypeError(f"expected a FHIR resource (dict or fhirclient model), got {resource!r}")
        if "resourceType" not in data:
            raise ValueError("the resource has no resourceType")
        return data

    @staticmethod
    def to_model(data: Mapping[str, Any]) -> Any:
        return FHIRElementFactory.instantiate(data["resourceType"], dict(data))

    @staticmethod
    def new_uuid() -> str:
        return str(uuid.uuid4())

    def _result(self, data: dict[str, Any], as_dict: bool) -> Any:
        self._remember(data)
        return data if as_dict else self.to_model(data)

    def _returned(self, original: Any, sent: dict[str, Any], reply: Reply | None) -> Any:
        as_dict = isinstance(original, Mapping)
        if reply is None or not reply.body or reply.body.get("resourceType") != sent["resourceType"]:
            return original
        return self._result(reply.body, as_dict)

    def _remember(self, resource: Mapping[str, Any]) -> None:
        if not self.dry_run:
            return
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        self._seen[key] = dict(resource)
        self._seen.move_to_end(key)
        while len(self._seen) > 1000:
            self._seen.popitem(last=False)
