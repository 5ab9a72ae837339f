"""DataFrames with every kind of index: each answer lands on its own row.

``run_frame`` and ``arun_frame`` give back the caller's own index, so that
``frame.assign(answer=result["response"])`` pairs every prompt with its own answer, with
no reindexing, whatever the index: a range, a filtered or unsorted one, strings, repeated
labels, several levels, dates, categories, periods, intervals, NaN among the labels. The
frames also repeat a prompt (sent once, its answer on every row that asks it) and leave
one blank (skipped: no answer). Then the same for frames hypothesis draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aibatch
from aibatch.providers.emulator import Emulator, answer_for
from tests.conftest import emulator_in_thread

from .checks import tally

ROWS = 9
PROMPTS = [f"Question {i}: what is {i} + {i}?" for i in (4, 1, 7, 0, 3)]
# Out of order, one prompt asked three times, one blank.
COLUMN = [*PROMPTS, PROMPTS[1], "", PROMPTS[1], "What is 5 + 5?"]

INDEXES: dict[str, Callable[[], pd.Index]] = {
    "range": lambda: pd.RangeIndex(ROWS),
    "range-stepped": lambda: pd.RangeIndex(100, 100 + 7 * ROWS, 7, name="n"),
    "filtered-int": lambda: pd.Index([0, 2, 3, 5, 8, 13, 21, 34, 55]),
    "unsorted-int": lambda: pd.Index([42, 7, 19, 3, 88, 1, 64, 27, 5]),
    "string": lambda: pd.Index([f"ticket-{c}" for c in "qwertyuio"], name="ticket"),
    "repeated": lambda: pd.Index([7, 7, 3, 7, 3, 3, 1, 7, 1]),
    "repeated-string": lambda: pd.Index(list("abababcca")),
    "multi": lambda: pd.MultiIndex.from_arrays(
        [list("xxyyxzzyx"), [1, 2, 1, 2, 1, 1, 2, 1, 1]], names=["k", "n"]
    ),
    "datetime": lambda: pd.DatetimeIndex(
        [f"2026-01-{d:02d}" for d in (9, 3, 7, 1, 5, 2, 8, 4, 6)], name="day", tz="UTC"
    ),
    "categorical": lambda: pd.CategoricalIndex(list("xyzxyzxyx"), categories=list("zyx")),
    "nan": lambda: pd.Index([1.5, math.nan, 2.5, math.nan, 0.5, 9.0, math.nan, 3.0, 4.0]),
    "object-with-none": lambda: pd.Index(["a", None, 3, "d", None, 6.5, "g", "h", "i"]),
    "period": lambda: pd.period_range("2026-01", periods=ROWS, freq="M")[::-1],
    "interval": lambda: pd.interval_range(0, ROWS)[[3, 1, 4, 0, 5, 2, 8, 6, 7]],
    "named-like-a-column": lambda: pd.Index(list("abcdefghi"), name="prompt"),
}


def expected_answer(prompt: Any) -> str | None:
    """What a row's answer must be: its own prompt's, or none for a blank prompt."""
    return (
        answer_for(prompt) if isinstance(prompt, str) and not prompt.isspace() and prompt else None
    )


def answers(column: pd.Series) -> list[str | None]:
    """A column's values, with pandas' missing value (NaN in a ``str`` column) as ``None``."""
    return [None if pd.isna(value) else value for value in column]


def frame_with(index: pd.Index, prompts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt": prompts, "note": range(len(prompts))}, index=index)


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    """One fault-free emulator for the module's synchronous ``run_frame`` calls."""
    with emulator_in_thread() as emu:
        yield emu


@pytest.mark.parametrize("kind", sorted(INDEXES))
def test_run_frame_gives_back_the_frames_own_index(kind: str, server: Emulator):
    frame = frame_with(INDEXES[kind](), COLUMN)

    result = aibatch.run_frame(frame, base_url=server.base_url)

    pd.testing.assert_index_equal(result.index, frame.index, exact=True)
    tally(frames_checked=1, rows_checked=ROWS)


@pytest.mark.parametrize("kind", sorted(INDEXES))
async def test_an_answer_assigned_back_from_arun_frame_pairs_every_prompt_with_its_own(
    kind: str, emulator: Emulator
):
    frame = frame_with(INDEXES[kind](), COLUMN)

    answered = frame.assign(
        answer=(await aibatch.arun_frame(frame, base_url=emulator.base_url))["response"]
    )

    assert answers(answered["answer"]) == [expected_answer(p) for p in frame["prompt"]]
    tally(frames_checked=1, rows_checked=ROWS)


# Frames hypothesis draws: labels of any kind, repeated or missing, prompts often repeated.

LABELS = st.one_of(
    st.lists(st.integers(-5, 5), min_size=1, max_size=12).map(pd.Index),
    st.lists(st.sampled_from(["a", "b", "", "é", "a b"]), min_size=1, max_size=12).map(pd.Index),
    st.lists(st.sampled_from([0.5, 1.0, math.nan]), min_size=1, max_size=12).map(pd.Index),
    st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=12).map(pd.CategoricalIndex),
    st.lists(st.integers(0, 3), min_size=1, max_size=12).map(
        lambda days: pd.DatetimeIndex(pd.Timestamp("2026-01-01") + pd.to_timedelta(days, "D"))
    ),
    st.lists(st.tuples(st.sampled_from("pq"), st.integers(0, 2)), min_size=1, max_size=12).map(
        pd.MultiIndex.from_tuples
    ),
)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    index = draw(LABELS)
    prompts = draw(
        st.lists(
            st.sampled_from(["", " ", "same question", "another one"]) | st.text(max_size=12),
            min_size=len(index),
            max_size=len(index),
        )
    )
    return frame_with(index, prompts)


FRAMES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FRAMES
@given(frame=frames())
def test_any_frame_comes_back_on_its_own_index(frame: pd.DataFrame, server: Emulator):
    result = aibatch.run_frame(frame, base_url=server.base_url)

    pd.testing.assert_index_equal(result.index, frame.index, exact=True)
    tally(frames_checked=1, rows_checked=len(frame))


@FRAMES
@given(frame=frames())
def test_any_frame_with_its_answers_assigned_back_pairs_each_prompt_with_its_own(
    frame: pd.DataFrame, server: Emulator
):
    answered = frame.assign(answer=aibatch.run_frame(frame, base_url=server.base_url)["response"])

    assert answers(answered["answer"]) == [expected_answer(p) for p in frame["prompt"]]
    tally(frames_checked=1, rows_checked=len(frame))
