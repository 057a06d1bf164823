revision = "mdr00000000000000000000000000002"


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
