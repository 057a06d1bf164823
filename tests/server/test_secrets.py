"""No credential ever leaves the process except in the Authorization header.

Each case runs real commands (migrate, showmigrations, downgrade, a failing migration, wrong
credentials) through the authenticating proxy with one auth type at one verbosity, captures
everything a secret could end up in (stdout, stderr, every log record at DEBUG including
urllib3/requests/fhirclient, and the AuditEvents and state resource written to the server),
and searches all of it for the token, the password, the private key text, the access tokens the
proxy issued and the client assertions it received.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from ..support.auth_proxy import Client, KeyPair, proxy_starter
from ..support.helpers import call

TOKEN = "tok-8c1f0e5a7b3d4e2f9a6c1b0d7e3f5a2c"
WRONG_TOKEN = "tok-wrong-5d2c9e1a0b7f4c3e8d6a2b1f"
USER, PASSWORD, WRONG_PASSWORD = "migrator", "pw-Zq7!xR2#mK9@vL4", "pw-wrong-Hj3$uT8"
CLIENT_ID = "secrets-test-client"
LOGGERS = ("django_fhir_migrations", "urllib3", "requests", "fhirclient", "django")


@pytest.fixture
def start_proxy(fhir_base_url):
    yield from proxy_starter(fhir_base_url)


@pytest.fixture(scope="module")
def keys() -> tuple[KeyPair, KeyPair]:
    """The registered client key and a second key the server does not know."""
    return KeyPair.generate("rsa"), KeyPair.generate("rsa")


def add_patient(scripts, fhir, name: str) -> str:
    return scripts.add(
        name, upgrade=f"ctx.create({fhir.patient_code(name)})",
        downgrade=(f"for p in ctx.search('Patient', identifier={fhir.system + '|' + name!r}):\n"
                   f"    ctx.delete(p)"),
    )


def setup_auth(kind: str, start_proxy, tmp_path, keys) -> tuple:
    """(proxy, good AUTH, wrong AUTH, secrets known before any request)."""
    registered, unknown = keys
    if kind == "bearer":
        proxy = start_proxy(bearer_token=TOKEN)
        return (proxy, {"type": "bearer", "token": TOKEN},
                {"type": "bearer", "token": WRONG_TOKEN}, [TOKEN, WRONG_TOKEN])
    if kind == "basic":
        proxy = start_proxy(basic=(USER, PASSWORD))
        encoded = [base64.b64encode(f"{USER}:{p}".encode()).decode() for p in (PASSWORD, WRONG_PASSWORD)]
        return (proxy, {"type": "basic", "username": USER, "password": PASSWORD},
                {"type": "basic", "username": USER, "password": WRONG_PASSWORD},
                [PASSWORD, WRONG_PASSWORD, *encoded])
    proxy = start_proxy(clients={CLIENT_ID: Client(registered.public_pem)})
    good, bad = tmp_path / "client.pem", tmp_path / "unregistered.pem"
    good.write_bytes(registered.private_pem)
    bad.write_bytes(unknown.private_pem)
    return (proxy, {"type": "smart-backend", "client_id": CLIENT_ID, "private_key_file": str(good)},
            {"type": "smart-backend", "client_id": CLIENT_ID, "private_key_file": str(bad)},
            [*registered.secret_fragments(), *unknown.secret_fragments()])


@pytest.mark.parametrize("verbosity", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["bearer", "basic", "smart-backend"])
def test_no_secret_in_output_logs_or_audit_events(kind, verbosity, fhir_settings, fhir, scripts,
                                                  start_proxy, tmp_path, keys, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    proxy, auth, wrong_auth, secrets = setup_auth(kind, start_proxy, tmp_path, keys)
    fhir_settings["BASE_URL"] = proxy.base_url
    fhir_settings["AUTH"] = auth
    first = scripts.add(
        "one", upgrade=(
            # What a script author might log while debugging: must show no secret either.
            "ctx.log.info('settings %r auth %r', ctx.settings, ctx.connection.session.auth)\n"
            f"ctx.create({fhir.patient_code('one')})"),
        downgrade=f"for p in ctx.search('Patient', identifier={fhir.system + '|one'!r}):\n    ctx.delete(p)",
    )
    second = add_patient(scripts, fhir, "two")

    runs = [
        ("migrate", call("fhirmigrate", verbosity=verbosity), 0),
        ("showmigrations", call("fhirshowmigrations", verbosity=verbosity), 0),
        ("downgrade", call("fhirdowngrade", "--noinput", verbosity=verbosity), 0),
    ]
    # "two" is reverted now; make its upgrade fail on the server and apply it again.
    scripts.add("two", revision=second, down=first,
                upgrade="ctx.read('Patient', 'no-such-patient-for-secrets')")
    runs.append(("failing migration", call("fhirmigrate", verbosity=verbosity), None))
    fhir_settings["AUTH"] = wrong_auth
    runs.append(("wrong credentials", call("fhirmigrate", verbosity=verbosity), None))
    runs.append(("wrong credentials, status", call("fhirshowmigrations", verbosity=verbosity), None))

    for what, (code, _out, err), expected in runs:
        if expected is not None:
            assert code == expected, f"{what}: {err}"
    assert runs[-2][1][0] != 0  # refused credentials are an error
    assert fhir.applied() == [first]

    # The capture is live: DEBUG records of the HTTP stack are there, the secrets were in use,
    # and the server holds the AuditEvents the runs wrote (where it keeps them: not Helios).
    assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in caplog.records)
    assert any(s.status < 400 and s.authorization for s in proxy.fhir_requests())
    refused = [r for r in proxy.token_requests if r.error] if kind == "smart-backend" else proxy.rejected
    assert refused  # the wrong credentials reached the server and were refused
    events = fhir.kept_audit_events()
    if events is not None:
        codes = {e["subtype"][0]["code"] for e in events}
        assert {"applied", "reverted", "failed"} <= codes, codes
    if kind == "smart-backend":
        assert proxy.issued_tokens and len(proxy.token_requests) > len(proxy.issued_tokens)
        secrets += proxy.issued_tokens
        secrets += [r.form["client_assertion"] for r in proxy.token_requests]

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    captured = capsys.readouterr()
    haystack = {
        **{f"{what} stdout": out for what, (_, out, _), _ in runs},
        **{f"{what} stderr": err for what, (_, _, err), _ in runs},
        "process stdout": captured.out,
        "process stderr": captured.err,
        "log records": "\n".join(formatter.format(r) for r in caplog.records),
        "log record args": "\n".join(repr(r.args) for r in caplog.records),
        "AuditEvents": json.dumps(events),
        "state resource": json.dumps(fhir.state()),
    }
    assert secrets and all(len(s) >= 8 for s in secrets)
    leaks = [(where, secret[:6] + "...") for where, text in haystack.items()
             for secret in secrets if secret in text]
    assert leaks == []
    assert "PRIVATE KEY" not in "".join(haystack.values())


@pytest.mark.parametrize("kind", ["bearer", "smart-backend"])
def test_audit_event_error_text_is_scrubbed_of_live_credentials(kind, fhir_settings, fhir, scripts,
                                                                start_proxy, tmp_path, keys, caplog):
    """A script whose error quotes the credential in use (no 'Bearer' or 'token=' to spot it
    by): the AuditEvent, the audit log line and the command's error carry '***' instead. For SMART the credential
    is an access token issued during the run, known only to the auth object."""
    proxy, auth, _, _ = setup_auth(kind, start_proxy, tmp_path, keys)
    fhir_settings["BASE_URL"] = proxy.base_url
    fhir_settings["AUTH"] = auth
    scripts.add("leaky", upgrade=(
        "auth = ctx.connection.session.auth\n"
        "value = auth.access_token() if hasattr(auth, 'access_token') else auth.secrets()[0]\n"
        "raise RuntimeError('upstream rejected session ' + value + ' while exporting')"))
    code, out, err = call("fhirmigrate")
    assert code == 1
    secret = proxy.issued_tokens[-1] if kind == "smart-backend" else TOKEN
    if fhir.keeps_audit_events:  # Helios keeps none: the log line and the error are the record
        [failed] = [e for e in fhir.audit_events() if e["subtype"][0]["code"] == "failed"]
        assert "upstream rejected session *** while exporting" in failed["outcomeDesc"]
        assert secret not in json.dumps(failed)
    audit_lines = [r.getMessage() for r in caplog.records if r.filename == "audit.py"]
    assert audit_lines and not any(secret in line for line in audit_lines)
    # The command's own error message (stderr) is scrubbed the same way.
    assert "upstream rejected session *** while exporting" in err
    assert secret not in err and secret not in out
