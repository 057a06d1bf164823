"""Walking a search result page by page, with the next page fetched while this one is used.

A data migration reads a page, then spends most of its time writing (a bundle per page). The
server can load the next page on its other core during that write, so the next page is
requested in the background as soon as the caller takes the *last* entry of the current one:
a caller that stops early costs no extra request, and at most two pages are ever held, so
memory stays flat. Holding a page that long is no new staleness: a page of PAGE_SIZE entries
is held just as long while its own bundles are written, and version-aware updates refuse
(412) any resource that changed in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import NotAFhirServerError

if TYPE_CHECKING:
    from .client import FhirConnection, Reply


def next_link(bundle: Mapping[str, Any]) -> str | None:
    return next((link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"),
                None)


def _bundle(reply: Reply) -> dict[str, Any]:
    bundle = reply.body or {}
    if bundle.get("resourceType") != "Bundle":
        raise NotAFhirServerError(f"GET {reply.url} did not return a Bundle.", url=reply.url)
    return bundle


def search_entries(connection: FhirConnection, path: str, params: Mapping[str, Any] | None = None,
                   *, read_ahead: bool = True) -> Iterator[dict[str, Any]]:
    """Every entry of every page of the search, following `link[next]` (never `_offset`).

    With `read_ahead`, the next page is requested when the caller takes the last entry of
    this one; an error of that request is raised where the caller would have waited for it.
    """
    executor = ThreadPoolExecutor(1, thread_name_prefix="fhir-migrations-page") if read_ahead else None
    pending: Future[Reply] | None = None
    try:
        bundle = _bundle(connection.get(path, params))
        while True:
            entries = bundle.get("entry") or []
            following = next_link(bundle)
            last = len(entries) - 1
            for index, entry in enumerate(entries):
                if index == last and following and executor is not None:
                    pending = executor.submit(connection.get, following)
                yield entry
            if not following:
                return
            reply = pending.result() if pending is not None else connection.get(following)
            pending = None
            bundle = _bundle(reply)
    finally:
        if executor is not None:
            # A caller that stopped early: let a page in flight finish, never leave a thread.
            executor.shutdown(wait=True, cancel_futures=True)
