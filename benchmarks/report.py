"""Markdown output: tables, "median (min-max)" cells, and the machine each table ran on."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("aibatch", "aiohttp", "anyio", "pandas", "pyarrow", "g4f", "anthropic", "openai")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    numeric = [
        all(_looks_numeric(row[i]) for row in rows) if rows else False for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    head = cell.split(" ", 1)[0].replace(",", "").replace("x", "").replace("%", "")
    try:
        float(head)
    except ValueError:
        return cell in ("-", "n/a")
    return True


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)`` of ``values``, or the one value."""
    data = sorted(v for v in values if v == v)
    if not data:
        return "n/a"
    mid = len(data) // 2
    median = data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2
    if len(data) == 1:
        return fmt(median)
    return f"{fmt(median)} ({fmt(data[0])}-{fmt(data[-1])})"


def num(value: float, digits: int = 0) -> str:
    if value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def sig(value: float) -> str:
    """Three significant digits, thousands separated: 0.634, 12.5, 802."""
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gb() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return "?"
    return f"{kb / 1024 / 1024:.0f} GB"


class Machine:
    """What the figures ran on, gathered once per invocation."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 0
        self.usable = len(os.sched_getaffinity(0))
        self.cpu = _cpu_model()
        self.memory = _memory_gb()
        self.system = f"{platform.system()} {platform.release()}"
        self.python = platform.python_version()
        self.versions = {}
        for name in PACKAGES:
            try:
                self.versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                self.versions[name] = "absent"
        commit = _git("rev-parse", "--short", "HEAD") or "?"
        dirty = bool(_git("status", "--porcelain", "--", "aibatch"))
        self.commit = commit + ("+uncommitted" if dirty else "")
        self.started = datetime.datetime.now(datetime.UTC)
        self.load_at_start = os.getloadavg()

    def line(self) -> str:
        """One line for under each table."""
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"_Machine: {self.usable} of {self.cores} cores ({self.cpu}), {self.memory}, "
            f"{self.system}, Python {self.python}; {versions}; aibatch at {self.commit}; "
            f"load average {load} when this table was printed._"
        )

    def block(self) -> str:
        """The machine section of the report."""
        rows = [
            ("date (UTC)", self.started.strftime("%Y-%m-%d %H:%M")),
            ("cores", f"{self.usable} usable of {self.cores} ({self.cpu})"),
            ("memory", self.memory),
            ("system", self.system),
            ("Python", f"{self.python} ({sys.executable})"),
            *((name, version) for name, version in self.versions.items()),
            ("aibatch commit", self.commit),
            ("load average at start", ", ".join(f"{x:.2f}" for x in self.load_at_start)),
        ]
        return table(["", ""], rows)
