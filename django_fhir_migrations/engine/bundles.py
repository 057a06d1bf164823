"""Batch and transaction bundles that a migration fills with `with ctx.batch() as b:`.

Entries are collected and sent every BUNDLE_SIZE entries, so memory stays flat however many
resources a migration touches. A transaction is all-or-nothing per bundle: a failed bundle
raises at once and stops the migration (bundles sent before it stay written). A batch applies
each entry on its own; failed entries are collected with the resource they concern and raised
together when the block ends (or handled by the caller with `raise_errors=False`).

A batch bundle is sent with HAPI FHIR's `X-Transaction-Semantics` header asking the server to
try it as one transaction first and, only if that fails, to process it again as a batch (HAPI
8.2+; other servers ignore the header). The outcome is the batch's: every entry that can be
applied is, and each failure is reported per entry. HAPI runs each batch entry in a database
transaction of its own, so a clean bundle committed as one is several times faster there;
`transaction_first=False` sends a plain batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BundleError, UntrustedResponseError
from .fhir.client import outcome_text, query_string, resource_path
from .redaction import printable

if TYPE_CHECKING:
    from .context import MigrationContext

logger = logging.getLogger("django_fhir_migrations")

# HAPI FHIR's TransactionSemanticsHeader: one retry, which is the plain batch.
TRANSACTION_SEMANTICS_HEADER = "X-Transaction-Semantics"
TRY_AS_TRANSACTION_FIRST = "retryCount=1; tryBatchAsTransactionFirst=true"


@dataclass
class BundleFailure:
    method: str
    url: str
    status: str
    diagnostics: str
    resource: Mapping[str, Any] | None

    def describe(self) -> str:
        return f"{self.method} {self.url}"


class BundleWriter:
    def __init__(self, ctx: MigrationContext, kind: str, *, size: int | None = None,
                 raise_errors: bool = True, transaction_first: bool = True):
        assert kind in ("batch", "transaction")
        self.ctx = ctx
        self.kind = kind
        self.headers = ({TRANSACTION_SEMANTICS_HEADER: TRY_AS_TRANSACTION_FIRST}
                        if kind == "batch" and transaction_first else {})
        self.size = size or ctx.settings.bundle_size
        self.raise_errors = raise_errors
        self.entries: list[dict[str, Any]] = []
        self.failures: list[BundleFailure] = []
        self.sent_bundles = 0
        self.committed_whole = 0  # batch bundles the server committed as one transaction
        self.written = 0

    # --- collecting entries --------------------------------------------------------------

    def create(self, resource: Any, *, if_none_exist: str | None = None) -> None:
        data = self.ctx.as_json(resource)
        request = {"method": "POST", "url": resource_path(data["resourceType"])}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
        self._add(request, data)

    def update(self, resource: Any, *, check_version: bool = True) -> None:
        data = self.ctx.as_json(resource)
        request = {"method": "PUT", "url": resource_path(data["resourceType"], data.get("id"))}
        version = (data.get("meta") or {}).get("versionId")
        if check_version:
            if not version:
                raise ValueError(
                    f"{request['url']}: a version-aware update needs meta.versionId from a read; "
                    "pass check_version=False to overwrite whatever is there"
                )
            request["ifMatch"] = f'W/"{version}"'
        self._add(request, data)

    def conditional_update(self, resource: Any, query: str) -> None:
        data = self.ctx.as_json(resource)
        self._add({"method": "PUT", "url": f"{resource_path(data['resourceType'])}?{query_string(query)}"},
                  data)

    def delete(self, resource_or_type: Any, resource_id: str | None = None) -> None:
        """Delete a resource: `delete(resource)` or `delete("Patient", "123")`, as ctx.delete."""
        if resource_id is None and not isinstance(resource_or_type, str):
            data = self.ctx.as_json(resource_or_type)
            resource_or_type, resource_id = data["resourceType"], data.get("id")
        if resource_id is None:
            raise TypeError(
                f"{self.kind}.delete({resource_or_type!r}) names no resource: give a resource, or a "
                "type and an id"
            )
        self._add({"method": "DELETE", "url": resource_path(resource_or_type, resource_id)}, None)

    def _add(self, request: dict[str, Any], resource: dict[str, Any] | None) -> None:
        entry: dict[str, Any] = {"request": request}
        if resource is not None:
            # The whole resource, meta included: a PUT without meta.profile loses the profile
            # claims on HAPI (and tags and security labels on servers that do not keep them).
            # Where the version check lives (ifMatch), a versionId in the body changes nothing.
            entry["resource"] = dict(resource)
            if self.kind == "transaction" and request["method"] == "POST":
                entry["fullUrl"] = f"urn:uuid:{self.ctx.new_uuid()}"
        self.entries.append(entry)
        if len(self.entries) >= self.size:
            self.flush()

    # --- sending -------------------------------------------------------------------------

    def flush(self) -> None:
        if not self.entries:
            return
        entries, self.entries = self.entries, []
        bundle = {"resourceType": "Bundle", "type": self.kind, "entry": entries}
        if self.ctx.dry_run:
            self.ctx.show_write("POST", f"({self.kind} of {len(entries)} entries)", None)
            for entry in entries:
                self.ctx.show_write(entry["request"]["method"], entry["request"]["url"],
                                    entry.get("resource"))
            return
        # A transaction failing as a whole answers 4xx with an OperationOutcome: that raises
        # through the connection as FhirServerError, which we turn into a BundleError.
        from .errors import FhirServerError

        try:
            reply = self.ctx.connection.request("POST", "", json=bundle, headers=self.headers,
                                                idempotent=False)
        except FhirServerError as exc:
            if self.kind == "transaction":
                raise BundleError("transaction", [(f"bundle of {len(entries)} entries",
                                                   exc.status or "error", str(exc))]) from None
            raise
        self.sent_bundles += 1
        response = reply.body or {}
        results = validated_results(self.kind, len(entries), response, reply.url)
        if self.kind == "batch" and response.get("type") == "transaction-response":
            self.committed_whole += 1
        self._check(entries, results)

    def _check(self, entries: list[dict[str, Any]], results: list[Mapping[str, Any]]) -> None:
        for entry, result in zip(entries, results, strict=True):
            status = str((result.get("response") or {}).get("status", ""))
            if status[:1] in ("2", "3"):
                self.written += 1
                continue
            diagnostics = outcome_text((result.get("response") or {}).get("outcome"))
            failure = BundleFailure(entry["request"]["method"], entry["request"]["url"], status,
                                    diagnostics, entry.get("resource"))
            logger.error("%s entry failed: %s -> %s %s", self.kind, failure.describe(), status,
                         diagnostics)
            self.failures.append(failure)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            return  # the migration already failed; do not send half a block
        self.flush()
        if self.failures and self.raise_errors:
            raise BundleError(self.kind, [(f.describe(), f.status, f.diagnostics)
                                          for f in self.failures])


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
