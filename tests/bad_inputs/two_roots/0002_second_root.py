revision = "roo00000000000000000000000000002"
down_revision = None


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
