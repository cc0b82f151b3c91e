"""Write the flag lists of docs/cli.md ("## Flags of each command") from the parser itself, so the
page cannot drift from the commands.

    python scripts/cli_page.py           # rewrite the section
    python scripts/cli_page.py --check   # exit 1 if the page differs from what it would write
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from factordiff.cli import build_parser

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
START, END = "## Flags of each command\n", "## Configuration\n"


def flags_section() -> str:
    """One ``### factordiff COMMAND`` block per command, its ``--help`` at 100 columns."""
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parts = [START]
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        commands = [(f"{name} {n}", q) for n, q in nested[0].choices.items()] if nested else [(name, p)]
        for title, q in commands:
            parts.append(f"\n### factordiff {title}\n\n```text\n{q.format_help().rstrip()}\n```\n")
    return "".join(parts) + "\n"


def page() -> str:
    text = PAGE.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + flags_section() + END + tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    new = page()
    if ap.parse_args().check:
        if new != PAGE.read_text():
            print(f"{PAGE}: out of date; run python scripts/cli_page.py")
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
