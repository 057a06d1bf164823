"""`make demo`: the example project's FHIR migrations against the local HAPI server.

Starts HAPI if nothing answers (and stops it again at the end unless KEEP_HAPI=1), then runs
fhirmigrate, fhirshowmigrations, one fhirdowngrade and fhirmigrate again, printing the demo
Patient as the server holds it after each step, and ends with fhirhistory. Set FHIR_BASE_URL to
use another server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DEMO_PATIENT = "urn:example:fhir-migrations-demo|demo-patient-1"


def manage(*args: str) -> None:
    print(f"\n$ python manage.py {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=HERE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    if result.returncode != 0:
        raise SystemExit(f"manage.py {args[0]} exited with {result.returncode}")


def show_patient(base_url: str) -> None:
    bundle = requests.get(f"{base_url}/Patient", params={"identifier": DEMO_PATIENT},
                          headers={"Accept": "application/fhir+json"}, timeout=30).json()
    entries = bundle.get("entry", [])
    if not entries:
        print("  -> the demo Patient does not exist on the server")
        return
    patient = entries[0]["resource"]
    summary = {
        "id": f"Patient/{patient['id']}",
        "version": patient["meta"]["versionId"],
        "identifier": [f"{i.get('system')}|{i.get('value')}" for i in patient.get("identifier", [])],
    }
    print("  -> demo Patient on the server: " + json.dumps(summary, indent=2).replace("\n", "\n     "))


def main() -> int:
    from tests.hapi import launcher

    base_url = os.environ.get("FHIR_BASE_URL")
    started = False
    if not base_url:
        started = launcher.start()
        base_url = launcher.base_url()
        os.environ["FHIR_BASE_URL"] = base_url
    try:
        print(f"FHIR server: {base_url}")
        manage("fhirshowmigrations")
        manage("fhirmigrate")
        show_patient(base_url)
        manage("fhirshowmigrations")
        manage("fhirdowngrade")
        show_patient(base_url)
        manage("fhirmigrate")
        show_patient(base_url)
        manage("fhirshowmigrations", "-v", "2")
        manage("fhirhistory", "--limit", "8")
    finally:
        if started and not os.environ.get("KEEP_HAPI"):
            launcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
