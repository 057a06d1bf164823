"""The test server's launcher: its database choice and PostgreSQL discovery (no server needed)."""

from __future__ import annotations

import pytest

from tests.hapi import launcher, postgres


def test_hapi_db_defaults_to_h2_and_names_a_wrong_value(monkeypatch):
    monkeypatch.delenv("HAPI_DB", raising=False)
    assert launcher.database() == "h2"
    monkeypatch.setenv("HAPI_DB", " PostgreS ")
    assert launcher.database() == "postgres"
    monkeypatch.setenv("HAPI_DB", "mysql")
    with pytest.raises(launcher.LauncherError, match=r"HAPI_DB='mysql'.*`h2`.*`postgres`"):
        launcher.database()


def test_a_wrong_pg_bindir_is_named_not_silently_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("HAPI_PG_BINDIR", str(tmp_path))
    with pytest.raises(postgres.PostgresError, match=f"HAPI_PG_BINDIR='{tmp_path}'.*initdb"):
        postgres.bindir()
    for tool in postgres.TOOLS:
        (tmp_path / tool).write_text("")
    assert postgres.bindir() == tmp_path


def test_the_cluster_lives_under_the_run_dir_named_by_its_port(tmp_path):
    cluster = postgres.Cluster(tmp_path, 5499)
    assert cluster.data_dir == tmp_path / "pg-5499"
    assert cluster.jdbc_url == "jdbc:postgresql://127.0.0.1:5499/hapi"
    assert not cluster.is_running()
    cluster.stop()  # nothing to stop: no error, nothing created
    assert not cluster.data_dir.exists()
