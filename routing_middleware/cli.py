"""The ``llmroute`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmroute", description=__doc__)
    parser.parse_args(argv)
    parser.print_help()
    return 0
