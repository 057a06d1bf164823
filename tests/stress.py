"""`python -m tests.stress`: the stress tool (tests/support/stress.py), by its documented name."""

import sys

from .support.stress import main

if __name__ == "__main__":
    sys.exit(main())
