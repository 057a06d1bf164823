"""Give the demo Patient a national identifier (the seed tool's second example).

Revision: 9cf2ebbb82a34c489a66392fa0d57d79   Revises: 0ba2f5889a514adabebc88fc8c6d8e92   Created: 2026-11-26T12:00:00Z
"""

revision = "9cf2ebbb82a34c489a66392fa0d57d79"
down_revision = "0ba2f5889a514adabebc88fc8c6d8e92"

DEMO = "urn:example:fhir-migrations-demo|demo-patient-1"
NATIONAL = "http://example.org/fhir/sid/national-id"


def upgrade(ctx):
    for patient in ctx.search("Patient", identifier=DEMO, as_dict=True):
        identifiers = patient.setdefault("identifier", [])
        if not any(i.get("system") == NATIONAL for i in identifiers):
            identifiers.append({"system": NATIONAL, "value": "NAT-" + patient["id"]})
            ctx.update(patient)  # version-aware: refused if someone changed it since the search


def downgrade(ctx):
    for patient in ctx.search("Patient", identifier=DEMO, as_dict=True):
        kept = [i for i in patient.get("identifier", []) if i.get("system") != NATIONAL]
        if len(kept) != len(patient.get("identifier", [])):
            patient["identifier"] = kept
            ctx.update(patient)
