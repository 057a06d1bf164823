revision = "cya00000000000000000000000000002"
down_revision = "cyb00000000000000000000000000003"


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
