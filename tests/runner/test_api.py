"""The library API: run_file, run_frame and their async twins."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import aibatch
from aibatch.providers.emulator import Emulator, answer_for


def test_run_frame_returns_one_row_per_input_row_with_the_summary() -> None:
    frame = pd.DataFrame({"prompt": ["Why?", "", "How?"], "n": [1, 2, 3]})
    result = aibatch.run_frame(frame, emulate=True)
    assert list(result["n"]) == [1, 2, 3]
    assert list(result["status"]) == ["ok", "skipped", "ok"]
    assert result["response"][0] == answer_for("Why?")
    assert result.attrs["aibatch"]["ok"] == 2


async def test_arun_frame_works_inside_a_running_event_loop(emulator: Emulator) -> None:
    frame = pd.DataFrame({"text": ["one", "two"]})
    result = await aibatch.arun_frame(frame, template="Say {text}", base_url=emulator.base_url)
    assert list(result["response"]) == [answer_for("Say one"), answer_for("Say two")]


async def test_run_frame_with_an_output_resumes_on_a_repeated_call(
    tmp_path: Path, emulator: Emulator
) -> None:
    frame = pd.DataFrame({"prompt": [f"p{i}" for i in range(10)]})
    out = tmp_path / "frame.parquet"
    await aibatch.arun_frame(frame, output=str(out), base_url=emulator.base_url)
    again = await aibatch.arun_frame(frame, output=str(out), base_url=emulator.base_url)
    assert emulator.stats.chat_requests == 10
    assert again.attrs["aibatch"]["reused"] == 10


def test_run_file_returns_a_summary(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")
    summary = aibatch.run_file(source, tmp_path / "out.parquet", emulate=True)
    assert isinstance(summary, aibatch.Summary)
    assert (summary.rows, summary.ok, summary.token_requests) == (1, 1, 1)
    assert summary.output == str(tmp_path / "out.parquet")


def test_a_bad_option_is_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(aibatch.UsageError, match="concurrency"):
        aibatch.run_file(tmp_path / "in.csv", concurrency=0)
    with pytest.raises(aibatch.UnknownModelError, match="gpt-4o-mini"):
        aibatch.run_frame(pd.DataFrame({"prompt": ["x"]}), model="gpt-9", emulate=True)


# the caller's own frame: index, columns and types come back as they were

INDEXES = {
    "filtered": pd.Index([0, 2, 5]),
    "named": pd.Index(["a", "b", "c"], name="ticket"),
    "repeated": pd.Index([7, 7, 3]),
    "multi-level": pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", 1)], names=["k", "n"]),
    "datetime": pd.DatetimeIndex(["2026-01-03", "2026-01-01", "2026-01-02"], name="day"),
}


@pytest.mark.parametrize("kind", sorted(INDEXES))
async def test_arun_frame_keeps_the_frames_own_index(kind: str, emulator: Emulator) -> None:
    frame = pd.DataFrame({"prompt": ["one", "two", "three"]}, index=INDEXES[kind])

    result = await aibatch.arun_frame(frame, base_url=emulator.base_url)

    pd.testing.assert_index_equal(result.index, frame.index)


async def test_an_answer_column_assigned_back_pairs_every_row_with_its_own_answer(
    emulator: Emulator,
) -> None:
    everything = pd.DataFrame({"prompt": [f"question {i}" for i in range(6)]})
    frame = everything[everything.index % 2 == 0]  # index 0, 2, 4

    frame = frame.assign(
        answer=(await aibatch.arun_frame(frame, base_url=emulator.base_url))["response"]
    )

    assert list(frame["answer"]) == [answer_for(p) for p in frame["prompt"]]


async def test_arun_frame_gives_back_the_callers_own_columns_and_types(emulator: Emulator) -> None:
    frame = pd.DataFrame(
        {
            "prompt": ["one", "two"],
            "mixed": ["text", 3],
            "when": pd.to_datetime(["2026-01-01", "2026-02-01"], utc=True),
            "kind": pd.Categorical(["a", "b"]),
        }
    )

    result = await aibatch.arun_frame(frame, base_url=emulator.base_url)

    pd.testing.assert_frame_equal(result[frame.columns], frame)


async def test_arun_frame_with_a_limit_keeps_the_index_of_the_rows_it_ran(
    emulator: Emulator,
) -> None:
    frame = pd.DataFrame({"prompt": ["one", "two", "three"]}, index=[10, 20, 30])

    result = await aibatch.arun_frame(frame, limit=2, base_url=emulator.base_url)

    assert list(result.index) == [10, 20]


async def test_run_frame_inside_a_running_event_loop_says_to_await_arun_frame() -> None:
    with pytest.raises(aibatch.UsageError, match=r"await aibatch\.arun_frame"):
        aibatch.run_frame(pd.DataFrame({"prompt": ["x"]}), emulate=True)


async def test_run_file_inside_a_running_event_loop_says_to_await_arun_file(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")

    with pytest.raises(aibatch.UsageError, match=r"await aibatch\.arun_file"):
        aibatch.run_file(source, emulate=True)
