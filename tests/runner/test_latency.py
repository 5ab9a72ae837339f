"""Latency percentiles in bounded memory: exact while few, within 0.5% past that."""

from __future__ import annotations

import random
import tracemalloc

from aibatch.runner.latency import EXACT_LIMIT, Latencies
from aibatch.runner.summary import percentile


def filled(values: list[float]) -> Latencies:
    latencies = Latencies()
    for value in values:
        latencies.append(value)
    return latencies


def test_no_latencies_have_no_percentile():
    assert Latencies().percentile(50) is None


def test_below_the_limit_percentiles_are_exact_nearest_ranks():
    values = [random.Random(1).uniform(1, 900) for _ in range(1000)]

    latencies = filled(values)

    ordered = sorted(values)
    assert [latencies.percentile(q) for q in (50, 95)] == [
        percentile(ordered, 50),
        percentile(ordered, 95),
    ]


def test_past_the_limit_percentiles_are_within_half_a_percent_and_the_maximum_exact():
    draw = random.Random(2)
    values = [draw.lognormvariate(4, 1) for _ in range(3 * EXACT_LIMIT + 5)]

    latencies = filled(values)

    ordered = sorted(values)
    for q in (1, 50, 95, 99):
        true = percentile(ordered, q)
        assert true is not None
        assert abs((latencies.percentile(q) or 0) - true) <= 0.005 * true
    assert latencies.percentile(100) == max(values)
    assert len(latencies) == len(values)


def test_memory_stays_bounded_however_many_latencies():
    tracemalloc.start()
    try:
        latencies = Latencies()
        for i in range(10 * EXACT_LIMIT):  # every value kept would take 5 MB
            latencies.append(float(i % 997 + 1))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert held < 1_000_000
