"""The benchmark prompts: one text per row number, and the files that hold them.

Every prompt is distinct (aibatch sends identical requests once, so repeated prompts
would flatter it) and short, so that the clients' own costs dominate.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PROMPT_COLUMN = "prompt"


def prompt_text(i: int) -> str:
    """The prompt of row ``i``."""
    return f"Question {i}: in one sentence, why does item {i} matter?"


def prompts(n: int) -> Iterator[str]:
    """The first ``n`` prompts."""
    return (prompt_text(i) for i in range(n))


def write_csv(path: Path, n: int) -> Path:
    """Write ``n`` prompts to a one-column CSV file at ``path`` (kept if already there)."""
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([PROMPT_COLUMN])
        writer.writerows([p] for p in prompts(n))
    tmp.replace(path)
    return path


def write_parquet(path: Path, csv_path: Path) -> Path:
    """Convert ``csv_path`` to Parquet at ``path`` (kept if already there).

    pyarrow is aibatch's own dependency; it runs in a child process so that the harness
    itself imports nothing beyond the standard library and aiohttp.
    """
    if path.exists() and path.stat().st_size > 0:
        return path
    code = (
        "import sys, pyarrow.csv as c, pyarrow.parquet as p;"
        "p.write_table(c.read_csv(sys.argv[1]), sys.argv[2])"
    )
    tmp = path.with_suffix(".tmp")
    subprocess.run([sys.executable, "-c", code, str(csv_path), str(tmp)], check=True, timeout=600)
    tmp.replace(path)
    return path


def load(arg: str) -> list[str]:
    """``FILE_OR_N`` of the clients' command line: a count, or a CSV file with a prompt column."""
    if arg.isdigit():
        return list(prompts(int(arg)))
    with open(arg, newline="", encoding="utf-8") as f:
        return [row[PROMPT_COLUMN] for row in csv.DictReader(f)]
