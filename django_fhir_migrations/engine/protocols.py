"""What the helpers behind ctx (bundles, undo, bulk patch) need of it, as a Protocol.

`MigrationContext` builds a BundleWriter, calls undo() and bulk_patch(), and those call back
into it. Naming the part of ctx they use here, below all of them, keeps the imports one way:
context.py imports bundles.py, undo.py and bulk.py; they import this, never context.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .attempt import Attempt
    from .config import Settings
    from .events import EventStream
    from .fhir.client import FhirConnection
    from .journal import Journal
    from .script import MigrationScript
    from .state import AppliedMigration
    from .writes import Write

class ScriptContext(Protocol):
    settings: Settings
    connection: FhirConnection
    journal: Journal
    events: EventStream
    script: MigrationScript | None
    attempt: Attempt | None
    applied: AppliedMigration | None
    after_unrun_steps: bool

    @property
    def revision(self) -> str | None: ...

    def search(self, resource_type: str, *, as_dict: bool = False, read_ahead: bool = True,
               params: Mapping[str, Any] | None = None, **search: Any) -> Iterator[Any]: ...

    def count(self, resource_type: str, *, params: Mapping[str, Any] | None = None, **search: Any) -> int: ...

    def batch(self, *, size: int | None = None, raise_errors: bool = True,
              transaction_first: bool = True, workers: int | None = None,
              max_failures: float | None = None) -> Any: ...

    def create_write(self, resource: Any, *, key: str | Mapping[str, str] | None = None,
                     full_url: str | None = None) -> Write: ...

    def update_write(self, resource: Any, *, check_version: bool = True) -> Write: ...

    def conditional_update_writes(self, resource: Any, query: str | Mapping[str, str]) -> list[Write]: ...

    def patch_write(self, resource_type: str, resource_id: str, operations: Any, *,
                    version: str | None = None) -> Write: ...

    def delete_write(self, resource_or_type: Any, resource_id: str | None, *, where: str) -> Write: ...
