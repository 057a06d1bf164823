"""The tool's own HTTP requests: for `fhirmigrate` with nothing pending, and per applied migration.

Measured through the real Django command (`call_command("fhirmigrate")`), with an observer on
every FhirConnection the command builds (the connection's `observers` hook). Each request is
named for the engine step that sent it by looking at the caller's stack (lock.acquire, audit
.record, ...), so the breakdown reflects the code as it is, not a list written here.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .patients import BenchError, PlainServer

TRIVIAL = '''"""Benchmark: a migration that changes nothing, to count the tool's own requests."""

revision = "{revision}"
down_revision = {down!r}


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
'''

# One migration that creates one resource (by ctx, so with its Provenance and idempotency key):
# the requests a migration that writes adds to the trivial one's.
CREATING = '''"""Benchmark: a migration that creates one Patient, to count the tool's requests around a write."""

revision = "{revision}"
down_revision = {down!r}


def upgrade(ctx):
    ctx.create({{"resourceType": "Patient", "identifier": [{{"system": {system!r}, "value": revision}}]}})


def downgrade(ctx):
    ctx.undo()
'''

# (file, function) on the stack -> the step it stands for; the first match in this order wins.
STEPS = [
    (("journal.py", "_existing"), "look up the create's key"),
    (("journal.py", "_fix_creates"), "rewrite the Provenance of creates"),
    (("journal.py", "_record_start"), "record the attempt"),
    (("attempt.py", "_record_start"), "record the attempt"),
    (("journal.py", "_post"), "the migration's writes (a transaction)"),
    (("script.py", "run"), "the migration's own requests"),
    (("lock.py", "finish"), "record the migration and release the lock"),
    (("lock.py", "release"), "release the lock"),
    (("lock.py", "_prove_version_check"), "prove the server enforces If-Match"),
    (("lock.py", "acquire"), "take the lock"),
    (("lock.py", "_renew_loop"), "renew the lease"),
    (("audit.py", "send"), "write the AuditEvent"),
    (("audit.py", "record"), "write the AuditEvent"),
    (("executor.py", "_run_one"), "record the migration as applied"),
    (("recorder.py", "read"), "read the state"),
]


@dataclass
class Requests:
    """The requests of one command run, in order, each with the step that sent it."""

    calls: list[tuple[str, str, str, int | None]] = field(default_factory=list)  # (step, method, path, status)

    def __len__(self) -> int:
        return len(self.calls)

    def breakdown(self) -> list[tuple[str, int]]:
        return list(Counter(step for step, *_ in self.calls).items())

    def describe(self) -> str:
        return ", ".join(f"{step} {n}" for step, n in self.breakdown())


@dataclass
class Overhead:
    noop: Requests
    one: Requests  # one trivial migration on a new state
    several: Requests
    several_count: int
    next_one: Requests | None = None  # one more trivial migration, on the state `one` left
    creating: Requests | None = None  # one migration creating one resource, on a new state
    creating_next: Requests | None = None  # one more such migration, on the state it left


def _step() -> str:
    frame = sys._getframe(2)
    seen: set[tuple[str, str]] = set()
    while frame is not None:
        seen.add((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
        frame = frame.f_back
    for key, step in STEPS:
        if key in seen:
            return step
    return "other"


@contextmanager
def observed() -> Iterator[Requests]:
    """Record every request of every FhirConnection created inside the block."""
    from django_fhir_migrations.engine.fhir import client

    found = Requests()
    original = client.FhirConnection.__init__
    base = {"url": ""}

    def observer(method: str, url: str, status: int | None) -> None:
        found.calls.append((_step(), method, url.removeprefix(base["url"]), status))

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        base["url"] = self.base_url
        self.observers.append(observer)

    client.FhirConnection.__init__ = init
    try:
        yield found
    finally:
        client.FhirConnection.__init__ = original


def _configure_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_fhir_migrations"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            USE_TZ=True, SECRET_KEY="benchmark-only", FHIR_MIGRATIONS={},
        )
        django.setup()


@contextmanager
def _clean_environment() -> Iterator[None]:
    """The command reads env overrides; the benchmark's own settings must be the ones used."""
    saved = {k: v for k, v in os.environ.items()
             if k.startswith(("FHIR_MIGRATIONS_", "MIGRATION_")) or k == "FHIR_BASE_URL"}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def fhirmigrate(base_url: str, scripts_dir: Path, state_id: str) -> Requests:
    """Run `manage.py fhirmigrate --noinput` in-process; return the requests it sent."""
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import CommandError

    settings.FHIR_MIGRATIONS = {"BASE_URL": base_url, "STATE_ID": state_id,
                                "SCRIPTS_DIRS": [str(scripts_dir)]}
    out = io.StringIO()
    with _clean_environment(), observed() as found:
        try:
            call_command("fhirmigrate", "--noinput", stdout=out, stderr=out)
        except (CommandError, SystemExit) as exc:
            raise BenchError(f"fhirmigrate failed on state {state_id!r}: {exc}\n{out.getvalue()}") from None
    return found


def _chain(folder: Path, count: int, *, system: str | None = None) -> list[str]:
    """`count` chained scripts in a new folder: trivial ones, or (with `system`) each creating
    one Patient with an identifier of that system."""
    folder.mkdir(parents=True)
    revisions: list[str] = []
    for index in range(count):
        revision = uuid.uuid4().hex
        down = revisions[-1] if revisions else None
        text = (CREATING.format(revision=revision, down=down, system=system) if system
                else TRIVIAL.format(revision=revision, down=down))
        (folder / f"m{index:04d}_{'creating' if system else 'trivial'}.py").write_text(text)
        revisions.append(revision)
    return revisions


def _head(server: PlainServer, state_id: str) -> str | None:
    found = server.get("Basic", identifier=f"http://fhir.migration.system|{state_id}")
    entries = found.get("entry", [])
    return entries[0]["resource"]["code"]["coding"][0]["code"] if entries else None


def measure(base_url: str, workdir: Path, run_id: str, server: PlainServer, several: int = 3
            ) -> tuple[Overhead, list[str]]:
    """Apply 1 trivial migration, then run again with nothing pending; also apply `several`.

    Returns the counts and the state ids it created (for clean-up).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _configure_django()
    one_state, several_state = f"bench-{run_id}-one", f"bench-{run_id}-several"
    one_revisions = _chain(workdir / "overhead_one", 1)
    one = fhirmigrate(base_url, workdir / "overhead_one", one_state)
    if _head(server, one_state) != one_revisions[-1]:
        raise BenchError(f"fhirmigrate did not record the trivial migration on state {one_state!r}.")
    noop = fhirmigrate(base_url, workdir / "overhead_one", one_state)
    # One more on the existing state (the usual case: the state was created long ago).
    next_revision = uuid.uuid4().hex
    (workdir / "overhead_one" / "m0001_trivial.py").write_text(
        TRIVIAL.format(revision=next_revision, down=one_revisions[-1]))
    next_one = fhirmigrate(base_url, workdir / "overhead_one", one_state)
    if _head(server, one_state) != next_revision:
        raise BenchError(f"fhirmigrate did not record the second trivial migration on state {one_state!r}.")
    many_revisions = _chain(workdir / "overhead_several", several)
    many = fhirmigrate(base_url, workdir / "overhead_several", several_state)
    if _head(server, several_state) != many_revisions[-1]:
        raise BenchError(f"fhirmigrate did not record {several} migrations on state {several_state!r}.")
    # One migration that creates one Patient, on a new state, then one more on that state.
    creating_state = f"bench-{run_id}-creating"
    folder = workdir / "overhead_creating"
    system = creating_system(run_id)
    first = _chain(folder, 1, system=system)
    creating = fhirmigrate(base_url, folder, creating_state)
    second = uuid.uuid4().hex
    (folder / "m0001_creating.py").write_text(CREATING.format(revision=second, down=first[0], system=system))
    creating_next = fhirmigrate(base_url, folder, creating_state)
    created = server.count("Patient", identifier=f"{system}|")
    if _head(server, creating_state) != second or created != 2:
        raise BenchError(f"the two migrations creating one Patient each on state {creating_state!r} left "
                         f"{created} Patient(s) and the head {_head(server, creating_state)!r}.")
    return (Overhead(noop=noop, one=one, several=many, several_count=several, next_one=next_one,
                     creating=creating, creating_next=creating_next),
            [one_state, several_state, creating_state])


def creating_system(run_id: str) -> str:
    """The identifier system of the Patients the request-count migrations create (clean-up)."""
    return f"urn:django-fhir-migrations:bench:{run_id}:overhead"
