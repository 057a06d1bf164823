revision = "dan00000000000000000000000000002"
down_revision = "gone000000000000000000000000000x"


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
