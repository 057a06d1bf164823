"""Create a cohort of 200 synthetic Patients in batch bundles.

Revision: 0fedfd6ae04e4171a490c483a5b381f6   Revises: None   Created: 2026-11-26T13:45:00Z
"""

revision = "0fedfd6ae04e4171a490c483a5b381f6"
down_revision = None

COHORT = "urn:example:fhir-migrations-cohort"
SIZE = 200
GIVEN = ["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Gus", "Hana"]


def upgrade(ctx):
    # Conditional creates in batch bundles of BUNDLE_SIZE: re-running never duplicates.
    with ctx.batch() as batch:
        for number in ctx.progress(range(SIZE), total=SIZE, desc="create cohort"):
            value = f"cohort-{number:04d}"
            batch.create(
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": COHORT, "value": value}],
                    "name": [{"family": f"Cohort{number:04d}", "given": [GIVEN[number % len(GIVEN)]]}],
                    "gender": ("female", "male", "other", "unknown")[number % 4],
                    "birthDate": f"{1940 + number % 60}-0{1 + number % 9}-1{number % 9}",
                },
                if_none_exist=f"identifier={COHORT}|{value}",
            )


def downgrade(ctx):
    # Deletes exactly the Patients this migration created (not any other with the system).
    ctx.undo()
