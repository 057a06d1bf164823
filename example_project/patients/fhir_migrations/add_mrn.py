"""Give the demo Patient a medical record number (the seed tool's third example).

Revision: 39fb51f6d61f4a86bc09a48d5c5d75a0   Revises: 9cf2ebbb82a34c489a66392fa0d57d79   Created: 2026-11-26T12:00:00Z
"""

revision = "39fb51f6d61f4a86bc09a48d5c5d75a0"
down_revision = "9cf2ebbb82a34c489a66392fa0d57d79"

DEMO = "urn:example:fhir-migrations-demo|demo-patient-1"
MRN_SYSTEM = "http://hospital.example.org/mrn"
MRN_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                "display": "Medical record number"}]
}


def upgrade(ctx):
    for patient in ctx.search("Patient", identifier=DEMO, as_dict=True):
        identifiers = patient.setdefault("identifier", [])
        if not any(i.get("system") == MRN_SYSTEM for i in identifiers):
            identifiers.append({"type": MRN_TYPE, "system": MRN_SYSTEM, "value": "MRN-0001"})
            ctx.update(patient)


def downgrade(ctx):
    for patient in ctx.search("Patient", identifier=DEMO, as_dict=True):
        kept = [i for i in patient.get("identifier", []) if i.get("system") != MRN_SYSTEM]
        if len(kept) != len(patient.get("identifier", [])):
            patient["identifier"] = kept
            ctx.update(patient)
