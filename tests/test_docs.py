"""The documentation stays what issue 24 asks: a short README, a results page generated from the
benchmark files (so it cannot drift from them), and no private run folders in any doc."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_at_most_12_kib():
    size = (ROOT / "README.md").stat().st_size
    assert size <= 12 * 1024, f"README.md is {size} bytes; move detail to docs/ (limit 12,288)"


def _check(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr or done.stdout


def test_results_page_is_generated_from_the_benchmark_files():
    _check("results_page.py")


def test_cli_page_flags_are_the_parsers():
    _check("cli_page.py")


def test_no_doc_names_a_private_run_folder():
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in DOCS
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"runs/e\d", line)
    ]
    assert not hits, "private run folders in the docs:\n" + "\n".join(hits)


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
