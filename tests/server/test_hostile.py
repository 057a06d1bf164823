"""Hostile servers and hostile scripts (issue 12): each case puts a lying proxy (or another
origin) in front of the real HAPI, or runs a script that misbehaves, and asserts on what the
tool did and on what the server holds afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.contrib.auth.models import Permission
from django.core import checks as django_checks

from django_fhir_migrations.engine.config import Settings
from django_fhir_migrations.engine.errors import ConfigurationError
from django_fhir_migrations.engine.fhir import FhirConnection

from ..support.auth_proxy import Client, KeyPair, proxy_starter
from ..support.helpers import REPO, call
from ..support.hostile import (
    HostileProxy,
    Rule,
    drop_header,
    echo_authorization_401,
    next_link_to,
    next_link_to_itself,
    trickle,
)

TOKEN = "tok-hostile-7d3e9a1c5b0f4e2a8c6d"
PASSWORD = "pw-hostile-Xq8#nV2!"
SEARCH = r"^/Patient\?"
BUNDLE_POST = r"^/?$"
STATE_PUT = r"^/Basic/[^/?]+$"


@pytest.fixture
def hostile(fhir_base_url):
    proxy = HostileProxy(fhir_base_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def via_hostile(fhir_settings, settings, hostile):
    settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=hostile.base_url, RETRIES=0, TIMEOUT=10)
    return settings.FHIR_MIGRATIONS


def seed_patients(fhir, count: int) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": fhir.system, "value": f"p{i}"}]},
         "request": {"method": "POST", "url": "Patient"}} for i in range(count)]}
    reply = fhir.http.post(fhir.base_url, json=bundle, headers={"Content-Type": "application/fhir+json"},
                           timeout=60)
    reply.raise_for_status()


def walk_patients(fhir) -> str:
    """A migration body reading every Patient of the test's namespace, 2 per page."""
    return (f"for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, _count=2):\n"
            f"    ctx.log.info('saw %s', p.id)")


# --- 1. credentials follow next links to another origin ----------------------------------------


@pytest.fixture
def smart_proxy(fhir_base_url):
    yield from proxy_starter(fhir_base_url)


def auth_for(kind: str, smart_proxy, tmp_path) -> dict:
    if kind == "bearer":
        return {"type": "bearer", "token": TOKEN}
    if kind == "basic":
        return {"type": "basic", "username": "migrator", "password": PASSWORD}
    keys = KeyPair.generate("rsa")
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(keys.private_pem)
    proxy = smart_proxy(clients={"hostile-client": Client(keys.public_pem, "k1")})
    return {"type": "smart-backend", "client_id": "hostile-client", "private_key_file": str(key_file),
            "kid": "k1", "token_url": proxy.token_url}


@pytest.mark.parametrize("kind", ["bearer", "basic", "smart-backend"])
def test_credentials_never_reach_another_origin_and_a_foreign_next_link_fails(
        kind, via_hostile, settings, hostile, catcher, fhir, scripts, smart_proxy, tmp_path):
    settings.FHIR_MIGRATIONS = dict(via_hostile, AUTH=auth_for(kind, smart_proxy, tmp_path))
    seed_patients(fhir, 5)
    hostile.add(Rule("GET", SEARCH, after=next_link_to(lambda url: catcher.origin + "/fhir/Patient?page=2")))
    # The script itself talks to the other origin through fhirclient's session: no credentials.
    scripts.add("lured", upgrade=(f"ctx.server.session.get({catcher.origin + '/fhir/metadata'!r})\n"
                                  + walk_patients(fhir)))
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "another origin" in err and catcher.origin in err
    assert fhir.applied() == []
    seen = catcher.requests()
    assert [s.path for s in seen] == ["/fhir/metadata"]  # the script's own request; no next page
    assert all(s.authorization is None for s in seen)
    assert hostile.requests("GET", SEARCH)[0].authorization  # the real server did get them


def test_a_plain_http_token_endpoint_is_refused_unless_everything_is_local(tmp_path):
    keys = KeyPair.generate("rsa")
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(keys.private_pem)
    auth = {"type": "smart-backend", "client_id": "c", "private_key_file": str(key_file),
            "token_url": "http://auth.example.org/token"}
    settings = Settings.build({"BASE_URL": "https://fhir.example.org/fhir", "AUTH": auth}, environ={})
    with pytest.raises(ConfigurationError) as refused:
        FhirConnection(settings)
    assert "https" in str(refused.value) and refused.value.setting == "AUTH['token_url']"
    local = Settings.build({"BASE_URL": "http://127.0.0.1:9/fhir",
                            "AUTH": dict(auth, token_url="http://127.0.0.1:9/token")}, environ={})
    FhirConnection(local).close()


# --- 2. error bodies and tracebacks that carry credentials --------------------------------------


def manage(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env)
    full.update({"DJANGO_SETTINGS_MODULE": "tests.django_settings", "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, "-m", "django", *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def env_for(base_url: str, fhir, scripts, **extra: str) -> dict[str, str]:
    env = {"FHIR_BASE_URL": base_url, "FHIR_MIGRATIONS_STATE_ID": fhir.state_id,
           "MIGRATION_SCRIPTS_DIR": str(scripts.path), "FHIR_MIGRATIONS_RETRIES": "0"}
    env.update(extra)
    return env


@pytest.mark.parametrize("verbosity", ["0", "1", "3"])
def test_a_401_echoing_the_authorization_header_is_printed_scrubbed(
        verbosity, hostile, fhir, scripts, clean_env):
    hostile.add(Rule("GET", r"^/Basic", before=echo_authorization_401))
    scripts.add("one")
    env = env_for(hostile.base_url, fhir, scripts,
                  FHIR_MIGRATIONS_AUTH=json.dumps({"type": "bearer", "token": TOKEN}))
    for args in (["fhirmigrate", "-v", verbosity], ["fhirmigrate", "-v", verbosity, "--traceback"]):
        result = manage(args, env)
        assert result.returncode == 1, result.stderr
        assert "401" in result.stderr
        assert TOKEN not in result.stdout + result.stderr
        assert "Bearer ***" in result.stderr


def test_a_scripts_exception_with_a_token_is_scrubbed_in_the_traceback(fhir, scripts, clean_env):
    scripts.add("leaky", upgrade=f"raise RuntimeError('token was {TOKEN}')")
    env = env_for(fhir.base_url, fhir, scripts,
                  FHIR_MIGRATIONS_AUTH=json.dumps({"type": "bearer", "token": TOKEN}))
    result = manage(["fhirmigrate", "--traceback"], env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_the_admin_page_shows_a_401_body_scrubbed_to_view_only_staff(
        via_hostile, settings, hostile, client, django_user_model):
    settings.FHIR_MIGRATIONS = dict(via_hostile, AUTH={"type": "basic", "username": "migrator",
                                                       "password": PASSWORD})
    hostile.add(Rule("GET", r"^/Basic", before=echo_authorization_401))
    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_fhir_migrations"))
    client.force_login(viewer)
    page = client.get("/admin/django_fhir_migrations/migrationstatus/").content.decode()
    assert "401" in page
    import base64
    encoded = base64.b64encode(f"migrator:{PASSWORD}".encode()).decode()
    assert encoded not in page and PASSWORD not in page


# --- 3. a bundle answered with something that is not its response ------------------------------


def not_a_bundle(exchange):
    exchange.set_response_json({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "all good"}]})


def empty_response(exchange):
    exchange.set_response_json({"resourceType": "Bundle", "type": "batch-response", "entry": []})


def fewer_entries(exchange):
    bundle = exchange.response_json()
    bundle["entry"] = bundle["entry"][:1]
    exchange.set_response_json(bundle)


@pytest.mark.parametrize("lie", [not_a_bundle, empty_response, fewer_entries])
@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_a_bundle_answered_with_anything_but_its_response_fails_the_migration(
        lie, kind, via_hostile, hostile, fhir, scripts):
    hostile.add(Rule("POST", BUNDLE_POST, after=lie))
    body = (f"with ctx.{kind}() as b:\n"
            + "".join(f"    b.create({fhir.patient_code(f'b{i}')})\n" for i in range(3)))
    scripts.add("bundled", upgrade=body)
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "cannot be known" in err and "not recorded" in err
    assert fhir.applied() == []


# --- 4. a server that ignores If-Match -----------------------------------------------------------


def test_a_server_that_ignores_if_match_is_refused_before_anything_runs(via_hostile, hostile, fhir, scripts):
    hostile.add(Rule("PUT", STATE_PUT, before=drop_header("If-Match")))
    scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "If-Match" in err
    assert fhir.patients() == []  # the migration never ran
    assert fhir.applied() == []
    state = fhir.state()
    assert state is not None and not any(e["url"].endswith("migration-lock") for e in state.get("extension", []))


def test_the_version_check_proof_costs_one_request_and_only_when_there_is_work(
        via_hostile, hostile, fhir, scripts):
    scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    probes = [s for s in hostile.requests("PUT", STATE_PUT) if s.status in (409, 412)]
    assert len(probes) == 1
    before = len(hostile.requests())
    assert call("fhirmigrate")[0] == 0  # nothing to do
    assert len(hostile.requests()) - before == 1


# --- 5. unbounded waits ------------------------------------------------------------------------


def test_a_next_link_pointing_at_itself_stops_the_search_with_an_error(via_hostile, hostile, fhir, scripts):
    seed_patients(fhir, 6)
    # The second page answers with itself as the next page (on any server's paging URLs).
    hostile.add(Rule("GET", "", page=True, after=next_link_to_itself))
    scripts.add("walk", upgrade=walk_patients(fhir))
    started = time.monotonic()
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "already given" in err
    assert time.monotonic() - started < 20
    assert len(hostile.requests("GET", page=True)) <= 4
    assert fhir.applied() == []


def test_a_trickling_server_is_given_up_on_at_the_deadline(via_hostile, settings, hostile, fhir, scripts):
    settings.FHIR_MIGRATIONS = dict(via_hostile, TIMEOUT=2)
    hostile.add(Rule("GET", r"^/Basic", after=trickle(0.2)))
    scripts.add("one")
    started = time.monotonic()
    code, out, err = call("fhirmigrate")
    elapsed = time.monotonic() - started
    assert code == 1
    assert "within 2s" in err
    assert elapsed < 6, elapsed


def test_check_deploy_is_bounded_against_a_trickling_server(via_hostile, hostile, fhir, scripts):
    hostile.add(Rule("GET", r"^/Basic", after=trickle(0.5)))
    scripts.add("one")
    started = time.monotonic()
    messages = django_checks.run_checks(include_deployment_checks=True, tags=["fhir_migrations"])
    assert time.monotonic() - started < 14  # DEPLOY_TIMEOUT is 10 s
    assert any(m.id == "fhir_migrations.W003" for m in messages)


@pytest.mark.parametrize("body", ["import time\ntime.sleep(60)",
                                  "while True:\n    ctx.count('Patient')"])
def test_max_run_time_stops_a_migration_and_it_is_not_recorded(body, fhir_settings, settings, fhir, scripts):
    settings.FHIR_MIGRATIONS = dict(fhir_settings, MAX_RUN_TIME=2, LOCK_TTL=6)
    scripts.add("forever", upgrade=body)
    started = time.monotonic()
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "MAX_RUN_TIME" in err
    assert time.monotonic() - started < 15
    assert fhir.applied() == []
    assert not any(e["url"].endswith("migration-lock") for e in fhir.state().get("extension", []))


# --- 6. sys.exit and other BaseExceptions from a script ----------------------------------------


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)", "raise SystemExit()",
                                  "raise GeneratorExit('odd')"])
def test_sys_exit_in_a_script_is_a_failure(body, fhir_settings, fhir, scripts):
    scripts.add("quitter", upgrade=body)
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "quitter" in err and "failed" in err
    assert fhir.applied() == []
    events = fhir.kept_audit_events()
    assert events is None or events[0]["outcome"] == "8"


def test_sys_exit_in_a_script_does_not_escape_the_admin_action(background_settings, fhir, scripts, admin_client,
                                                                launches):
    from .test_admin import launch_phase, poll

    scripts.add("quitter", upgrade="import sys\nsys.exit(0)")
    reply = admin_client.post("/admin/django_fhir_migrations/migrationstatus/migrate/",
                              {"confirm": "yes"}, follow=True)
    assert reply.status_code == 200  # the page came back: the background run did not take it down
    html = poll(admin_client, lambda h: launch_phase(h) == "failed", "the run failed")
    assert "quitter" in html and "SystemExit" in html
    assert fhir.applied() == []


# --- 7. dry runs and writes through fhirclient -------------------------------------------------


def test_dry_run_intercepts_writes_made_through_fhirclient_models(fhir_settings, fhir, scripts):
    scripts.add("via_models", upgrade=(
        "from fhirclient.models.patient import Patient\n"
        f"Patient({fhir.patient_code('model')}).create(ctx.server)\n"
        f"ctx.server.session.delete(ctx.server.base_uri + 'Patient/does-not-matter')"))
    code, out, err = call("fhirmigrate", "--dry-run")
    assert code == 0, err
    assert "[dry-run] POST Patient: 1" in out and "[dry-run] DELETE Patient: 1 (Patient/does-not-matter)" in out
    assert fhir.patients() == []
    assert fhir.state() is None


# --- 8. ids from scripts are validated ---------------------------------------------------------


def test_a_path_traversing_id_is_refused_and_nothing_else_is_touched(fhir_settings, fhir, scripts):
    reply = fhir.http.post(fhir.url("Basic"), json={"resourceType": "Basic", "code": {"text": "victim"}},
                           headers={"Content-Type": "application/fhir+json"}, timeout=30)
    victim = reply.json()["id"]
    scripts.add("traverse", upgrade=f"ctx.delete('Patient', '../Basic/{victim}')")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "is not a valid id for Patient" in err
    assert fhir.http.get(fhir.url(f"Basic/{victim}"), timeout=30).status_code == 200
    fhir.http.delete(fhir.url(f"Basic/{victim}"), timeout=30)


# --- the low ones ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_sighup_and_ctrl_c_release_the_lease_and_audit_the_failure(signum, fhir, scripts, clean_env, tmp_path):
    marker = tmp_path / "started"
    scripts.add("slow", upgrade=f"open({str(marker)!r}, 'w').close()\nimport time\ntime.sleep(60)")
    env = dict(os.environ, **env_for(fhir.base_url, fhir, scripts, FHIR_MIGRATIONS_LOCK_TTL="60"),
               DJANGO_SETTINGS_MODULE="tests.django_settings", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "django", "fhirmigrate"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    said = "SIGINT" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert f"Interrupted ({said}); the lock was released" in err  # never "Interrupted ()"
    state = fhir.state()
    assert not any(e["url"].endswith("migration-lock") for e in state.get("extension", []))
    assert fhir.applied() == []
    cause = "KeyboardInterrupt" if signum == signal.SIGINT else signal.Signals(signum).name
    events = fhir.kept_audit_events()
    if events is not None:
        failed = events[0]
        assert failed["outcome"] == "8" and cause in failed["outcomeDesc"]
    else:  # Helios keeps no AuditEvents: the failure is in the log, and the AuditEvent was tried
        assert "Migration failed: slow" in err and cause in err
        assert "refuses AuditEvents from clients" in err


def put_state(fhir, extensions: list) -> str:
    body = {"resourceType": "Basic",
            "identifier": [{"system": "http://fhir.migration.system", "value": fhir.state_id}],
            "code": {"coding": [{"system": "http://our.migration.system", "code": "None"}]},
            "extension": extensions}
    reply = fhir.http.post(fhir.url("Basic"), json=body, headers={"Content-Type": "application/fhir+json"},
                           timeout=30)
    reply.raise_for_status()
    return reply.json()["meta"]["versionId"]


def lock_extension(**overrides) -> dict:
    parts = {"token": "t1", "host": "web-1", "pid": 42, "user": "deploy", "command": "fhirmigrate",
             "startedAt": "2026-12-01T10:00:00Z", "renewedAt": "2026-12-01T10:00:00Z", "ttlSeconds": 3600}
    parts.update(overrides)
    kinds = {"pid": "valueInteger", "startedAt": "valueDateTime", "renewedAt": "valueDateTime",
             "ttlSeconds": "valueInteger" if isinstance(parts["ttlSeconds"], int) else "valueString"}
    return {"url": "http://fhir.migration.system/StructureDefinition/migration-lock",
            "extension": [{"url": k, kinds.get(k, "valueString"): v} for k, v in parts.items()]}


def test_a_lease_whose_ttl_is_not_a_number_is_a_corrupt_state_left_untouched(fhir_settings, fhir, scripts):
    version = put_state(fhir, [lock_extension(ttlSeconds="nan")])
    scripts.add("one")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "cannot be read" in err and "ttlSeconds" in err
    assert fhir.state()["meta"]["versionId"] == version


def test_control_characters_in_the_lock_holder_are_not_printed(fhir_settings, fhir, scripts):
    put_state(fhir, [lock_extension(host="web-1\x1b[2J\x1b[31mEVIL\x1b]0;title\x07")])
    scripts.add("one")
    code, out, err = call("fhirshowmigrations")
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "web-1" in out and "EVIL" in out


def test_a_wrongly_typed_duration_is_a_clear_error_in_the_cli_and_a_banner_on_the_admin_page(
        fhir_settings, fhir, scripts, admin_client):
    revision = scripts.add("one")
    put_state(fhir, [{"url": "http://fhir.migration.system/StructureDefinition/applied-migration",
                      "extension": [{"url": "revision", "valueString": revision},
                                    {"url": "durationMs", "valueString": "fast"}]}])
    code, out, err = call("fhirshowmigrations")
    assert code == 1 and "durationMs" in out + err and "Traceback" not in out + err
    env = {"FHIR_BASE_URL": fhir.base_url, "MIGRATION_SCRIPTS_DIR": str(scripts.path),
           "FHIR_MIGRATIONS_STATE_ID": fhir.state_id}
    cli = subprocess.run([sys.executable, "-m", "django_fhir_migrations", "showmigrations"],
                         env=dict(os.environ, **env, PYTHONPATH=str(REPO)), capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1 and "durationMs" in cli.stdout + cli.stderr
    assert "Traceback" not in cli.stderr
    page = admin_client.get("/admin/django_fhir_migrations/migrationstatus/")
    assert page.status_code == 200 and "durationMs" in page.content.decode()


def test_a_message_cannot_inject_code_into_a_generated_script(fhir_settings, scripts, tmp_path):
    marker = tmp_path / "pwned"
    message = f'x"""\nimport os\nopen({str(marker)!r}, "w")\n"""'
    code, out, err = call("fhirmakemigration", "evil", "--no-check", "-m", message)
    assert code == 0, err
    path = scripts.path / "0001_evil.py"
    from django_fhir_migrations.engine.script import load_script
    script = load_script(path)
    assert not marker.exists()
    assert script.doc.startswith("x")


def test_a_base_url_with_a_query_string_is_refused():
    with pytest.raises(ConfigurationError) as refused:
        Settings.build({"BASE_URL": "https://fhir.example.org/fhir?_format=json"}, environ={})
    assert "query string" in str(refused.value)


def test_a_symlinked_script_is_named_after_the_link(scripts, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target_name.py"
    target.write_text('revision = "abc123"\ndown_revision = None\ndef upgrade(ctx): pass\n'
                      'def downgrade(ctx): pass\n')
    (scripts.path / "0001_link_name.py").symlink_to(target)
    from django_fhir_migrations.engine.config import ScriptLocation
    from django_fhir_migrations.engine.loader import MigrationLoader
    [script] = MigrationLoader([ScriptLocation(scripts.path, "dir")]).scripts
    assert script.name == "0001_link_name"


def test_makemigration_refuses_an_installed_apps_folder(fhir_settings):
    import django.contrib.auth
    code, out, err = call("fhirmakemigration", "x", "--app", "auth", "--no-check")
    assert code == 1
    assert "auth" in err and "installed" in err
    assert not (os.path.exists(os.path.join(os.path.dirname(django.contrib.auth.__file__),
                                            "fhir_migrations", "x.py")))


def test_requests_cannot_be_sent_past_the_byte_cap(fhir_settings, settings, fhir):
    from django_fhir_migrations.conf import get_settings
    from django_fhir_migrations.engine.errors import FhirServerError

    settings.FHIR_MIGRATIONS = dict(fhir_settings, MAX_RESPONSE_MB=1)
    connection = FhirConnection(get_settings())
    try:
        big = "x" * (1024 * 1024)
        created = fhir.http.post(fhir.url("Basic"), json={"resourceType": "Basic", "code": {"text": big}},
                                 headers={"Content-Type": "application/fhir+json"}, timeout=60).json()
        with pytest.raises(FhirServerError) as refused:
            connection.get(f"Basic/{created['id']}")
        assert "larger than 1 MB" in str(refused.value)
        fhir.http.delete(fhir.url(f"Basic/{created['id']}"), timeout=30)
    finally:
        connection.close()
