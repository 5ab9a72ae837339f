"""Load: 100,000 prompts at concurrency 512 against the emulator with 10% mixed faults.

In-process, so that the test can watch the run from inside: resident memory sampled
from the progress callback must stay flat, and the process's file descriptors (sockets
included) must be back where they started once the run returns.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import anyio
import pyarrow.parquet as pq
import pytest

from aibatch.jobs.spec import JobSpec, RetryPolicy
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.runner.engine import Progress
from aibatch.runner.job import arun_job

from .checks import assert_tokens_follow_expiries, injected, tally, write_prompts

pytestmark = pytest.mark.slow

ROWS = 100_000
CONCURRENCY = 512
FLAT_MIB = 25  # a leak of 450 bytes a row would grow RSS by 25 MiB over the 60% sampled


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> Counter[str]:
    """This process's open file descriptors by kind (socket, pipe, anon_inode, file...)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
        kinds[target.split(":")[0] if ":" in target else "file"] += 1
    return kinds


async def test_100k_prompts_at_concurrency_512_with_faults_finish_with_flat_memory_and_no_leaks(
    tmp_path: Path,
):
    source, prompts = write_prompts(tmp_path, ROWS)
    output = tmp_path / "in.responses.parquet"
    faults = Faults(
        error_rate=0.02,
        rate_limit_rate=0.02,
        retry_after=0.01,
        cut_rate=0.02,
        garbage_rate=0.02,
        stall_rate=0.02,
        stall_seconds=1.0,
        token_max_uses=5000,
        seed=100,
    )
    spec = JobSpec(
        input=str(source),
        concurrency=CONCURRENCY,
        timeout=0.5,
        retry=RetryPolicy(attempts=20, wait_initial=0.01, wait_max=0.2, wait_jitter=0.01),
    )
    samples: list[tuple[float, int]] = []

    def on_progress(progress: Progress) -> None:
        if progress.to_send:
            samples.append((progress.done / progress.to_send, rss_kib()))

    fds_before = open_fds()
    emu = Emulator(faults=faults)  # record_prompts off: its counter would grow with the run
    with anyio.fail_after(240):
        async with emu as url:
            serving = open_fds()
            summary = await arun_job(spec.replace(base_url=url), on_progress=on_progress)
            assert emu.stats.inflight == 0
            while open_fds() != serving:  # the server closes its ends as the client's close
                await anyio.sleep(0.01)
    assert open_fds() == fds_before, "file descriptors leaked"

    assert (summary.rows, summary.ok, summary.error) == (ROWS, ROWS, 0)
    table = pq.read_table(output, columns=["row", "prompt", "response", "status"])
    assert table.column("row").to_pylist() == list(range(ROWS))
    assert table.column("prompt").to_pylist() == prompts
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("response").to_pylist() == [answer_for(p) for p in prompts]

    at_30 = next(rss for done, rss in samples if done >= 0.3)
    at_90 = next(rss for done, rss in samples if done >= 0.9)
    assert (at_90 - at_30) / 1024 < FLAT_MIB, f"RSS grew {(at_90 - at_30) / 1024:.1f} MiB"

    outcomes = emu.stats.outcomes
    assert all(outcomes[k] > 1000 for k in ("server_error", "rate_limited", "cut", "garbage"))
    assert_tokens_follow_expiries(emu, max_uses=faults.token_max_uses)
    assert summary.token_requests < 50
    tally(
        faults_injected=injected(emu),
        rows_checked=ROWS,
        load_rows=ROWS,
        load_rss_growth_kib=at_90 - at_30,
        load_seconds=round(summary.wall_s),
    )
