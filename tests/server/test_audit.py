"""The audit trail against the real server: one AuditEvent per action, each passing HAPI's
`$validate`, none when AUDIT_EVENTS is off, a refused audit write that changes nothing about
the command's outcome, and the `django_fhir_migrations` logger's levels."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests

from django_fhir_migrations import __version__
from django_fhir_migrations.conf import get_settings
from django_fhir_migrations.engine import Project
from django_fhir_migrations.engine.audit import EVENT_SYSTEM, recent_events
from django_fhir_migrations.engine.lock import MigrationLock
from django_fhir_migrations.engine.recorder import StateRecorder

from ..support.helpers import REPO, call, run
from ..support.hostile import HostileProxy

LOGGER = "django_fhir_migrations"


@pytest.fixture
def auditor(fhir_settings, clean_env, fhir, keeps_audit_events):
    """The user name every event of this test must carry (FHIR_MIGRATIONS_USER); the test is
    about what the AuditEvents say, so it needs a server that keeps them."""
    name = f"auditor-{fhir.state_id[-6:]}"
    clean_env.setenv("FHIR_MIGRATIONS_USER", name)
    return name


def create_patient(fhir, value: str) -> str:
    return f"ctx.create({fhir.patient_code(value)})"


def our_events(fhir) -> list[dict]:
    """This state's AuditEvents, newest first, found the way the admin page finds them."""
    state = fhir.state()
    assert state, "the state resource should exist"
    return fhir.search("AuditEvent", entity=f"Basic/{state['id']}", _sort="-date")


def codes(events: list[dict]) -> list[str]:
    return [e["subtype"][0]["code"] for e in events]


def assert_valid(fhir, resource: dict) -> None:
    """HAPI's own validator: no `error` or `fatal` issue for the resource as stored."""
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    reply = fhir.http.post(fhir.url("AuditEvent/$validate"), json=body, timeout=60,
                           headers={"Content-Type": "application/fhir+json",
                                    "Accept": "application/fhir+json"})
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    bad = [i for i in outcome.get("issue", []) if i["severity"] in ("error", "fatal")]
    assert not bad, bad


def assert_event(fhir, event: dict, code: str, *, user: str, action: str, success: bool = True,
                 script: tuple[str, str] | None = None) -> None:
    """Everything the issue lists: type, subtype, action, recorded, outcome, agent, source,
    entity (the state resource, naming revision and script), and it passes $validate."""
    state = fhir.state()
    assert event["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0] == {"system": EVENT_SYSTEM, "code": code,
                                   "display": event["subtype"][0]["display"]}
    assert event["action"] == action
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - recorded) < timedelta(minutes=5)
    assert event["outcome"] == ("0" if success else "8")
    requestor = next(a for a in event["agent"] if a["requestor"])
    assert requestor["who"]["display"] == user
    assert requestor["network"]["address"] == socket.gethostname()
    assert f"pid {os.getpid()}" in requestor["name"]
    application = next(a for a in event["agent"] if not a["requestor"])
    assert "manage.py fhir" in application["who"]["display"]
    assert f"pid {os.getpid()}" in application["who"]["display"]
    assert __version__ in event["source"]["observer"]["display"]
    assert event["source"]["site"] == socket.gethostname()
    entity = event["entity"][0]
    assert entity["what"]["reference"] == f"Basic/{state['id']}"
    assert fhir.state_id in entity["name"]
    details = {d["type"]: d["valueString"] for d in entity.get("detail", [])}
    if script is not None:
        revision, name = script
        assert details["revision"] == revision
        assert details["script"] == f"dir/{name}.py"
        assert len(details["checksum"]) >= 16
    assert_valid(fhir, event)


def test_applied_and_reverted_events_name_the_state_revision_and_script(auditor, fhir, scripts):
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    two = scripts.add("two")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirdowngrade")[0] == 0
    events = our_events(fhir)
    assert codes(events) == ["reverted", "applied", "applied"]
    reverted, applied_two, applied_one = events
    assert_event(fhir, applied_one, "applied", user=auditor, action="E", script=(one, "one"))
    assert_event(fhir, applied_two, "applied", user=auditor, action="E", script=(two, "two"))
    assert_event(fhir, reverted, "reverted", user=auditor, action="E", script=(two, "two"))
    # The duration is kept as the event's period.
    start = datetime.fromisoformat(applied_one["period"]["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(applied_one["period"]["end"].replace("Z", "+00:00"))
    assert timedelta(0) <= end - start < timedelta(minutes=1)


def test_faked_and_unfaked_events_say_nothing_ran(auditor, fhir, scripts):
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    assert call("fhirmigrate", "--fake")[0] == 0
    assert call("fhirdowngrade", "--fake")[0] == 0
    assert fhir.patients() == []
    unfaked, faked = our_events(fhir)
    assert_event(fhir, faked, "faked", user=auditor, action="U", script=(one, "one"))
    assert_event(fhir, unfaked, "unfaked", user=auditor, action="U", script=(one, "one"))
    assert "without running" in faked["subtype"][0]["display"]


def test_failed_event_is_a_serious_failure_with_the_error_text(auditor, fhir, scripts):
    bad = scripts.add("bad", upgrade="raise ValueError('row 12 has no birthDate')")
    code, _, err = call("fhirmigrate")
    assert code == 1 and "row 12 has no birthDate" in err
    [failed] = our_events(fhir)
    assert_event(fhir, failed, "failed", user=auditor, action="E", success=False, script=(bad, "bad"))
    assert failed["outcomeDesc"] == "ValueError: row 12 has no birthDate"
    assert "row 12 has no birthDate" in failed["text"]["div"]


def test_reset_event(auditor, fhir, scripts):
    scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    assert call("fhirreset", "--noinput")[0] == 0
    reset, _ = our_events(fhir)
    assert_event(fhir, reset, "reset", user=auditor, action="U")
    assert {"type": "detail", "valueString": "head set to None"} in reset["entity"][0]["detail"]


def test_lock_broken_event_names_the_holder(auditor, fhir, scripts):
    scripts.add("one")
    project = Project(get_settings())
    recorder = StateRecorder(project.connection, fhir.state_id)
    dead = MigrationLock(recorder, ttl=300, command="crashed deploy", user="mallory")
    dead.acquire(recorder.read(), timeout=5)
    dead._stop.set()  # it stops renewing, as a dead process would
    try:
        code, _, err = call("fhirmigrate", "--break-lock", "--noinput")
        assert code == 0, err
    finally:
        project.close()
    broken, applied = our_events(fhir)[::-1]  # broken, then migrated in the same run
    assert applied["subtype"][0]["code"] == "applied"
    assert_event(fhir, broken, "lock-broken", user=auditor, action="U")
    detail = {d["type"]: d["valueString"] for d in broken["entity"][0]["detail"]}["detail"]
    assert "mallory@" in detail and "crashed deploy" in detail


def test_recent_events_reads_them_back_newest_first(auditor, fhir, scripts):
    one = scripts.add("one")
    scripts.add("two", upgrade="raise RuntimeError('nope')")
    assert call("fhirmigrate")[0] == 1
    project = Project(get_settings())
    try:
        state = StateRecorder(project.connection, fhir.state_id).read()
        records = recent_events(project.connection, state, 20)
        assert [r.event for r in records] == ["failed", "applied"]
        failed, applied = records
        assert not failed.success and failed.error == "RuntimeError: nope"
        assert applied.success and applied.revision == one and applied.script == "dir/one.py"
        assert auditor in applied.who and applied.recorded is not None
        assert [r.event for r in recent_events(project.connection, state, 1)] == ["failed"]
    finally:
        project.close()


def test_audit_events_switched_off_writes_none(fhir_settings, fhir, scripts):
    proxy = HostileProxy(fhir.base_url).start()  # counts what is sent, on any server
    fhir_settings["BASE_URL"] = proxy.base_url
    fhir_settings["AUDIT_EVENTS"] = False
    try:
        scripts.add("one", upgrade=create_patient(fhir, "one"))
        scripts.add("two", upgrade="raise ValueError('broken')")
        assert call("fhirmigrate")[0] == 1
        assert call("fhirdowngrade")[0] == 0
        assert call("fhirmigrate", "--fake")[0] == 0
        assert call("fhirreset", "--noinput")[0] == 0
    finally:
        proxy.stop()
    assert fhir.state() is not None  # things happened...
    assert proxy.requests("POST", r"^/AuditEvent") == []  # ...and no AuditEvent was even sent
    assert proxy.requests("PUT", r"^/Basic/")  # (the proxy did see the run)


def test_secrets_never_reach_the_audit_event_or_the_log(fhir_settings, fhir, scripts, caplog,
                                                        keeps_audit_events):
    token = "s3cr3t-T0KEN-value-4242"
    fhir_settings["AUTH"] = {"type": "bearer", "token": token}
    scripts.add("leaky", upgrade=f"raise RuntimeError('the server said: {token} is bad; password=hunter22')")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert call("fhirmigrate")[0] == 1
    [failed] = our_events(fhir)
    assert token not in str(failed) and "hunter22" not in str(failed)
    assert "***" in failed["outcomeDesc"]
    assert token not in caplog.text and "hunter22" not in caplog.text


# --- an audit write the server refuses -------------------------------------------------------


REFUSAL = (b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", '
           b'"code": "forbidden", "diagnostics": "AuditEvent writes are not allowed"}]}')


class RefuseAuditEvents(BaseHTTPRequestHandler):
    """Forwards everything to the real server, except that it answers POST AuditEvent with 403,
    and a transaction with an AuditEvent in it too (a server that refuses an entry of a
    transaction refuses all of it)."""

    upstream: str = ""
    refused: list[str]
    refused_bundles: list[str]

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = urlsplit(self.path).path.rstrip("/")
        if self.command == "POST" and path.endswith("/AuditEvent"):
            self.server.refused.append(self.path)  # type: ignore[attr-defined]
            self._send(403, REFUSAL, {"Content-Type": "application/fhir+json"})
            return
        if self.command == "POST" and body and b'"AuditEvent"' in body and b'"Bundle"' in body:
            self.server.refused_bundles.append(self.path)  # type: ignore[attr-defined]
            self._send(403, REFUSAL, {"Content-Type": "application/fhir+json"})
            return
        skip = {"host", "content-length", "connection", "accept-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        reply = requests.request(self.command, self.server.upstream + self.path,  # type: ignore[attr-defined]
                                 data=body, headers=headers, timeout=60)
        drop = {"content-length", "content-encoding", "transfer-encoding", "connection"}
        self._send(reply.status_code, reply.content,
                   {k: v for k, v in reply.headers.items() if k.lower() not in drop})

    def _send(self, status: int, content: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = _forward

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def refusing_server(fhir_settings, fhir):
    parts = urlsplit(fhir.base_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefuseAuditEvents)
    server.upstream = f"{parts.scheme}://{parts.netloc}"  # type: ignore[attr-defined]
    server.refused = []  # type: ignore[attr-defined]
    server.refused_bundles = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fhir_settings["BASE_URL"] = f"http://127.0.0.1:{server.server_port}{parts.path}"
    yield server
    server.shutdown()
    server.server_close()


def test_refused_audit_write_does_not_change_a_successful_outcome(refusing_server, fhir, scripts,
                                                                  caplog):
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert fhir.applied() == [one] and len(fhir.patients()) == 1
    # The record with its AuditEvent was refused as a whole; the record was then written alone
    # and the AuditEvent attempted on its own.
    assert len(refusing_server.refused_bundles) == 1
    assert refusing_server.refused, "the audit write should have been attempted"
    assert our_events(fhir) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Could not write the AuditEvent for applied" in r.getMessage()
               and "AuditEvent writes are not allowed" in r.getMessage() for r in warnings)


def test_refused_audit_write_does_not_mask_a_failed_migration(refusing_server, fhir, scripts):
    scripts.add("one")
    scripts.add("two", upgrade="raise ValueError('bad data in two')")
    code, out, err = call("fhirmigrate")
    assert code == 1
    assert "ValueError: bad data in two" in err
    assert "AuditEvent" not in err
    assert len(fhir.applied()) == 1
    assert len(refusing_server.refused) == 2  # applied one, failed two: both attempted
    assert len(refusing_server.refused_bundles) == 1  # and tried with one's record only once


# --- a server that keeps no AuditEvents (Helios) ---------------------------------------------


def test_a_server_that_refuses_audit_events_is_asked_once_and_the_run_goes_on(no_audit_server, fhir,
                                                                              scripts, caplog):
    revisions = [scripts.add(n, upgrade=create_patient(fhir, n)) for n in ("one", "two", "three")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert fhir.applied() == revisions and len(fhir.patients()) == 3
    # The first record's transaction carries its AuditEvent and is refused (405); the record is
    # then written alone, and no AuditEvent is sent again this run: one refusal, not one per migration.
    assert [s.status for s in no_audit_server.requests("POST") if s.status == 405] == [405]
    assert no_audit_server.requests("POST", r"^/AuditEvent") == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "refuses AuditEvents from clients" in warning and "405" in warning


def test_history_on_a_server_that_refuses_audit_events_shows_what_the_state_records(
        no_audit_server, fhir, scripts, clean_env):
    clean_env.setenv("FHIR_MIGRATIONS_USER", "deployer")
    one = scripts.add("one", upgrade=create_patient(fhir, "one"))
    two = scripts.add("two", upgrade=create_patient(fhir, "two") + "\nraise RuntimeError('row 7')")
    assert call("fhirmigrate")[0] == 1
    code, out, err = call("fhirhistory")
    assert code == 0, err
    assert "(nothing recorded yet)" not in out
    assert "keeps no AuditEvents from clients" in out and "no create for AuditEvent" in out
    assert "What the state itself records" in out
    applied = next(line for line in out.splitlines() if one[:12] in line)
    assert "applied" in applied and "by deployer@" in applied and applied.rstrip().endswith("ok")
    assert re.search(r"\d\.\d\ds", applied)  # how long it took
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if two[:12] in line)
    assert "interrupted" in lines[at] and lines[at].rstrip().endswith("unfinished")
    assert "1 attempt(s), 1 resource(s) written" in lines[at + 1] and "resumes it" in lines[at + 1]
    assert "RuntimeError: row 7" in lines[at + 2]
    assert at < lines.index(applied)  # newest first
    # Fixed and resumed: applied, in the two attempts that wrote something.
    fixed = create_patient(fhir, "two-b")
    scripts.write("two", (scripts.path / "two.py").read_text().replace("raise RuntimeError('row 7')", fixed))
    assert call("fhirmigrate")[0] == 0
    out = call("fhirhistory")[1]
    newest = next(line for line in out.splitlines() if line.startswith("  2"))
    assert two[:12] in newest and "applied" in newest
    assert "in 2 attempts" in out and not any(line.endswith("unfinished") for line in out.splitlines())


def test_history_says_nothing_happened_yet_and_why_there_are_no_audit_events(no_audit_server, fhir,
                                                                            scripts):
    scripts.add("one")
    out = call("fhirhistory")[1]
    assert "(nothing recorded yet)" in out
    assert call("fhirmigrate", "--plan")[0] == 0
    assert "keeps no AuditEvents" not in out  # no state yet: nothing to explain


# --- log levels ------------------------------------------------------------------------------


def test_each_migration_is_logged_at_info_with_its_duration(fhir_settings, fhir, scripts, caplog):
    one = scripts.add("one")
    two = scripts.add("two")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert call("fhirmigrate")[0] == 0
    infos = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    applied = [m for m in infos if m.startswith("Migration applied")]
    assert len(applied) == 2
    assert one in applied[0] and two in applied[1]
    assert all(" in " in m and m.split(" in ")[1].split("s ")[0].replace(".", "").isdigit()
               for m in applied)


def test_failure_is_logged_at_error(fhir_settings, fhir, scripts, caplog):
    bad = scripts.add("bad", upgrade="raise KeyError('subject')")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert call("fhirmigrate")[0] == 1
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert bad in errors[0].getMessage() and "KeyError" in errors[0].getMessage()


def test_checksum_drift_is_logged_at_warning(fhir_settings, fhir, scripts, caplog):
    one = scripts.add("one")
    assert call("fhirmigrate")[0] == 0
    scripts.add("one", revision=one, down=None, upgrade="x = 1")  # edited after it ran
    scripts.revisions.pop()
    scripts.add("two")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        code, _, err = call("fhirmigrate")
    assert code == 1 and "edited" in err
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert call("fhirmigrate", "--ignore-checksums")[0] == 0
    drift = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
             and one in r.getMessage() and "edited" in r.getMessage()]
    assert len(drift) == 2  # once when it stopped the run, once when it was let through


def test_the_documented_logging_config_works(tmp_path):
    """docs/logging.md's LOGGING dict, loaded by dictConfig in a fresh process, shows our records."""
    doc = (REPO / "docs" / "logging.md").read_text()
    block = re.search(r"```python\n(LOGGING = \{.*?\n\})\n```", doc, re.S).group(1)
    program = block + """
import logging, logging.config
from django_fhir_migrations.engine.audit import Actor, AuditTrail
logging.config.dictConfig(LOGGING)
AuditTrail(None, Actor.current("deploy", "manage.py fhirmigrate", "shop")).record(
    "applied", detail="add_mrn", duration=1.5)
logging.getLogger("django_fhir_migrations.scripts").info("patched 12 patients")
logging.getLogger("django_fhir_migrations").debug("not shown at INFO")
"""
    result = run([sys.executable, "-c", program], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "fhir-migrations.log").read_text()
    for output in (result.stderr, written):
        assert "INFO django_fhir_migrations: Migration applied: add_mrn in 1.50s by deploy@" in output
        assert "INFO django_fhir_migrations.scripts: patched 12 patients" in output
        assert "not shown" not in output
