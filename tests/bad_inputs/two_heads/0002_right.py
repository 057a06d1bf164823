revision = "rig00000000000000000000000000002"
down_revision = "base0000000000000000000000000001"


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
