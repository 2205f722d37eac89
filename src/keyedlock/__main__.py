"""``python -m keyedlock``: the command line, :func:`keyedlock.cli.main`."""

from __future__ import annotations

import sys

from keyedlock.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m keyedlock"))
