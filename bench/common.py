"""What every benchmark script shares: which code it measured, and writing its own section of
docs/benchmarks.md (never touching the others)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_HEADER = """# Benchmarks

Every figure below was produced by a script in `bench/` on the machine it names, in one run,
and is reported next to a baseline measured in that same run (team rule: benchmarks report
only what was measured, on this machine, as ratios against a same-run baseline). Do not edit
the figures by hand: re-run the script, which rewrites its own section.
"""


def code_version() -> str:
    """The commit the run measured, and whether the working tree had local changes (read-only
    git commands)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    if not head:
        return "unknown"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def write_docs_section(title: str, section: str) -> None:
    """Replace the section headed `title` in docs/benchmarks.md (or append it)."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    text = DOCS.read_text() if DOCS.exists() else DOCS_HEADER
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = section.strip() + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _m: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    DOCS.write_text(text)
