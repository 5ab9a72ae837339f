"""Summary.merge: one summary for a job made of partitions."""

from __future__ import annotations

import dataclasses

from aibatch.runner.summary import Summary


def part(**counts: object) -> Summary:
    return Summary(input="part", **counts)  # type: ignore[arg-type]


def test_merge_adds_every_count_field_of_the_parts() -> None:
    names = [f.name for f in dataclasses.fields(Summary) if f.type == "int"]
    names.remove("concurrency")
    one = part(**dict.fromkeys(names, 1))
    two = part(**dict.fromkeys(names, 2))

    merged = Summary.merge([one, two], input="job")

    assert {name: getattr(merged, name) for name in names} == dict.fromkeys(names, 3)


def test_merge_adds_errors_by_type_per_type() -> None:
    merged = Summary.merge(
        [part(errors_by_type={"RateLimited": 2}), part(errors_by_type={"RateLimited": 1, "X": 4})],
        input="job",
    )

    assert merged.errors_by_type == {"RateLimited": 3, "X": 4}


def test_a_job_with_one_interrupted_part_is_interrupted() -> None:
    merged = Summary.merge([part(), part(interrupted=True), part()], input="job")

    assert merged.interrupted


def test_merged_latency_is_the_median_part_p50_and_the_worst_part_p95() -> None:
    parts = [
        part(latency_p50_ms=p50, latency_p95_ms=p95)
        for p50, p95 in [(10.0, 50.0), (30.0, 90.0), (20.0, 60.0)]
    ]

    merged = Summary.merge(parts, input="job")

    assert (merged.latency_p50_ms, merged.latency_p95_ms) == (20.0, 90.0)


def test_a_summary_survives_to_dict_and_back() -> None:
    summary = part(rows=5, ok=4, error=1, errors_by_type={"PermanentError": 1}, wall_s=1.5)

    assert Summary.from_dict(summary.to_dict()) == summary
