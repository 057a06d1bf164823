"""Give every cohort Patient a study identifier: search across all pages, update in batches.

Revision: a1130a7c838845b199d51c0d5b031596   Revises: 0fedfd6ae04e4171a490c483a5b381f6   Created: 2026-11-26T13:45:00Z
"""

revision = "a1130a7c838845b199d51c0d5b031596"
down_revision = "0fedfd6ae04e4171a490c483a5b381f6"

COHORT = "urn:example:fhir-migrations-cohort"
STUDY = "http://example.org/fhir/sid/study-2026"


def upgrade(ctx):
    total = ctx.count("Patient", identifier=f"{COHORT}|")
    patients = ctx.search("Patient", identifier=f"{COHORT}|", as_dict=True)
    with ctx.batch() as batch:
        for patient in ctx.progress(patients, total=total, desc="tag cohort"):
            identifiers = patient.setdefault("identifier", [])
            if any(i.get("system") == STUDY for i in identifiers):
                continue  # already tagged: the migration can run again safely
            identifiers.append({"system": STUDY, "value": "S26-" + patient["id"][:8]})
            batch.update(patient)  # version-aware: refused if changed since the search read it
    ctx.log.info("tagged %d cohort patients (%d entries written)", total, batch.written)


def downgrade(ctx):
    # Every write above has a signed Provenance: undo puts back each Patient's previous content.
    ctx.undo()
