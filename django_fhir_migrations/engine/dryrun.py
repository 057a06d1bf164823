"""A dry run: every write a migration makes is reported, none is sent.

With `--dry-run` the attempt's journal is made in its dry-run mode (journal.py): the writes of
ctx, its bundles and its undo come here instead of going to the server. Each is reported as a
`write_intercepted` event with its facts (method, type, id; `count` resources for a bulk patch)
and a detail line: the URL and which fields change (names, never data). Summing them up per
type is the front end's job. A write sent through the session itself (fhirclient models,
ctx.server) is intercepted there (`intercept`) and reported the same way.

To say which fields an update changes, the dry run remembers the last version of resources the
script read (`remember`), a bounded number of them: memory must not grow with the number of
resources a migration walks through.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import requests

from .events import BundleIntercepted, Event, EventStream, WriteIntercepted
from .redaction import printable
from .writes import INTERCEPTED, Result, Write

SEEN = 1000  # resources remembered for the "changes ..." of a dry-run update
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")


class DryRun:
    """The writes of one script's dry run, reported as events (see the module docstring)."""

    def __init__(self, events: EventStream, script: Any = None, base_url: str = ""):
        self.events = events
        self.script = script
        self.base_url = base_url
        self.writes: list[tuple[str, str]] = []  # (method, path) of every write reported
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # --- the journal's sender in a dry run (journal.py) -------------------------------------

    def one(self, write: Write) -> None:
        """A single write: reported; nothing comes back."""
        request = write.request()
        self.show_write(request["method"], request["url"], write.body)

    def bundle(self, writes: Sequence[Write], *, atomic: bool, headers: Any = None,
               representation: bool = False) -> list[Result]:
        """A bundle: its header, then each write, in order; every entry "intercepted"."""
        self.show_bundle("transaction" if atomic else "batch", len(writes))
        for write in writes:
            self.one(write)
        return [Result(write, INTERCEPTED) for write in writes]

    # --- reports ----------------------------------------------------------------------------

    def show_write(self, method: str, path: str, body: Any, *, count: int = 1) -> None:
        """Report one intercepted write as facts (method, type, id; `count` resources for a
        bulk patch) and a detail line (URL and which fields change: names, never data); the
        front end prints the detail at -v 2 and sums the facts up at `dry_run_done`."""
        summary = self._summarize(method, path, body)
        path = printable(path, 300)
        resource_type, resource_id = resource_of(path)
        self.writes.append((method, path))
        self.events.emit(WriteIntercepted(self.script, method, resource_type, resource_id,
                                          f"{method} {path}{summary}", count))

    def show_bundle(self, kind: str, entries: int) -> None:
        """A bundle that would have been sent: its entries are reported as writes, one by one."""
        self.events.emit(BundleIntercepted(self.script, kind, entries))

    def remember(self, resource: Mapping[str, Any]) -> None:
        """A resource the script read: what a later update of it is compared with."""
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        self._seen[key] = dict(resource)
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    def intercept(self, request: requests.PreparedRequest) -> requests.Response:
        """A write sent through the session itself (fhirclient models, ctx.server): reported as
        any other intercepted write, answered with an empty 200, never sent."""
        url = request.url or ""
        path = url[len(self.base_url):] if self.base_url and url.startswith(self.base_url) else url
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

    def _summarize(self, method: str, path: str, body: Any) -> str:
        if not isinstance(body, Mapping):
            return f" ({len(body)} patch operations)" if isinstance(body, list) else ""
        if body.get("resourceType") == "Parameters":
            return f" ({len(body.get('parameter') or [])} patch operations)"
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


def printer(stdout: IO[str]) -> Callable[[Event], None]:
    """A listener that prints intercepted writes: for a ctx made on its own (tests, a notebook),
    which has no front end listening."""

    def on_event(event: Event) -> None:
        if isinstance(event, WriteIntercepted):
            stdout.write(f"  [dry-run] {event.request}\n")

    return on_event


def resource_of(path: str) -> tuple[str, str]:
    """('Patient', '123') for 'Patient/123' (or '/Patient/123/_history/2', 'Patient/123?x'),
    ('Patient', '') for 'Patient' or 'Patient?identifier=...', ('', '') for the base URL."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if not _RESOURCE_TYPE.fullmatch(parts[0]):
        return "", ""
    resource_id = parts[1] if len(parts) > 1 and not parts[1].startswith(("$", "_")) else ""
    return parts[0], resource_id
