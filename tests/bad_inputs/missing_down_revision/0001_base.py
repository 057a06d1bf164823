"""A valid first migration: if anything ran, it would create a Patient."""
revision = "base0000000000000000000000000001"
down_revision = None


def upgrade(ctx):
    ctx.create({"resourceType": "Patient", "identifier": [{"system": "urn:django-fhir-migrations:bad-input", "value": "x"}]})


def downgrade(ctx):
    pass
