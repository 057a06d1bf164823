"""tests/unit: pure logic and the engine on a scripted connection (tests/support/fake_connection.py).

No test here may reach a network: any socket one opens fails it, whatever it imports. The lock
polls every 20 ms here, so waiting for a lease costs no time.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def unit_isolation(monkeypatch):
    from django_fhir_migrations.engine.lock import MigrationLock

    from ..support.fake_connection import forbid_network

    forbid_network(monkeypatch)
    monkeypatch.setattr(MigrationLock, "poll_interval", 0.02)
