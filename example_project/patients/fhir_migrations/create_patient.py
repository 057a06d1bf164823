"""Create the demo Patient (the seed tool's first example).

Revision: 0ba2f5889a514adabebc88fc8c6d8e92   Revises: a1130a7c838845b199d51c0d5b031596   Created: 2026-11-26T12:00:00Z
"""

revision = "0ba2f5889a514adabebc88fc8c6d8e92"
down_revision = "a1130a7c838845b199d51c0d5b031596"  # after the cohort app's scripts

DEMO = "urn:example:fhir-migrations-demo|demo-patient-1"


def upgrade(ctx):
    # Conditional create: running it twice (or after a half-finished run) never duplicates.
    ctx.conditional_create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:example:fhir-migrations-demo", "value": "demo-patient-1"}],
            "name": [{"family": "Example", "given": ["Demo"]}],
            "gender": "female",
            "birthDate": "1980-04-01",
        },
        {"identifier": DEMO},
    )


def downgrade(ctx):
    for patient in ctx.search("Patient", identifier=DEMO):
        ctx.delete(patient)
