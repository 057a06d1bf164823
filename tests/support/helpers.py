"""Test helpers: write migration scripts, talk plain HTTP to the server, run commands."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent.parent
_AUTO = object()


def indent(body: str) -> str:
    return textwrap.indent(textwrap.dedent(body).strip() or "pass", "    ")


@dataclass
class ScriptsDir:
    """A folder of migration scripts; `add` chains each new script after the previous one."""

    path: Path
    revisions: list[str] = field(default_factory=list)

    def add(self, name: str, *, upgrade: str = "pass", downgrade: str = "pass",
            revision: str | None = None, down: Any = _AUTO, header: str = "",
            takes_ctx: bool = True) -> str:
        revision = revision or uuid.uuid4().hex
        if down is _AUTO:
            down = self.revisions[-1] if self.revisions else None
        arg = "ctx" if takes_ctx else ""
        source = (
            f'"""{name}."""\n{header}\n'
            f"revision = {revision!r}\n"
            f"down_revision = {down!r}\n\n\n"
            f"def upgrade({arg}):\n{indent(upgrade)}\n\n\n"
            f"def downgrade({arg}):\n{indent(downgrade)}\n"
        )
        self.write(name, source)
        self.revisions.append(revision)
        return revision

    def write(self, name: str, source: str) -> Path:
        path = self.path / f"{name}.py"
        path.write_text(source)
        # Same-second rewrites must still look new to the import cache (mtime + size).
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        return path


@dataclass
class FhirNamespace:
    """One test's own corner of the server: its own state id and identifier system."""

    base_url: str
    state_id: str
    system: str
    http: requests.Session

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        reply = self.http.get(self.url(path), params=params,
                              headers={"Accept": "application/fhir+json"}, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def search(self, resource_type: str, **params: Any) -> list[dict[str, Any]]:
        """Every match, following next links (plain HTTP, independent of the tool)."""
        params.setdefault("_count", 200)
        bundle = self.get(resource_type, **params)
        found = []
        while True:
            found += [e["resource"] for e in bundle.get("entry", [])
                      if e.get("search", {}).get("mode", "match") == "match"]
            nxt = next((link["url"] for link in bundle.get("link", [])
                        if link["relation"] == "next"), None)
            if not nxt:
                return found
            bundle = self.http.get(nxt, headers={"Accept": "application/fhir+json"},
                                   timeout=30).json()

    def state(self) -> dict[str, Any] | None:
        """The state resource as plain HTTP sees it."""
        matches = self.search("Basic", identifier=f"http://fhir.migration.system|{self.state_id}")
        assert len(matches) <= 1, matches
        return matches[0] if matches else None

    def state_head(self) -> str | None:
        state = self.state()
        return state["code"]["coding"][0]["code"] if state else None

    def applied(self) -> list[str]:
        """The applied revisions in the order applied: the state's own applied-migration
        extensions, or (beyond 100) its applied records, read with plain HTTP."""
        state = self.state() or {}
        entries = [ext for ext in state.get("extension", []) if ext["url"].endswith("/applied-migration")]
        if state and not entries:
            records = self.search("Basic", subject=f"Basic/{state['id']}",
                                  code="http://fhir.migration.system/record|applied-migration")
            entries = [ext for r in records for ext in r.get("extension", [])
                       if ext["url"].endswith("/applied-migration")]
            entries.sort(key=lambda ext: next((e.get("valueDateTime") for e in ext["extension"]
                                               if e["url"] == "appliedAt"), ""))
        return [e["valueString"] for ext in entries for e in ext["extension"] if e["url"] == "revision"]

    def appliers(self) -> list[str]:
        """Who applied each migration: the AuditEvents' agent, or where the server keeps none
        (Helios) the state's appliedBy, its name before the host."""
        if self.keeps_audit_events:
            return [e["agent"][0]["who"]["display"] for e in self.audit_events()
                    if e["subtype"][0]["code"] == "applied"]
        return [by.split("@", 1)[0] for by in self.applied_by()]

    def applied_by(self) -> list[str]:
        """Who applied each migration, as the state records it (appliedBy): what names the
        person where the server keeps no AuditEvents."""
        state = self.state() or {}
        return [e["valueString"] for ext in state.get("extension", []) if ext["url"].endswith("/applied-migration")
                for e in ext["extension"] if e["url"] == "appliedBy"]

    def patients(self) -> list[dict[str, Any]]:
        return self.search("Patient", identifier=f"{self.system}|")

    def patient_code(self, value: str) -> str:
        """Python source of a Patient (dict) tagged with this namespace's system."""
        return (f"{{'resourceType': 'Patient', 'identifier': [{{'system': {self.system!r}, "
                f"'value': {value!r}}}], 'name': [{{'family': {value!r}}}]}}")

    @property
    def keeps_audit_events(self) -> bool:
        """Whether the server says it takes AuditEvents from clients (`create` in its
        CapabilityStatement): HAPI does; Helios refuses every one (405), by policy."""
        return keeps_audit_events(self.base_url)

    def kept_audit_events(self) -> list[dict[str, Any]] | None:
        """This state's AuditEvents, or None on a server that keeps none (then a test checks
        the tool's behaviour there elsewhere: the no_audit_server tests)."""
        return self.audit_events() if self.keeps_audit_events else None

    def audit_events(self) -> list[dict[str, Any]]:
        return [e for e in self.search("AuditEvent", _sort="-date", _count=200)
                if self.state_id in str(e.get("entity", ""))]

    def cleanup(self) -> None:
        for patient in self.patients():
            self.http.delete(self.url(f"Patient/{patient['id']}"), timeout=30)
        state = self.state()
        if state:
            for record in self.search("Basic", subject=f"Basic/{state['id']}"):
                self.http.delete(self.url(f"Basic/{record['id']}"), timeout=30)
            self.http.delete(self.url(f"Basic/{state['id']}"), timeout=30)


@functools.cache
def capability_statement(base_url: str) -> dict[str, Any]:
    reply = requests.get(f"{base_url.rstrip('/')}/metadata", headers={"Accept": "application/fhir+json"},
                         timeout=60)
    reply.raise_for_status()
    return reply.json()


def resource_interactions(base_url: str, resource_type: str) -> set[str]:
    """The interactions the server's CapabilityStatement offers on `resource_type`."""
    for resource in capability_statement(base_url)["rest"][0].get("resource", []):
        if resource.get("type") == resource_type:
            return {i.get("code") for i in resource.get("interaction", [])}
    return set()


def server_operations(base_url: str) -> set[str]:
    """The system-level operations the CapabilityStatement lists (`hapi.fhir.bulk-patch` ...)."""
    return {op.get("name") for op in capability_statement(base_url)["rest"][0].get("operation", [])}


def keeps_audit_events(base_url: str) -> bool:
    return "create" in resource_interactions(base_url, "AuditEvent")


def create_patient(fhir: FhirNamespace, value: str) -> str:
    """Source of a migration body that creates one Patient in the test's namespace."""
    return f"ctx.create({fhir.patient_code(value)})"


def delete_patient(fhir: FhirNamespace, value: str) -> str:
    return (f"for p in ctx.search('Patient', identifier={fhir.system + '|' + value!r}):\n"
            f"    ctx.delete(p)")


def add_patient_migrations(scripts: ScriptsDir, fhir: FhirNamespace, *names: str) -> list[str]:
    """One chained migration per name, creating (and on downgrade deleting) a Patient."""
    return [scripts.add(n, upgrade=create_patient(fhir, n), downgrade=delete_patient(fhir, n))
            for n in names]


GRAPH_BREAKAGES = ("duplicate", "dangling", "cycle", "two_roots", "two_heads")


def break_graph(scripts: ScriptsDir, base: str, breakage: str) -> None:
    """Add scripts after `base` that break the history in one of the GRAPH_BREAKAGES ways."""
    if breakage == "duplicate":
        scripts.add("copy", revision=base, down=None)
    elif breakage == "dangling":
        scripts.add("orphan", down="0123456789abcdef")
    elif breakage == "cycle":
        scripts.add("loop_a", revision="loopa001", down="loopb002")
        scripts.add("loop_b", revision="loopb002", down="loopa001")
    elif breakage == "two_roots":
        scripts.add("another_root", down=None)
    elif breakage == "two_heads":
        scripts.add("left", down=base)
        scripts.add("right", down=base)
    else:
        raise ValueError(breakage)


def patient_values(fhir: FhirNamespace) -> list[str]:
    return sorted(p["identifier"][0]["value"] for p in fhir.patients())


def call(command: str, *args: str, stdin: str | None = None, **options: Any) -> tuple[int, str, str]:
    """Run a management command in-process; returns (exit code, stdout, stderr) like a shell."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        call_command(command, *args, stdout=out, stderr=err, **options)
    except CommandError as exc:
        code = exc.returncode
        err.write(f"CommandError: {exc}\n")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("DJANGO_SETTINGS_MODULE", None)  # pytest-django's; the child has its own
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
    )
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, input=stdin)
