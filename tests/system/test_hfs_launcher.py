"""The Helios launcher's choices that need no server: where the cache is, which ports and base
path, what Helios is told, and the nginx config (the proxy must pass the URI unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hfs import launcher, nginx


def test_the_cache_honours_xdg_cache_home_and_keeps_the_lead_build_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert launcher.binary() == tmp_path / "django-fhir-migrations" / "hfs-0.2.7" / "bin" / "hfs"
    assert launcher.target_dir() == tmp_path / "django-fhir-migrations" / "hfs-target"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert launcher.cache_root() == Path.home() / ".cache" / "django-fhir-migrations"


def test_ports_and_path_come_from_the_environment(monkeypatch):
    for name in ("HFS_PORT", "HFS_BACKEND_PORT", "HFS_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert launcher.base_url() == "http://127.0.0.1:8091/fhir"
    assert launcher.proxied() and launcher.server_env()["HFS_SERVER_PORT"] == "8090"
    monkeypatch.setenv("HFS_PATH", "/")
    assert launcher.base_url() == "http://127.0.0.1:8091"
    assert not launcher.proxied() and launcher.server_env()["HFS_SERVER_PORT"] == "8091"
    monkeypatch.setenv("HFS_PATH", "api/r4/")
    monkeypatch.setenv("HFS_PORT", "9001")
    assert launcher.base_url() == "http://127.0.0.1:9001/api/r4"
    monkeypatch.setenv("HFS_PORT", "http")
    with pytest.raises(launcher.LauncherError, match="HFS_PORT='http' is not a TCP port"):
        launcher.public_port()


def test_helios_is_told_its_public_address_and_to_enforce_validation(monkeypatch):
    monkeypatch.delenv("HFS_PATH", raising=False)
    monkeypatch.setenv("HFS_PORT", "8091")
    monkeypatch.setenv("HFS_REQUEST_TIMEOUT", "1")  # someone else's setting: not passed on
    env = launcher.server_env()
    assert env["HFS_BASE_URL"] == "http://127.0.0.1:8091/fhir"
    assert env["HFS_VALIDATION_MODE"] == "enforce"
    assert env["HFS_SERVER_HOST"] == "127.0.0.1"
    assert env["HFS_DATABASE_URL"].endswith("hfs-8091.db")  # a fresh file per start
    assert "HFS_REQUEST_TIMEOUT" not in env and "HFS_PORT" not in env


def test_the_proxy_passes_the_raw_uri_without_its_prefix(tmp_path):
    conf = nginx.write_config(listen_port=8091, upstream_port=8090, prefix="/fhir/", run_dir=tmp_path)
    text = conf.read_text()
    assert "listen 127.0.0.1:8091;" in text and "server 127.0.0.1:8090;" in text
    # $request_uri, not $uri: percent-encoding (a%7Cb, %2F) reaches Helios as sent.
    assert '"~^/fhir/?(?<rest>.*)$" /$rest;' in text and "map $request_uri $helios_uri" in text
    assert "location = /fhir {" in text and "location /fhir/ {" in text
    assert "client_max_body_size 128m;" in text
    assert all(str(tmp_path) in line for line in text.splitlines()
               if line.strip().startswith(("pid ", "error_log ", "access_log ", "client_body_temp")))
    assert (tmp_path / "nginx-8091-temp" / "body").is_dir()
    with pytest.raises(nginx.NginxError, match="path prefix"):
        nginx.config(listen_port=1, upstream_port=2, prefix="/", run_dir=tmp_path, name="x")
