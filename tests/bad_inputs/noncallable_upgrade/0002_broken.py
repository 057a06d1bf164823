revision = "ncu00000000000000000000000000002"
down_revision = "base0000000000000000000000000001"
upgrade = "ctx.create(...)"


def downgrade(ctx):
    pass
