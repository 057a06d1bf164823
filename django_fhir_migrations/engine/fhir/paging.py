"""Walking a search result page by page, with the next pages fetched while this one is used.

A data migration reads a page, then spends most of its time writing (a bundle per page). The
server can load the following pages on its other core during those writes, so a background
thread walks `link[next]` up to PAGES_AHEAD pages ahead of the caller. Three, not one: HAPI
loads a large result in stages (its search pre-fetch thresholds, about 500 and 2,000 results by
default), and a request for the page that crosses a stage polls every 500 ms until that load
is done: 0.5-0.7 s, two to three bundles' worth of writing. Read three pages ahead, those waits
no longer stall the writes (benchmarks/README.md, run 7). Memory stays flat whatever the number
of matches: the caller's page, two waiting in the queue and one being fetched. A caller that
stops early costs at most PAGES_AHEAD extra requests. Holding a page a little longer is no new
staleness: version-aware updates refuse (412) any resource that changed since it was read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import NotAFhirServerError, UntrustedResponseError
from ..redaction import printable

if TYPE_CHECKING:
    from .client import FhirConnection, Reply

from .cancel import cancellable

PAGES_AHEAD = 3
# Fresh results (not a cached copy of an identical search), and an error for a parameter the
# server does not know: a misspelt one must stop a migration, not match every resource (FHIR's
# lenient default, Helios' among them, drops it).
FRESH = {"Cache-Control": "no-cache", "Prefer": "handling=strict"}
THREAD_NAME = "fhir-migrations-page"
_END = object()  # the producer's last word: no more pages


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _bundle(reply: Reply) -> dict[str, Any]:
    bundle = reply.body or {}
    if bundle.get("resourceType") != "Bundle":
        raise NotAFhirServerError(f"GET {reply.url} did not return a Bundle.", url=reply.url)
    entries = bundle.get("entry")
    if entries is not None and not isinstance(entries, list):
        raise UntrustedResponseError(f"GET {reply.url} returned a Bundle whose entry is not a list.",
                                     url=reply.url)
    return bundle


class NextLinks:
    """Which `link[next]` URLs may be followed: BASE_URL's origin only, each URL once.

    A next link to another origin (a misconfigured proxy, a hostile server) would get the
    search's parameters and whatever the session sends; one seen before would loop forever.
    Both stop the search with an error rather than end it early, since the pages not read
    would be resources silently left unmigrated.
    """

    def __init__(self, connection: FhirConnection, first_url: str):
        self.connection = connection
        self.seen: set[str] = {connection.url(first_url)}

    def check(self, url: str | None) -> str | None:
        if url is None:
            return None
        absolute = self.connection.url(url)
        if not self.connection.same_origin(absolute):
            raise UntrustedResponseError(
                f"The FHIR server's search result points its next page at another origin "
                f"({printable(absolute, 200)}), not {self.connection.base_url}. The search was "
                "stopped there and no credentials were sent to it; check the server's (or its "
                "proxy's) base URL configuration.", url=absolute,
            )
        if absolute in self.seen:
            raise UntrustedResponseError(
                f"The FHIR server's search result gives a next page it has already given "
                f"({printable(absolute, 200)}): following it would loop forever. The search was "
                "stopped there.", url=absolute,
            )
        self.seen.add(absolute)
        return absolute


def search_entries(connection: FhirConnection, path: str, params: Mapping[str, Any] | None = None,
                   *, read_ahead: bool = True, form: Mapping[str, str] | None = None
                   ) -> Generator[dict[str, Any], None, None]:
    """Every entry of every page of the search, following `link[next]` (never `_offset`).

    The first page is read on the caller's thread (`form`: as a POST `_search` to `path`, for
    parameters too long for a URL). With `read_ahead`, the following pages are read by a
    background thread, at most PAGES_AHEAD ahead; an error there is raised where the caller
    would have waited for that page.
    """
    # A migration searches what it, or the run it resumes, just changed (HAPI reuses an identical
    # search's results for a minute by default), and a misspelt parameter must not match all.
    first = (connection.request("POST", path, data=form, headers=FRESH) if form is not None
             else connection.get(path, params, headers=FRESH))
    links = NextLinks(connection, first.url)
    bundle = _bundle(first)
    following = links.check(next_link(bundle))
    if not read_ahead or not following:
        while True:
            yield from bundle.get("entry") or []
            if not following:
                return
            bundle = _bundle(connection.get(following))
            following = links.check(next_link(bundle))

    pages = _PageReader(connection, following, links)
    try:
        yield from bundle.get("entry") or []
        while (page := pages.take()) is not None:
            yield from page.get("entry") or []
    finally:
        pages.close()


class _PageReader:
    """A background thread fetching pages: PAGES_AHEAD - 1 wait in the queue, one in its hands."""

    def __init__(self, connection: FhirConnection, first_url: str, links: NextLinks):
        self.connection = connection
        self.links = links
        self.pages: queue.Queue[Any] = queue.Queue(maxsize=PAGES_AHEAD - 1)  # PAGES_AHEAD >= 2
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first_url,), name=THREAD_NAME,
                                       daemon=True)
        self.thread.start()

    def _run(self, url: str | None) -> None:
        try:
            with cancellable(self.stopped):
                self._read(url)
        except BaseException as exc:  # handed to the caller, raised where it waits
            self._put(exc)
            return
        self._put(_END)

    def _read(self, url: str | None) -> None:
        while url and not self.stopped.is_set():
            bundle = _bundle(self.connection.get(url))
            url = self.links.check(next_link(bundle))
            self._put(bundle)

    def _put(self, item: Any) -> None:
        while not self.stopped.is_set():
            try:
                self.pages.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self) -> dict[str, Any] | None:
        """The next page; None after the last; the background request's error, raised here."""
        item = self.pages.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading (a caller that stopped early, or a signal): a wait before a retry ends
        at once, a request in flight within its deadline; the join is bounded by that too."""
        self.stopped.set()
        self.thread.join(timeout=self.connection.timeout + 5)
