"""inspect streams: ten times the rows take about the same memory, not ten times as much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aibatch.io.output import METADATA_KEY, OUTPUT_SCHEMA

CHUNK = 100_000
PEAKS = """
import resource, sys, tracemalloc
import pyarrow as pa
from aibatch.report.inspect import inspect_output

tracemalloc.start()
inspection = inspect_output(sys.argv[1])
_, python_peak = tracemalloc.get_traced_memory()
assert inspection.rows == int(sys.argv[2]), inspection.rows
print(python_peak, pa.default_memory_pool().max_memory())
"""


def generated_output(path: Path, rows: int) -> Path:
    """An output of ``rows`` rows shaped like aibatch's: 10% failures, 2% skipped."""
    rng = np.random.default_rng(rows)
    schema = pa.schema([("prompt", pa.string()), *OUTPUT_SCHEMA])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            draw = rng.random(n)
            status = pa.array(np.where(draw < 0.1, "error", np.where(draw < 0.12, "skipped", "ok")))
            error = pc.equal(status, "error")
            text = pa.array([f"Question {i}?" for i in range(start, start + n)])
            finished = (1_800_000_000 + (start + np.arange(n)) / 2000.0) * 1e6
            columns = {
                "prompt": text,
                "row": pa.array(np.arange(start, start + n)),
                "sent_prompt": text,
                "response": pc.if_else(error, pa.scalar(None, pa.string()), text),
                "status": status,
                "error_type": pc.if_else(error, "TransientError", pa.scalar(None, pa.string())),
                "error": pc.if_else(error, "HTTP 500: injected", pa.scalar(None, pa.string())),
                "http_status": pc.if_else(error, 500, 200),
                "attempts": pa.array(rng.integers(1, 4, n)),
                "latency_ms": pa.array(rng.lognormal(3, 1, n)),
                "ttfb_ms": pa.array(rng.lognormal(2, 1, n)),
                "started_at": pa.array(finished.astype("int64") - 20_000),
                "finished_at": pa.array(finished.astype("int64")),
                "prompt_tokens": pa.array(rng.integers(5, 50, n)),
                "completion_tokens": pa.array(rng.integers(5, 500, n)),
                "finish_reason": pa.array(["stop"] * n),
                "model": pa.array(["gpt-4o-mini"] * n),
                "provider": pa.array(["aichatonline"] * n),
            }
            # Result columns added later (cost_usd, ...) are null here.
            nulls = pa.nulls(n)
            table = pa.table({name: columns.get(name, nulls) for name in schema.names})
            writer.write_table(table.cast(schema), row_group_size=10_000)
        writer.add_key_value_metadata({METADATA_KEY: json.dumps({"version": "test"})})
    return path


def peaks(path: Path, rows: int) -> tuple[int, int]:
    """Peak bytes of Python objects (tracemalloc) and of Arrow's pool, inspecting ``path``."""
    done = subprocess.run(
        [sys.executable, "-c", PEAKS, str(path), str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    python_peak, arrow_peak = map(int, done.stdout.split())
    return python_peak, arrow_peak


@pytest.mark.slow
def test_inspecting_two_million_rows_takes_the_memory_of_two_hundred_thousand(tmp_path: Path):
    small = peaks(generated_output(tmp_path / "small.parquet", 200_000), 200_000)

    large = peaks(generated_output(tmp_path / "large.parquet", 2_000_000), 2_000_000)

    # Keeping one float per row would add 14 MiB; reading whole columns, hundreds.
    assert large[0] - small[0] < 4 * 2**20, (small, large)
    assert large[1] - small[1] < 8 * 2**20, (small, large)
