"""Many `manage.py fhirmigrate` processes started at the same moment, as replicas deploy.

Used by tests/server/test_concurrency.py (a short run in `make test`) and by `python -m tests.stress`
(many rounds, figures for RELIABILITY.md). Each process is the real Django command, released
by a shared start time after Django has loaded, so they really hit the server together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

# Load Django first, then wait for the common start time, then run the command.
RUNNER = (
    "import os, sys, time, django\n"
    "django.setup()\n"
    "from django.core.management import execute_from_command_line\n"
    "time.sleep(max(0.0, float(os.environ['START_AT']) - time.time()))\n"
    "execute_from_command_line(['manage.py'] + sys.argv[1:])\n"
)


@dataclass
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str


def start_command(args: list[str], env: dict[str, str], start_at: float) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.update({
        "START_AT": str(start_at),
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
        "PYTHONPATH": str(REPO),
    })
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], env=full_env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_together(count: int, args: list[str], env: dict[str, str], *, lead: float = 3.0,
                 timeout: float = 300) -> list[ProcessResult]:
    start_at = time.time() + lead
    processes = [start_command(args, env, start_at) for _ in range(count)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        results.append(ProcessResult(process.returncode, out, err))
    return results


def write_creating_migrations(folder: Path, system: str, count: int, sleep: float = 0.2) -> list[str]:
    """`count` chained migrations, each creating one Patient with a plain (non-conditional) POST."""
    import uuid

    revisions: list[str] = []
    for index in range(count):
        revision = uuid.uuid4().hex
        down = repr(revisions[-1]) if revisions else "None"
        (folder / f"m{index:02d}_create.py").write_text(
            f'"""Create patient {index}."""\nimport time\n\n'
            f"revision = {revision!r}\ndown_revision = {down}\n\n\n"
            "def upgrade(ctx):\n"
            f"    ctx.create({{'resourceType': 'Patient', 'identifier': [{{'system': {system!r}, "
            f"'value': 'p{index}'}}]}})\n"
            f"    time.sleep({sleep})\n\n\n"
            "def downgrade(ctx):\n    pass\n"
        )
        revisions.append(revision)
    return revisions
