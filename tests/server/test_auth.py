"""Bearer, basic and SMART Backend Services auth, end to end through an authenticating proxy
in front of the real server: real migrations, asserted on what the server holds afterwards."""

from __future__ import annotations

import json
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from django_fhir_migrations.conf import get_settings
from django_fhir_migrations.engine import Project
from django_fhir_migrations.engine.errors import AuthenticationError, ConfigurationError
from django_fhir_migrations.engine.fhir import FhirConnection
from django_fhir_migrations.engine.fhir.auth import (
    DEFAULT_SCOPE,
    BasicAuth,
    BearerAuth,
    SmartBackendAuth,
    public_jwk_set,
)

from ..support.auth_proxy import Client, KeyPair, proxy_starter
from ..support.helpers import call


def answered(seen) -> bool:
    """Succeeded, or was the If-Match proof (a state update with a stale version, refused), or
    an AuditEvent a server refuses by policy (Helios: 405), alone or in the transaction of a
    record that carries one."""
    return (seen.status < 400
            or (seen.method == "PUT" and re.search(r"/Basic/[^/?]+$", seen.path) is not None
                and seen.status in (409, 412))
            or (seen.method == "POST" and re.search(r"(/AuditEvent|/)$", seen.path) is not None
                and seen.status == 405))


@pytest.fixture
def start_proxy(fhir_base_url):
    yield from proxy_starter(fhir_base_url)


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair.generate("rsa")


@pytest.fixture(scope="module")
def ec_key() -> KeyPair:
    return KeyPair.generate("ec")

TOKEN = "s3cr3t-static-token-0123456789abcdef"
PASSWORD = "correct horse battery staple"
CLIENT_ID = "fhir-migrations-test-client"


def add_patient_migrations(scripts, fhir, *names: str) -> list[str]:
    return [
        scripts.add(name, upgrade=f"ctx.create({fhir.patient_code(name)})",
                    downgrade=(f"for p in ctx.search('Patient', identifier={fhir.system + '|' + name!r}):\n"
                               f"    ctx.delete(p)"))
        for name in names
    ]


def patient_values(fhir) -> list[str]:
    return sorted(p["identifier"][0]["value"] for p in fhir.patients())


def through(fhir_settings, proxy, auth) -> None:
    fhir_settings["BASE_URL"] = proxy.base_url
    fhir_settings["AUTH"] = auth


def smart_auth(tmp_path, key: KeyPair, **extra) -> dict:
    path = tmp_path / "client-key.pem"
    path.write_bytes(key.private_pem)
    path.chmod(0o600)
    return {"type": "smart-backend", "client_id": CLIENT_ID, "private_key_file": str(path), **extra}


def assert_clean_failure(code: int, out: str, err: str, *secrets: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    for secret in secrets:
        assert secret not in out and secret not in err


# --- bearer --------------------------------------------------------------------------------


def test_bearer_token_authenticates_every_request(fhir_settings, fhir, scripts, start_proxy):
    proxy = start_proxy(bearer_token=TOKEN)
    through(fhir_settings, proxy, {"type": "bearer", "token": TOKEN})
    revisions = add_patient_migrations(scripts, fhir, "one", "two")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["one", "two"]
    assert fhir.applied() == revisions
    assert proxy.fhir_requests() and all(s.authorization == "bearer" and answered(s)
                                         for s in proxy.fhir_requests())


def test_wrong_bearer_token_fails_with_a_clear_401_that_names_auth(fhir_settings, fhir, scripts,
                                                                   start_proxy):
    proxy = start_proxy(bearer_token=TOKEN)
    wrong = "not-the-token-9876543210"
    through(fhir_settings, proxy, {"type": "bearer", "token": wrong})
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err, wrong, TOKEN)
    assert "401" in err and "AUTH" in err
    assert proxy.rejected == 1  # a static token is not retried
    assert fhir.patients() == [] and fhir.state() is None


def test_auth_from_the_environment_as_json(fhir_settings, fhir, scripts, start_proxy, clean_env):
    proxy = start_proxy(bearer_token=TOKEN)
    fhir_settings["BASE_URL"] = proxy.base_url
    clean_env.setenv("FHIR_MIGRATIONS_AUTH", json.dumps({"type": "bearer", "token": TOKEN}))
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["one"]


def test_bearer_token_with_a_line_break_is_a_configuration_error(fhir_settings, scripts,
                                                                 start_proxy):
    proxy = start_proxy(bearer_token=TOKEN)
    through(fhir_settings, proxy, {"type": "bearer", "token": "abc\ndef-secret-part"})
    scripts.add("one")
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err, "def-secret-part")
    assert "AUTH['token']" in err
    assert proxy.seen == []


# --- basic ---------------------------------------------------------------------------------


def test_basic_auth_migrates_and_downgrades(fhir_settings, fhir, scripts, start_proxy):
    proxy = start_proxy(basic=("migrator", PASSWORD))
    through(fhir_settings, proxy, {"type": "basic", "username": "migrator", "password": PASSWORD})
    add_patient_migrations(scripts, fhir, "one", "two")
    assert call("fhirmigrate")[0] == 0
    code, out, err = call("fhirdowngrade", "--noinput")
    assert code == 0, err
    assert patient_values(fhir) == ["one"]
    assert all(s.authorization == "basic" for s in proxy.fhir_requests())


def test_wrong_basic_password_fails_clearly(fhir_settings, fhir, scripts, start_proxy):
    proxy = start_proxy(basic=("migrator", PASSWORD))
    through(fhir_settings, proxy, {"type": "basic", "username": "migrator", "password": "guess-1234"})
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err, "guess-1234", PASSWORD)
    assert "401" in err and "AUTH" in err
    assert fhir.patients() == []


# --- SMART Backend Services ----------------------------------------------------------------


@pytest.mark.parametrize("kind,alg", [("rsa", "RS384"), ("ec", "ES384")])
def test_smart_backend_gets_a_token_and_migrates(fhir_settings, fhir, scripts, start_proxy,
                                                 tmp_path, request, kind, alg):
    key: KeyPair = request.getfixturevalue(f"{kind}_key")
    proxy = start_proxy(clients={CLIENT_ID: Client(key.public_pem, kid="key-2026")})
    through(fhir_settings, proxy, smart_auth(tmp_path, key, kid="key-2026",
                                             jku="https://client.example/jwks.json"))
    revisions = add_patient_migrations(scripts, fhir, "one", "two")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["one", "two"]
    assert fhir.applied() == revisions

    assert proxy.tokens_issued == 1  # cached for the whole run
    [token_request] = proxy.token_requests
    assert token_request.error is None
    assert token_request.authorization is None  # never sent with the FHIR credentials
    assert token_request.form["grant_type"] == "client_credentials"
    assert token_request.form["scope"] == DEFAULT_SCOPE
    assert token_request.header == {"alg": alg, "typ": "JWT", "kid": "key-2026",
                                    "jku": "https://client.example/jwks.json"}
    claims = token_request.claims
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == proxy.token_url
    assert 0 < claims["exp"] - token_request.received_at <= 300
    discovery = [s for s in proxy.seen if "/.well-known/" in s.path]
    assert len(discovery) == 1 and discovery[0].authorization is None
    assert all(s.authorization == "bearer" and answered(s) for s in proxy.fhir_requests())


def test_every_token_request_uses_a_new_jti_and_the_key_thumbprint_as_default_kid(
        fhir_settings, fhir, scripts, start_proxy, tmp_path, rsa_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)})
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key, scope="system/Patient.cruds"))
    add_patient_migrations(scripts, fhir, "one")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirshowmigrations")[0] == 0  # a second process: a second token
    assert proxy.tokens_issued == 2
    jtis = [r.claims["jti"] for r in proxy.token_requests]
    assert len(set(jtis)) == 2
    numbers = serialization.load_pem_public_key(rsa_key.public_pem).public_numbers()
    expected = _rfc7638_rsa(numbers.n, numbers.e)
    assert {r.header["kid"] for r in proxy.token_requests} == {expected}
    assert {r.form["scope"] for r in proxy.token_requests} == {"system/Patient.cruds"}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_the_published_jwk_set_is_what_the_server_needs(fhir_settings, fhir, scripts, start_proxy,
                                                        tmp_path, request, kind):
    """Register exactly what public_jwk_set prints (as docs/auth.md says) and migrate."""
    key: KeyPair = request.getfixturevalue(f"{kind}_key")
    auth = smart_auth(tmp_path, key)
    [jwk] = public_jwk_set(auth)["keys"]
    assert jwk["use"] == "sig" and jwk["alg"] == {"rsa": "RS384", "ec": "ES384"}[kind]
    assert "d" not in jwk and not {"p", "q", "dp", "dq", "qi"} & set(jwk)  # public half only
    public_pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    proxy = start_proxy(clients={CLIENT_ID: Client(public_pem, kid=jwk["kid"])})
    through(fhir_settings, proxy, auth)
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["one"]
    assert proxy.token_requests[0].header["kid"] == jwk["kid"]


def _rfc7638_rsa(n: int, e: int) -> str:
    """Independent RFC 7638 thumbprint (the spec's member order, no whitespace)."""
    import base64
    import hashlib

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = f'{{"e":"{b64(e)}","kty":"RSA","n":"{b64(n)}"}}'.encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def test_smart_token_is_renewed_after_it_expires_during_a_run(fhir_settings, fhir, scripts,
                                                              start_proxy, tmp_path, ec_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(ec_key.public_pem)}, token_lifetime=2)
    through(fhir_settings, proxy, smart_auth(tmp_path, ec_key))
    scripts.add("first", upgrade=f"ctx.create({fhir.patient_code('first')})")
    scripts.add("slow", upgrade=f"import time\ntime.sleep(3)\nctx.create({fhir.patient_code('slow')})")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["first", "slow"]
    assert fhir.applied() == scripts.revisions
    assert proxy.tokens_issued >= 2
    assert all(r.error is None for r in proxy.token_requests)


def test_expired_token_is_renewed_before_it_is_sent(fhir_settings, start_proxy, tmp_path, rsa_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)}, token_lifetime=2)
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key))
    connection = FhirConnection(get_settings())
    try:
        connection.get("Patient", {"_count": 1})
        time.sleep(2.5)
        connection.get("Patient", {"_count": 1})
    finally:
        connection.close()
    assert proxy.tokens_issued == 2
    assert proxy.rejected == 0  # renewed on time, not after a refusal


def test_a_401_with_smart_costs_exactly_one_token_refresh(fhir_settings, start_proxy, tmp_path,
                                                          rsa_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)})
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key))
    connection = FhirConnection(get_settings())
    try:
        connection.get("Patient", {"_count": 1})
        assert proxy.tokens_issued == 1

        proxy.revoke_tokens()  # e.g. the authorization server restarted
        assert connection.get("Patient", {"_count": 1}).status == 200
        assert (proxy.tokens_issued, proxy.rejected) == (2, 1)

        proxy.reject_all_tokens = True  # the client lost its access for good
        with pytest.raises(AuthenticationError) as raised:
            connection.get("Patient", {"_count": 1})
        assert (proxy.tokens_issued, proxy.rejected) == (3, 3)
        assert raised.value.status == 401 and "AUTH" in str(raised.value)
        assert not any(token in str(raised.value) for token in proxy.issued_tokens)
    finally:
        connection.close()


def test_token_endpoint_is_discovered_from_the_capability_statement(fhir_settings, fhir, scripts,
                                                                    start_proxy, tmp_path, ec_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(ec_key.public_pem)}, well_known=False,
                        capability_oauth=True)
    through(fhir_settings, proxy, smart_auth(tmp_path, ec_key))
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["one"]
    discovery = [(s.path.rsplit("/", 1)[-1], s.status, s.authorization) for s in proxy.seen
                 if "/.well-known/" in s.path or s.path.endswith("/metadata")]
    assert discovery[:2] == [("smart-configuration", 404, None), ("metadata", 200, None)]
    assert proxy.tokens_issued == 1 and proxy.token_requests[0].claims["aud"] == proxy.token_url


def test_configured_token_url_skips_discovery(fhir_settings, fhir, scripts, start_proxy, tmp_path,
                                              rsa_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)}, well_known=False)
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key, token_url=proxy.token_url))
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert not any("/.well-known/" in s.path or s.path.endswith("/metadata") for s in proxy.seen)


def test_server_without_a_token_endpoint_says_to_set_token_url(fhir_settings, fhir, scripts,
                                                               start_proxy, tmp_path, rsa_key):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)}, well_known=False)
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key))
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err, *rsa_key.secret_fragments())
    assert "token_url" in err and CLIENT_ID in err and "404" in err
    assert proxy.tokens_issued == 0 and fhir.patients() == []


def test_unregistered_key_is_refused_naming_the_client_and_no_key(fhir_settings, fhir, scripts,
                                                                  start_proxy, tmp_path, rsa_key):
    other = KeyPair.generate("rsa")
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)})
    through(fhir_settings, proxy, smart_auth(tmp_path, other))
    add_patient_migrations(scripts, fhir, "one")
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err, *other.secret_fragments(), *rsa_key.secret_fragments())
    assert CLIENT_ID in err and "invalid_client" in err and "PRIVATE KEY" not in err
    assert [r.error for r in proxy.token_requests] == [
        "invalid_client: the signature does not verify with the registered key"]
    assert proxy.token_requests[0].form["client_assertion"] not in err
    assert proxy.fhir_requests() == [] and fhir.patients() == []


@pytest.mark.parametrize("content,expected", [
    (None, "cannot read the SMART private key file"),
    (b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n",
     "not a readable PEM private key"),
    ("public", "holds a public key"),
    ("p256", "needs a P-384"),
])
def test_unusable_private_key_is_a_configuration_error_naming_auth(
        fhir_settings, scripts, start_proxy, tmp_path, rsa_key, content, expected):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)})
    path = tmp_path / "key.pem"
    if content == "public":
        path.write_bytes(rsa_key.public_pem)
    elif content == "p256":
        path.write_bytes(KeyPair.generate("ec-p256").private_pem)
    elif content is not None:
        path.write_bytes(content)
    through(fhir_settings, proxy, {"type": "smart-backend", "client_id": CLIENT_ID,
                                   "private_key_file": str(path)})
    scripts.add("one")
    with pytest.raises(ConfigurationError) as raised:
        FhirConnection(get_settings())
    assert raised.value.setting.startswith("AUTH") and expected in raised.value.problem
    code, out, err = call("fhirmigrate")
    assert_clean_failure(code, out, err)
    assert "Setting AUTH" in err and expected in err
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.startswith("-----"):
                assert line not in err
    assert proxy.seen == []  # refused before any request


def test_algorithm_that_does_not_fit_the_key_is_a_configuration_error(fhir_settings, tmp_path,
                                                                      ec_key, start_proxy):
    proxy = start_proxy()
    through(fhir_settings, proxy, smart_auth(tmp_path, ec_key, algorithm="RS384"))
    with pytest.raises(ConfigurationError) as raised:
        FhirConnection(get_settings())
    assert raised.value.setting == "AUTH['algorithm']" and "ES384" in raised.value.problem


def test_unknown_auth_option_is_a_configuration_error(fhir_settings, tmp_path, rsa_key, start_proxy):
    proxy = start_proxy()
    through(fhir_settings, proxy, smart_auth(tmp_path, rsa_key, scopes="system/*.read"))
    with pytest.raises(ConfigurationError) as raised:
        FhirConnection(get_settings())
    assert "'scopes'" in raised.value.problem and "scope" in raised.value.problem


# --- nothing shows a secret ----------------------------------------------------------------


def test_repr_of_settings_and_auth_objects_shows_no_secret(fhir_settings, tmp_path, rsa_key,
                                                           start_proxy):
    proxy = start_proxy(clients={CLIENT_ID: Client(rsa_key.public_pem)})
    cases = [
        ({"type": "bearer", "token": TOKEN}, BearerAuth, [TOKEN]),
        ({"type": "basic", "username": "migrator", "password": PASSWORD}, BasicAuth, [PASSWORD]),
        ({"type": "smart-backend", "client_id": CLIENT_ID,
          "private_key": rsa_key.private_pem.decode()}, SmartBackendAuth,
         rsa_key.secret_fragments()),
    ]
    for auth, cls, secrets in cases:
        through(fhir_settings, proxy, auth)
        settings = get_settings()
        connection = FhirConnection(settings)
        try:
            assert isinstance(connection.session.auth, cls)
            if cls is SmartBackendAuth:
                connection.get("Patient", {"_count": 1})
                secrets = secrets + proxy.issued_tokens
                assert proxy.issued_tokens
            shown = " ".join([repr(settings), str(settings), repr(connection.session.auth),
                              str(connection.session.auth)])
            assert settings.auth is not None  # still there, just not shown
            for secret in secrets:
                assert secret not in shown
        finally:
            connection.close()


def test_project_commands_work_through_the_python_api_with_smart(fhir_settings, fhir, scripts,
                                                                 start_proxy, tmp_path, ec_key):
    """The engine's front door (used by Flask, the CLI, the facade) authenticates the same way."""
    proxy = start_proxy(clients={CLIENT_ID: Client(ec_key.public_pem)})
    through(fhir_settings, proxy, smart_auth(tmp_path, ec_key))
    add_patient_migrations(scripts, fhir, "one")
    project = Project(get_settings())
    try:
        outcome = project.migrate()
        status = project.status()
    finally:
        project.close()
    assert outcome.exit_code == 0 and [s.name for s in outcome.done] == ["one"]
    assert status.known and [row.script.name for row in status.applied] == ["one"]
    assert patient_values(fhir) == ["one"] and proxy.tokens_issued == 1


def test_fhirclient_calls_in_a_migration_are_authenticated_too(fhir_settings, fhir, scripts,
                                                              start_proxy, tmp_path, ec_key):
    """Scripts may use fhirclient's models on ctx.server directly; they share the session."""
    proxy = start_proxy(clients={CLIENT_ID: Client(ec_key.public_pem)})
    through(fhir_settings, proxy, smart_auth(tmp_path, ec_key))
    scripts.add("via_fhirclient", upgrade=(
        "from fhirclient.models.patient import Patient\n"
        f"created = Patient({fhir.patient_code('fhirclient')}).create(ctx.server)\n"
        "assert Patient.read(created['id'], ctx.server).name[0].family == 'fhirclient'"))
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert patient_values(fhir) == ["fhirclient"]
    patient_requests = [s for s in proxy.seen if "/Patient" in s.path]
    assert len(patient_requests) == 2
    assert all(s.authorization == "bearer" and s.status < 400 for s in patient_requests)
