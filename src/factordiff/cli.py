"""``factordiff`` commands: a thin layer over the Python API.

Each ``_cmd_*`` function turns parsed arguments into one library call and prints the result.
A FactordiffError (bad input, impossible request) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from factordiff.errors import FactordiffError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factordiff", description="Counterfactual images from factor-conditioned diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except FactordiffError as e:
        print(f"factordiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
