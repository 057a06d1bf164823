"""A Django team's second week (issue 24): what went wrong once the tool met real work, each as
the tool now answers it. Against the real HAPI where the server is involved; the rest are fast."""

from __future__ import annotations

from django_fhir_migrations.engine import Project
from django_fhir_migrations.engine.config import ScriptLocation, Settings
from django_fhir_migrations.formatting import format_status

from .support.helpers import ScriptsDir

# 4. counts and messages ---------------------------------------------------------------------------


def test_a_broken_script_is_listed_under_its_app_label(tmp_path):
    labs = ScriptsDir(tmp_path / "labs" / "fhir_migrations")
    labs.path.mkdir(parents=True)
    labs.add("0001_recode")
    labs.write("0002_cleanup", "revision = 'x'\ndef upgrade(:\n")
    settings = Settings(base_url=None, locations=(ScriptLocation(labs.path, "labs"),))
    lines = [line for _, line in format_status(Project(settings).status(offline=True))]
    assert " [?] labs/0001_recode" in "\n".join(lines)
    assert " [!] labs/0002_cleanup  (cannot be loaded: see Problems)" in lines
