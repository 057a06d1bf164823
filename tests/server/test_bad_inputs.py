"""The bad-input corpus: every broken input exits non-zero with one clear message naming the
culprit, and nothing is written to the server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ..support.helpers import call

CORPUS = Path(__file__).parent.parent / "bad_inputs"
CORPUS_SYSTEM = "urn:django-fhir-migrations:bad-input"

# folder -> what the message must name
SCRIPT_CASES = {
    "syntax_error": ["syntax_error/0002_broken.py", "syntax error on line 5"],
    "missing_revision": ["missing_revision/0002_broken.py", "`revision`"],
    "missing_down_revision": ["missing_down_revision/0002_broken.py", "`down_revision`"],
    "missing_upgrade": ["missing_upgrade/0002_broken.py", "`upgrade`"],
    "missing_downgrade": ["missing_downgrade/0002_broken.py", "`downgrade`"],
    "noncallable_upgrade": ["noncallable_upgrade/0002_broken.py", "must be a function"],
    "nonstring_revision": ["nonstring_revision/0002_broken.py", "20261126"],
    "empty_revision": ["empty_revision/0002_broken.py", "non-empty string"],
    "import_time_exception": ["import_time_exception/0002_broken.py", "KeyError"],
    "dangling_parent": ["dangling_parent/0002_broken.py", "gone000000000000000000000000000x"],
    "two_heads": ["0002_left.py", "0002_right.py", "--merge"],
    "two_roots": ["0001_base.py", "0002_second_root.py"],
    "cycle": ["0002_loop_a.py", "0003_loop_b.py", "cycle"],
    "bad_down_revision_type": ["bad_down_revision_type/0002_broken.py", "[1]"],
    "upgrade_takes_two_arguments": ["upgrade_takes_two_arguments/0002_broken.py", "one argument"],
    "duplicate_revision_two_apps": ["app_a/0001_base.py", "app_b/0001_other.py",
                                    "base0000000000000000000000000001"],
}


def corpus_patients(fhir) -> int:
    return len(fhir.search("Patient", identifier=f"{CORPUS_SYSTEM}|"))


def assert_refused(code: int, err: str, *culprits: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    message = err.strip()
    assert message.count("CommandError:") == 1 and len(message.splitlines()) == 1, message
    for culprit in culprits:
        assert culprit in message, (culprit, message)


@pytest.mark.parametrize("case", sorted(SCRIPT_CASES))
def test_broken_scripts_are_refused(case, fhir_settings, settings, fhir):
    folder = CORPUS / case
    dirs = sorted(str(p) for p in folder.iterdir() if p.is_dir()) or [str(folder)]
    settings.FHIR_MIGRATIONS = dict(fhir_settings, SCRIPTS_DIRS=dirs)
    before = corpus_patients(fhir)
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, *SCRIPT_CASES[case])
    assert fhir.state() is None
    assert corpus_patients(fhir) == before


@pytest.mark.parametrize("name, culprit", [
    ("", "a name"),
    ("../x", "letters, digits and underscores"),
    ("a/b", "letters, digits and underscores"),
    ("class", "reserved"),
    ("zero", "reserved"),
    ("existing", "already exists"),
    ("n" * 200, "limited to 80 characters"),
])
def test_bad_migration_names_are_refused(name, culprit, fhir_settings, fhir, scripts):
    scripts.add("existing")
    before = sorted(p.name for p in scripts.path.iterdir())
    code, _, err = call("fhirmakemigration", name, "--no-check")
    assert_refused(code, err, culprit)
    assert sorted(p.name for p in scripts.path.iterdir()) == before
    assert not (scripts.path.parent / "x.py").exists()


@pytest.mark.parametrize("change, culprit", [
    ({"BASE_URL": None}, "BASE_URL"),
    ({"BASE_URL": "fhir.example.org/fhir"}, "BASE_URL"),
    ({"AUTH": {"type": "oauth1", "token": "t"}}, "AUTH"),
    ({"LOCK_TIMEOUT": "five minutes"}, "LOCK_TIMEOUT"),
    ({"SCRIPTS_DIRS": ["/nonexistent/fhir_migrations"]}, "/nonexistent/fhir_migrations"),
])
def test_bad_settings_are_refused(change, culprit, fhir_settings, settings, fhir, scripts):
    scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})")
    settings.FHIR_MIGRATIONS = {k: v for k, v in dict(fhir_settings, **change).items() if v is not None}
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, culprit)
    assert fhir.state() is None and fhir.patients() == []


class _NotFhir(BaseHTTPRequestHandler):
    """Stands for a misconfigured URL: a web page or a login wall, not a FHIR server."""

    status = 200

    def do_GET(self):  # noqa: N802
        body = b"<html><body><h1>Welcome to the intranet</h1></body></html>"
        self.send_response(self.status)
        if self.status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="fhir"')
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def not_fhir():
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_NotFhir,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/fhir"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, culprit", [(200, "not FHIR JSON"), (401, "refused the credentials")])
def test_a_url_that_is_not_a_fhir_server_is_named(status, culprit, not_fhir, fhir_settings, settings,
                                                  scripts):
    scripts.add("one")
    url = not_fhir(status)
    settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=url)
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, culprit, url)


def test_a_wrong_base_path_on_the_real_server_is_named(fhir_settings, settings, fhir, scripts):
    scripts.add("one")
    wrong = fhir.base_url.rsplit("/fhir", 1)[0] + "/not-fhir"
    settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=wrong)
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, "404", "base URL of a FHIR server", wrong)


def put_state(fhir, body: dict) -> dict:
    body = dict(body, resourceType="Basic",
                identifier=[{"system": "http://fhir.migration.system", "value": fhir.state_id}])
    reply = fhir.http.post(fhir.url("Basic"), json=body, timeout=30,
                           headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 201, reply.text
    return reply.json()


@pytest.mark.parametrize("body, culprit", [
    ({"code": {"text": "someone removed the coding"}}, "no code.coding[0]"),
    ({"code": {"coding": [{"system": "http://our.migration.system", "code": "None"}]},
      "extension": [{"url": "http://fhir.migration.system/StructureDefinition/applied-migration",
                     "extension": [{"url": "name", "valueString": "no revision here"}]}]},
     "has no revision"),
    ({"code": {"coding": [{"system": "http://our.migration.system", "code": "f00dcafe"}]}},
     "f00dcafe"),
])
def test_a_state_resource_that_cannot_be_trusted_is_left_untouched(body, culprit, fhir_settings,
                                                                   fhir, scripts):
    scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})")
    written = put_state(fhir, body)
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, culprit, fhir.state_id)
    assert fhir.state()["meta"]["versionId"] == written["meta"]["versionId"]
    assert fhir.patients() == []


def test_two_state_resources_with_one_identifier_are_refused(fhir_settings, fhir, scripts):
    scripts.add("one", upgrade=f"ctx.create({fhir.patient_code('one')})")
    coding = {"code": {"coding": [{"system": "http://our.migration.system", "code": "None"}]}}
    first, second = put_state(fhir, coding), put_state(fhir, coding)
    code, _, err = call("fhirmigrate")
    assert_refused(code, err, f"Basic/{first['id']}", f"Basic/{second['id']}")
    assert fhir.patients() == []
    fhir.http.delete(fhir.url(f"Basic/{second['id']}"), timeout=30)
