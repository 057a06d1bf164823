"""Faults of an honest but unreliable network, injected by the hostile proxy (hostile.py).

Each `Fault` matches requests by method and a regex on the route (path and query relative to
the base URL's path: `^/Basic\\?` whatever path the server is at) and, for the
matches it is told to affect, does one of:

- "drop-request":  close the connection without forwarding (the server never saw it);
- "drop-response": forward, let the server process it, then close without answering
                   (the ambiguous case: it happened, but the client cannot know);
- "delay":         wait `delay` seconds, then forward;
- "status":        answer `status` (e.g. 503, 429) with `Retry-After` without forwarding.

Everything else is forwarded unchanged, through `HostileProxy` (links and Locations lead back
through the proxy). `count()` asks the log how often a fault (or any forward) happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hostile import Exchange, HostileProxy, Rule

INJECTED = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "transient", "diagnostics": "injected fault"}]}


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
    page: bool | None = None  # True: only requests for a next page (see HostileProxy.requests)

    def rule(self) -> Rule:
        if self.action not in ("drop-request", "drop-response", "delay", "status"):
            raise ValueError(f"unknown fault action {self.action!r}")

        def before(exchange: Exchange) -> None:
            exchange.action = self.action
            if self.action == "drop-request":
                exchange.drop("request")
            elif self.action == "status":
                headers = {"Content-Type": "application/fhir+json"}
                if self.retry_after is not None:
                    headers["Retry-After"] = self.retry_after
                exchange.answer(self.status, INJECTED, headers)
            elif self.action == "delay":
                exchange.delay = self.delay

        def after(exchange: Exchange) -> None:
            if self.action == "drop-response":
                exchange.drop("response")

        return Rule(self.method, self.path, before=before, after=after, times=self.times, skip=self.skip,
                    page=self.page)


class FaultProxy(HostileProxy):
    """A HostileProxy that takes Faults, and counts what it did by action."""

    def add(self, *faults: Fault | Rule) -> FaultProxy:
        super().add(*(f.rule() if isinstance(f, Fault) else f for f in faults))
        return self

    def count(self, method: str, path: str, action: str | None = None, *, page: bool | None = None
              ) -> int:
        return sum(1 for seen in self.requests(method, path, page=page)
                   if action is None or seen.action == action)
