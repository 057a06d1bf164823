revision = "imp00000000000000000000000000002"
down_revision = "base0000000000000000000000000001"
SETTINGS = {}
SYSTEM = SETTINGS["identifier_system"]  # raises KeyError at import time


def upgrade(ctx):
    pass


def downgrade(ctx):
    pass
