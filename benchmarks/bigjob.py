"""The big-job section: an N-row job's peak memory, and the cost of re-running it finished.

Issue 19's targets: a 10,000,000-row CSV job (short prompts, a 0 ms emulator in its
own process, c=512, Parquet out, checkpoint on) peaks under 600 MB RSS, and the same
command run again on the finished job sends nothing and takes under 60 s.

N is ``BIGJOB_ROWS`` from the environment when set, else 10,000,000 (``--quick``:
20,000). At 10,000,000 rows the first run takes most of an hour on two cores. A run of
:data:`SMALL_ROWS` rows gives the fixed part of the memory (interpreter, libraries,
connections), so that the table also shows what each row costs beyond it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .measure import AIBATCH, Bench, Config, Run, median
from .report import num, spread, table

if TYPE_CHECKING:
    from .sections import Plan, Section

ROWS = {"full": 10_000_000, "quick": 20_000}
SMALL_ROWS = 1_000
CONCURRENCY = 512
RERUN = "aibatch re-run"  # the re-runs' key in Bench.runs, beside the first run's
TARGET_PEAK_MB = 600
TARGET_RERUN_S = 60


def bigjob_rows(plan: Plan) -> int:
    """N: ``BIGJOB_ROWS``, else the plan's default."""
    value = os.environ.get("BIGJOB_ROWS", "").replace("_", "").replace(",", "")
    return int(value) if value else ROWS.get(plan.name, ROWS["quick"])


def bigjob_config(plan: Plan) -> Config:
    """The big job's run: N prompts at c=512 against a 0 ms emulator."""
    return Config(concurrency=CONCURRENCY, prompts=bigjob_rows(plan), latency=0.0)


def rerun_runs(bench: Bench, plan: Plan) -> list[Run]:
    """The finished job's re-runs that this invocation made (good ones only)."""
    return [r for r in bench.runs.get((RERUN, bigjob_config(plan)), []) if r.good]


def bigjob(bench: Bench, plan: Plan) -> Section:
    """Run the N-row job once (peak RSS), then again finished (wall time, requests)."""
    from .sections import Section

    config = bigjob_config(plan)
    small = Config(concurrency=CONCURRENCY, prompts=SMALL_ROWS, latency=0.0)
    bench.keep.add(config)
    found = bench.compare([(AIBATCH, small), (AIBATCH, config)], reps=1)
    first, base = found[(AIBATCH, config)][0], found[(AIBATCH, small)][0]
    headers = [
        "rows",
        "first run wall s",
        "first run peak RSS MB",
        f"bytes per row beyond {SMALL_ROWS:,} rows",
        "re-run wall s",
        "re-run requests",
        "re-run CPU s",
        "re-run peak RSS MB",
    ]
    run_dir = bench.finished.get(config)
    if not first.good or run_dir is None:
        cells = [f"{config.prompts:,}", f"failed (see Failed runs): {first.error}"]
        return Section("Big job", table(headers, [cells + ["-"] * 6]))
    bench.log(f"  re-running the finished {config.prompts:,}-row job x {bench.reps}")
    with bench.emulator(config) as emulator:
        reruns = [
            bench.run_one(AIBATCH, config, emulator, run_dir=run_dir, keep=True)
            for _ in range(bench.reps)
        ]
    bench.runs[(RERUN, config)] = reruns
    good = [r for r in reruns if r.good]
    per_row = (first.peak_rss_mb - base.peak_rss_mb) * 2**20 / (config.prompts - SMALL_ROWS)
    cells = [
        f"{config.prompts:,}",
        num(first.wall_s, 1),
        num(first.peak_rss_mb),
        num(per_row, 1) if base.good and config.prompts > SMALL_ROWS else "-",
    ]
    if good:
        cells += [
            spread([r.wall_s for r in good], lambda v: num(v, 2)),
            spread([r.token_requests + r.chat_requests for r in good], num),
            num(median(r.cpu_s for r in good), 2),
            num(median(r.peak_rss_mb for r in good)),
        ]
    else:
        cells += ["failed (see Failed runs)", "-", "-", "-"]
    note = (
        f"\n\n`aibatch run` on a CSV of {config.prompts:,} short prompts (c={CONCURRENCY}, "
        "a 0 ms emulator in its own process, Parquet out, checkpoint on), then the same "
        "command again on the finished job, against a fresh emulator: requests are what "
        "it received. Peak RSS is the aibatch process's own (ru_maxrss from os.wait4); "
        f"bytes per row are (peak RSS - peak RSS of a {SMALL_ROWS:,}-row run) / rows. "
        f"Targets: peak RSS under {TARGET_PEAK_MB} MB and a re-run under {TARGET_RERUN_S} s "
        "that sends nothing, at 10,000,000 rows (set BIGJOB_ROWS to measure another size)."
    )
    return Section("Big job", table(headers, [cells]) + note)


def bigjob_targets(bench: Bench, plan: Plan) -> list[tuple[str, float, float, str]]:
    """(target, measured, limit, shown) of the big job, each an upper bound.

    A figure this invocation did not measure is NaN (the target reads n/a).
    """
    config = bigjob_config(plan)
    rows = f"{config.prompts:,}-row"
    firsts = [r for r in bench.runs.get((AIBATCH, config), []) if r.good]
    peak = median(r.peak_rss_mb for r in firsts)
    again = rerun_runs(bench, plan)
    sent = float(max((r.token_requests + r.chat_requests for r in again), default=float("nan")))
    wall = median(r.wall_s for r in again)
    return [
        (
            f"peak RSS of a {rows} job < {TARGET_PEAK_MB} MB",
            peak,
            TARGET_PEAK_MB,
            f"{num(peak)} MB",
        ),
        (f"re-run of a finished {rows} job sends nothing", sent, 0, f"{num(sent)} requests"),
        (
            f"re-run of a finished {rows} job < {TARGET_RERUN_S} s",
            wall,
            TARGET_RERUN_S,
            f"{num(wall, 1)} s",
        ),
    ]
