"""`fhirmigrate --fake` after `fhirreset`: find the application the server still holds records of.

A reset forgets which attempts wrote each migration's data, and undo needs exactly that list.
The Provenance is still on the server, tagged with the revision: the latest application is the
run of upgrade attempts since the last undo of that revision, in the order their records were
written. Only signed records count (a forged one could hand undo somebody else's resources).
"""

from __future__ import annotations

from dataclasses import dataclass

from .clock import parse_datetime
from .fhir.client import FhirConnection
from .provenance import recorded_for
from .signing import Signer


@dataclass(frozen=True)
class Application:
    """The attempts of the latest application (oldest first), or why there is none."""

    attempts: tuple[str, ...] = ()
    resources: int = 0
    first: str = ""
    last: str = ""
    why: str = ""


def latest_application(connection: FhirConnection, revision: str, signer: Signer) -> Application:
    attempts: dict[str, list] = {}  # attempt -> [direction, first recorded, last recorded, targets]
    untrusted = 0
    for record in recorded_for(connection, revision, signer):
        if not record.trusted:
            untrusted += 1
            continue
        seen = attempts.setdefault(record.attempt, [record.direction, record.recorded, record.recorded, 0])
        seen[1] = min(seen[1], record.recorded, key=_moment)
        seen[2] = max(seen[2], record.recorded, key=_moment)
        seen[3] += len(record.targets)
    newest_first = sorted(attempts.items(), key=lambda item: _moment(item[1][2]), reverse=True)
    chosen = []
    for attempt, (direction, *_rest) in newest_first:
        if direction != "upgrade":
            break  # an undo of the revision ended the application before it
        chosen.append(attempt)
    if not chosen:
        if newest_first:
            why = "the latest writes recorded for it are its undo"
        elif untrusted:
            why = f"{untrusted} record(s) name it but none is signed with this project's key"
        else:
            why = "the server holds no record of its writes"
        return Application(why=why)
    chosen.reverse()
    return Application(attempts=tuple(chosen), resources=sum(attempts[a][3] for a in chosen),
                       first=attempts[chosen[0]][1], last=attempts[chosen[-1]][2])


def _moment(value: str) -> float:
    moment = parse_datetime(value)
    return moment.timestamp() if moment is not None else 0.0
