"""Outputs made by running aibatch against the emulator, shared by the report tests."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aibatch
from aibatch import Faults, RetryPolicy
from tests.conftest import emulator_in_thread

# Prompts a page must show as text, never as markup, and a terminal as escapes.
HOSTILE = '<script>alert("x")</script> <img src=x onerror=alert(1)> \x1b[31mred\x1b[0m &amp;'


@dataclass(frozen=True)
class Made:
    """An output file, the summary of the run that wrote it, and its rows."""

    path: Path
    summary: aibatch.Summary

    @property
    def table(self) -> pa.Table:
        return pq.read_table(self.path)


def write_prompts(path: Path, rows: int, *, start: int = 0) -> Path:
    """``rows`` prompts with ids; every 25th prompt empty (skipped), every 3rd hostile."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt"])
        for i in range(start, start + rows):
            text = "" if i % 25 == 3 else f"Question {i}?" + (f" {HOSTILE}" if i % 3 == 0 else "")
            writer.writerow([f"q{i}", text])
    return path


def run(source: Path, output: Path, *, error_rate: float = 0.0, seed: int = 1) -> Made:
    """Run ``source`` against an emulator failing ``error_rate`` of requests, one try each."""
    with emulator_in_thread(faults=Faults(error_rate=error_rate, seed=seed)) as emu:
        summary = aibatch.run_file(
            source,
            output,
            base_url=emu.base_url,
            retry=RetryPolicy(attempts=1),
            id_column="id",
            concurrency=8,
        )
    return Made(output, summary)


@pytest.fixture(scope="session")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """300 rows, a quarter of the requests answered HTTP 500 and not retried."""
    folder = tmp_path_factory.mktemp("failing")
    made = run(write_prompts(folder / "in.csv", 300), folder / "out.parquet", error_rate=0.25)
    assert made.summary.error > 10 and made.summary.ok > 100
    return made


@pytest.fixture(scope="session")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """60 rows, no fault: every sent row answered."""
    folder = tmp_path_factory.mktemp("clean")
    return run(write_prompts(folder / "in.csv", 60), folder / "out.parquet")


@pytest.fixture(scope="session")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Made]]:
    """A Dask-style output folder: two part files, each the output of its own run."""
    folder = tmp_path_factory.mktemp("parts")
    out = folder / "out"
    out.mkdir()
    made = [
        run(
            write_prompts(folder / f"in{n}.csv", 80, start=80 * n),
            out / f"part-{n:05d}.parquet",
            error_rate=0.2,
            seed=n,
        )
        for n in range(2)
    ]
    return out, made
