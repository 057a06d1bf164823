revision = "bdt00000000000000000000000000002"
down_revision = [1]


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
