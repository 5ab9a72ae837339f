"""The bounded summaries inspect keeps: percentiles and counts over time."""

from __future__ import annotations

import numpy as np
import pytest

from aibatch.report.sketch import EXACT_LIMIT, LogHistogram, TimeHistogram
from aibatch.runner.summary import percentile


def latencies(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=3.0, sigma=1.2, size=n)


def fed(values: np.ndarray, batch: int = 10_000) -> LogHistogram:
    sketch = LogHistogram()
    for start in range(0, len(values), batch):
        sketch.add(values[start : start + batch])
    return sketch


def test_percentiles_of_few_values_are_exact_nearest_rank():
    values = latencies(EXACT_LIMIT)
    ordered = sorted(values.tolist())

    sketch = fed(values, batch=1000)

    assert [sketch.percentile(q) for q in (50, 90, 99, 100)] == [
        percentile(ordered, q) for q in (50, 90, 99, 100)
    ]


@pytest.mark.parametrize("q", [1, 50, 90, 99, 99.9])
def test_percentiles_of_many_values_are_within_half_a_percent(q: float):
    values = latencies(300_000)
    exact = percentile(np.sort(values).tolist(), q)

    estimate = fed(values).percentile(q)

    assert estimate == pytest.approx(exact, rel=0.005)


def test_the_maximum_of_many_values_stays_exact():
    values = latencies(100_000)

    assert fed(values).percentile(100) == values.max()


def test_nan_values_are_left_out():
    sketch = LogHistogram()

    sketch.add(np.array([np.nan, 5.0, np.nan, 7.0]))

    assert (sketch.count, sketch.percentile(0), sketch.max) == (2, 5.0, 7.0)


def test_a_histogram_of_binned_values_keeps_every_value():
    sketch = fed(latencies(50_000))

    edges, counts = sketch.histogram(40)

    assert (len(edges), int(counts.sum())) == (41, 50_000)


def test_time_bins_widen_both_ways_and_keep_every_event_in_fixed_memory():
    timeline = TimeHistogram(("ok", "error"), bins=64)
    timeline.add(np.linspace(1000.0, 1001.0, 500), "ok")

    timeline.add(np.array([10.0, 5000.0]), "error")  # far before and far after
    timeline.add(np.linspace(1000.0, 9000.0, 700), "ok")

    starts, counts = timeline.counts()
    assert (int(counts["ok"].sum()), int(counts["error"].sum())) == (1200, 2)
    assert len(starts) <= 64 and starts[0] <= 10.0 < 9000.0 < starts[-1] + timeline.width
