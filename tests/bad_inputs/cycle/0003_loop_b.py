revision = "cyb00000000000000000000000000003"
down_revision = "cya00000000000000000000000000002"


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
