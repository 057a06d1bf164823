"""Copied from app_a by mistake: same revision id."""
revision = "base0000000000000000000000000001"
down_revision = None


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
