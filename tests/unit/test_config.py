"""Settings: defaults, environment overrides, and clear errors for bad values."""

from __future__ import annotations

import pytest

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.errors import ConfigurationError


def test_environment_overrides_settings(tmp_path):
    settings = Settings.build(
        {"BASE_URL": "http://a.example/fhir", "STATE_ID": "x"},
        environ={"FHIR_BASE_URL": "http://b.example/fhir/", "MIGRATION_RESOURCE_ID": "seed-id",
                 "MIGRATION_SCRIPTS_DIR": str(tmp_path), "FHIR_MIGRATIONS_LOCK_TTL": "12"},
    )
    assert settings.base_url == "http://b.example/fhir"
    assert settings.state_id == "seed-id"
    assert settings.locations[0].path == tmp_path.resolve()
    assert settings.lock_ttl == 12


@pytest.mark.parametrize("values, setting", [
    ({"BASE_URL": "not a url"}, "BASE_URL"),
    ({"BASE_URL": "ftp://x.example/fhir"}, "BASE_URL"),
    ({"BASE_URL": "http://user:pw@x.example/fhir"}, "BASE_URL"),
    ({"AUTH": {"type": "kerberos"}}, "AUTH"),
    ({"AUTH": {"type": "bearer"}}, "AUTH"),
    ({"TIMEOUT": "soon"}, "TIMEOUT"),
    ({"RETRIES": -1}, "RETRIES"),
    ({"STATE_ID": "a|b"}, "STATE_ID"),
    ({"SCRIPTS_DIRS": ["/does/not/exist"]}, "SCRIPTS_DIRS"),
    ({"NOT_A_KEY": 1}, "NOT_A_KEY"),
])
def test_bad_values_name_the_setting(values, setting):
    with pytest.raises(ConfigurationError) as info:
        Settings.build(values, environ={})
    assert setting in info.value.setting


def test_password_in_url_is_not_echoed():
    with pytest.raises(ConfigurationError) as info:
        Settings.build({"BASE_URL": "http://user:hunter2@x.example/fhir"}, environ={})
    assert "hunter2" not in str(info.value)


def test_missing_base_url_is_explained_when_needed():
    settings = Settings.build({}, environ={})
    with pytest.raises(ConfigurationError, match="FHIR_BASE_URL"):
        settings.require_base_url()


@pytest.mark.parametrize("key, value, environ", [
    ("LOCK_TTL", 1e308, {}),
    ("LOCK_TTL", None, {"FHIR_MIGRATIONS_LOCK_TTL": "1e308"}),
    ("WORKERS", 100_000, {}),
    ("TIMEOUT", 86_400, {}),
    ("RETRIES", 1000, {}),
    ("PAGE_SIZE", 10**9, {}),
    ("BUNDLE_SIZE", 10**9, {}),
    ("MAX_RUN_TIME", 10**12, {}),
    ("MAX_RESPONSE_MB", 10**7, {}),
    ("LOCK_TIMEOUT", 10**9, {}),
])
def test_every_number_has_an_upper_bound_named_in_one_paragraph(key, value, environ):
    values = {} if value is None else {key: value}
    with pytest.raises(ConfigurationError) as info:
        Settings.build(values, environ=environ)
    assert key in info.value.setting
    assert "must be at most" in str(info.value) and "\n" not in str(info.value)


def test_the_signing_key_defaults_to_none_and_fallbacks_verify_old_signatures():
    assert Settings.build({}, environ={}).signing_keys == ()
    with pytest.raises(ConfigurationError, match="FHIR_MIGRATIONS_SIGNING_KEY"):
        Settings.build({}, environ={}).signer  # noqa: B018
    old = Settings.build({"SIGNING_KEY": "old-secret"}, environ={}).signer
    rotated = Settings.build({}, environ={"FHIR_MIGRATIONS_SIGNING_KEY": "new-secret",
                                          "FHIR_MIGRATIONS_SIGNING_KEY_FALLBACKS": '["old-secret"]'}).signer
    signature = old.sign(b"record")
    assert rotated.verify(b"record", signature)  # still trusted after rotation
    assert not rotated.verify(b"another record", signature)
    assert not Settings.build({"SIGNING_KEY": "new-secret"}, environ={}).signer.verify(b"record", signature)
    assert rotated.sign(b"record") != signature  # new records are signed with the new key
    assert "secret" not in repr(Settings.build({"SIGNING_KEY": "new-secret"}, environ={}))
