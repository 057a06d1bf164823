"""The only code that reads or writes the migration state on the FHIR server.

The format, both ways (writing it and parsing what was read), is in state.py; this module is
the I/O: one search reads the state and, for a long history, its applied records
(`_revinclude`; beyond the server's include limit they are read page by page, checked against
the state's applied-count), and every write is version-aware (`If-Match`).
A write that adds, changes or removes records is one transaction with the state update, so a
process that lost its lease (a stale version) can record nothing at all, and a write whose
answer was lost can be sent again safely (the state's If-Match refuses the repeat; record
creates are conditional on the record's identifier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

from .clock import http_date
from .errors import CorruptStateError
from .fhir.client import FhirConnection, Reply, validated_results, version_from_location
from .fhir.paging import search_entries
from .redaction import printable
from .state import (
    RECORD_CODE,
    RECORD_IDENTIFIER,
    RECORD_SYSTEM,
    STATE_SYSTEM,
    AppliedMigration,
    MigrationState,
    applied_count,
    is_record,
    is_state,
    parse_state,
    with_records,
)

RECORDS_PER_PAGE = 1000


class StateRecorder:
    """Reads and writes one state (STATE_ID) and its applied records on one server."""

    def __init__(self, connection: FhirConnection, state_id: str):
        self.connection = connection
        self.state_id = state_id

    @property
    def search_params(self) -> dict[str, str]:
        return {"identifier": f"{STATE_SYSTEM}|{self.state_id}", "_revinclude": "Basic:subject"}

    def read(self) -> MigrationState:
        """Find the state by its identifier, with its records (one request for up to about a
        thousand applied migrations). A missing state is an empty one."""
        return self._read(self.search_params)

    def reread(self, state: MigrationState) -> MigrationState:
        """Read again by id (not subject to identifier indexing delays)."""
        if not state.exists:
            return self.read()
        return self._read({"_id": state.resource_id or "", "_revinclude": "Basic:subject"})

    def _read(self, params: dict[str, str]) -> MigrationState:
        reply = self.connection.get("Basic", params)
        bundle = reply.body or {}
        if bundle.get("resourceType") != "Bundle":
            raise CorruptStateError(self.state_id, "the search for it did not return a Bundle")
        entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
        matches: list[dict[str, Any]] = [
            e["resource"] for e in entries
            if (e.get("search") or {}).get("mode", "match") == "match"
            and (e.get("resource") or {}).get("resourceType") == "Basic"
            and is_state(e.get("resource") or {}, self.state_id)
        ]
        if len(matches) > 1:
            ids = ", ".join(f"Basic/{printable(m.get('id'), 64)}" for m in matches)
            raise CorruptStateError(
                self.state_id, f"more than one Basic resource carries its identifier ({ids})"
            )
        if not matches:
            return MigrationState(self.state_id, server_time=_server_time(reply))
        state = self._parse(matches[0], reply)
        included = [e.get("resource") or {} for e in entries
                    if (e.get("search") or {}).get("mode") == "include"]
        return self._with_records(state, included, matches[0])

    # --- records ---------------------------------------------------------------------------

    def _with_records(self, state: MigrationState, included: list[dict[str, Any]],
                      data: dict[str, Any]) -> MigrationState:
        expected = applied_count(data)
        records = [r for r in included if is_record(r, state.resource_id or "")]
        if expected is not None and len(records) < expected - len(state.applied):
            # The server capped the included resources: read the records page by page.
            records = [e.get("resource") or {} for e in search_entries(
                self.connection, "Basic",
                {"subject": f"Basic/{state.resource_id}", "code": f"{RECORD_SYSTEM}|{RECORD_CODE}",
                 "_count": RECORDS_PER_PAGE}, read_ahead=False)]
            records = [r for r in records if is_record(r, state.resource_id or "")]
        return with_records(state, records, expected)

    # --- writing ---------------------------------------------------------------------------

    def create(self, state: MigrationState) -> tuple[MigrationState, bool]:
        """Conditional create: of many processes racing to create the state, one wins.

        Returns (state, created). When it already existed, the state returned is a fresh read.
        """
        body = state.to_json()
        reply = self.connection.request(
            "POST", "Basic", json=body,
            headers={"If-None-Exist": f"identifier={quote(f'{STATE_SYSTEM}|{self.state_id}', safe='|:/')}",
                     "Prefer": "return=representation"},
        )
        if reply.status == 201:
            return self._written(state, body, reply, {}), True
        return self.read(), False

    def write(self, state: MigrationState, base: MigrationState | None = None) -> MigrationState:
        """Version-aware update of `state`, which was derived from `base` (default: itself).

        Records are added, changed and removed to match `state.applied`, in the same
        transaction. Raises VersionConflictError if the state changed since `base` was read.
        """
        return self.write_with(state, (), base)[0]

    def write_with(self, state: MigrationState, extra: Sequence[Mapping[str, Any]],
                   base: MigrationState | None = None) -> tuple[MigrationState, list[Mapping[str, Any]]]:
        """`write`, with `extra` transaction entries committed with the state or not at all
        (the AuditEvent of the migration a write records); returns their answers too. Still
        safe to repeat after a lost answer: the state's If-Match refuses the whole repeat."""
        base = base or state
        if not state.exists or not state.version_id:
            raise CorruptStateError(self.state_id, "it has no id or version to update against")
        body = state.to_json()
        body["id"] = state.resource_id
        path = f"Basic/{state.resource_id}"
        if_match = f'W/"{state.version_id}"'
        adds, changes, removes = self._record_changes(base, state)
        if not (adds or changes or removes or extra):
            reply = self.connection.request(
                "PUT", path, json=body, headers={"If-Match": if_match, "Prefer": "return=representation"})
            return self._written(state, body, reply, dict(base.records)), []
        entries: list[dict[str, Any]] = [
            {"fullUrl": self.connection.url(path), "resource": body,
             "request": {"method": "PUT", "url": path, "ifMatch": if_match}}]
        for entry in adds:
            identifier = quote(f"{RECORD_IDENTIFIER}|{entry.record_identifier(self.state_id)}", safe="|:/")
            entries.append({"resource": entry.to_record(self.state_id, state.resource_id or ""),
                            "request": {"method": "POST", "url": "Basic",
                                        "ifNoneExist": f"identifier={identifier}"}})
        for entry in changes:
            record_id = base.records[entry.revision]
            entries.append({"resource": dict(entry.to_record(self.state_id, state.resource_id or ""),
                                             id=record_id),
                            "request": {"method": "PUT", "url": f"Basic/{record_id}"}})
        for revision in removes:
            entries.append({"request": {"method": "DELETE", "url": f"Basic/{base.records[revision]}"}})
        entries += [dict(e) for e in extra]
        # Safe to repeat after a lost answer: the If-Match refuses a second state write.
        reply = self.connection.request(
            "POST", "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
            headers={"Prefer": "return=representation"}, idempotent=True)
        results = validated_results("transaction", len(entries), reply.body or {}, reply.url)
        records = {r: i for r, i in base.records.items() if r not in removes}
        for entry, result in zip(adds, results[1:1 + len(adds)], strict=True):
            new_id, _ = version_from_location((result.get("response") or {}).get("location"))
            if new_id:
                records[entry.revision] = new_id
        written = results[0].get("resource") or {}
        state_reply = Reply(status=200, url=reply.url, headers=reply.headers,
                            body=written if written.get("resourceType") == "Basic" else None)
        if state_reply.body is None:
            _, version = version_from_location((results[0].get("response") or {}).get("location"))
            body = dict(body, meta={"versionId": version})
        return self._written(state, body, state_reply, records), results[len(entries) - len(extra):]

    def _record_changes(self, base: MigrationState, state: MigrationState
                        ) -> tuple[list[AppliedMigration], list[AppliedMigration], list[str]]:
        """(records to create, to update, revisions whose record goes) for `state` to be
        written over `base`: none while the entries fit in the state itself."""
        if state.applied_inline:  # in the state itself: any record goes
            return [], [], list(base.records)
        wanted = {e.revision for e in state.applied}
        if base.inline:  # crossing the limit: every entry moves into a record
            return list(state.applied), [], []
        adds = [e for e in state.applied if e.revision not in base.records]
        changes = [e for e in state.applied if e.revision in base.records
                   and base.applied_record(e.revision) != e]  # a dict lookup each
        removes = [r for r in base.records if r not in wanted]
        return adds, changes, removes

    def refuses_stale_update(self, state: MigrationState) -> bool:
        """Whether the server refuses an update of the state whose If-Match is stale.

        The body is the resource exactly as read, so a server that ignores If-Match only
        rewrites what it holds (when nobody wrote in between; if someone did, that server
        offers no protection against it anyway, which is what this finds out).
        """
        if not state.exists or not state.version_id or state.resource is None:
            return True  # nothing to update yet: the first write is a conditional create
        body = state.resource.as_json()
        body.pop("meta", None)
        reply = self.connection.request(
            "PUT", f"Basic/{state.resource_id}", json=body,
            headers={"If-Match": f'W/"{stale_version(state.version_id)}"'}, allow=(409, 412),
        )
        return reply.status in (409, 412)

    # --- parsing (the format is state.py's) ------------------------------------------------

    def _written(self, state: MigrationState, body: dict[str, Any], reply: Reply,
                 records: dict[str, str]) -> MigrationState:
        if reply.body and reply.body.get("resourceType") == "Basic":
            parsed = self._parse(reply.body, reply)
        else:
            resource_id, version = version_from_location(reply.location)
            meta = body.get("meta") or {"versionId": reply.version_id or version}
            parsed = self._parse(dict(body, id=resource_id or body.get("id"), meta=meta), reply)
        return replace(parsed, applied=list(state.applied), records=records,
                       inline=state.applied_inline and bool(state.applied))

    def _parse(self, data: dict[str, Any], reply: Reply) -> MigrationState:
        version = reply.version_id if reply.body is data else (data.get("meta") or {}).get("versionId")
        return parse_state(self.state_id, data, version_id=version, server_time=_server_time(reply))


def stale_version(current: str) -> str:
    """A version id that is certainly not the current one: the previous integer, or "0"."""
    if current.isdigit() and int(current) > 1:
        return str(int(current) - 1)
    return "0" if current != "0" else "stale"


def _server_time(reply: Reply) -> datetime | None:
    return http_date(reply.headers.get("Date"))
