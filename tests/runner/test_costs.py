"""Costs and budgets end to end: the engine against the emulator, whose usage is known.

The emulator's OpenAI protocol reports usage as a function of the prompt: its prompt
tokens are the words of the prompt, its completion tokens the words of the answer
(:func:`answer_for`, cut to ``max_tokens`` words), so every row's cost is known here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from genai_prices import Usage, calc_price

import aibatch
import aibatch.dask
from aibatch.io.output import read_metadata
from aibatch.jobs.spec import RetryPolicy
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.runner.summary import Summary
from tests.conftest import emulator_in_thread

FAST = RetryPolicy(attempts=6, wait_initial=0.0, wait_max=0.02, wait_jitter=0.01)
PRICES = {"input_price": 0.5, "output_price": 2.0}


@pytest.fixture
async def openai_emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(protocol="openai", record_prompts=True)
    async with emu:
        yield emu


def prompts_csv(path: Path, n: int) -> Path:
    lines = ["prompt", *(f"Question {i}: {'why ' * (i % 7)}is it {i}?" for i in range(n))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def usage(prompt: str, max_tokens: int | None = None) -> tuple[int, int]:
    """The emulator's usage for a one-message prompt: words in, words out."""
    answer = len(answer_for(prompt).split())
    return len(prompt.split()), answer if max_tokens is None else min(answer, max_tokens)


async def run(emu: Emulator, source: Path, out: Path, **options: Any) -> Summary:
    return await aibatch.arun_file(
        source, out, provider="openai", base_url=emu.base_url, retry=FAST, **options
    )


def rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


async def test_every_row_costs_the_usage_the_emulator_reported_at_the_given_prices(
    tmp_path: Path, openai_emulator: Emulator
):
    out = tmp_path / "out.parquet"
    await run(openai_emulator, prompts_csv(tmp_path / "in.csv", 40), out, **PRICES)

    costs = [r["cost_usd"] for r in rows(out)]

    expected = []
    for row in rows(out):
        prompt_tokens, completion_tokens = usage(row["prompt"])
        expected.append((prompt_tokens * 0.5 + completion_tokens * 2.0) / 1e6)
    assert costs == expected


async def test_the_total_is_the_sum_of_the_rows_in_the_summary_and_the_metadata(
    tmp_path: Path, openai_emulator: Emulator
):
    out = tmp_path / "out.parquet"
    summary = await run(openai_emulator, prompts_csv(tmp_path / "in.csv", 40), out, **PRICES)

    total = math.fsum(r["cost_usd"] for r in rows(out))

    assert summary.cost_usd == pytest.approx(total, rel=1e-12)
    assert read_metadata(out)["cost_usd"] == summary.cost_usd


async def test_a_model_is_priced_from_the_table_by_its_name_on_any_server(
    tmp_path: Path, openai_emulator: Emulator
):
    out = tmp_path / "out.parquet"
    await run(openai_emulator, prompts_csv(tmp_path / "in.csv", 10), out, model="gpt-4o")

    for row in rows(out):
        prompt_tokens, completion_tokens = usage(row["prompt"])
        table = calc_price(
            Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens), "gpt-4o"
        )
        assert row["cost_usd"] == pytest.approx(float(table.total_price), rel=1e-12)


async def test_a_model_without_a_price_has_null_costs_and_an_unknown_total(
    tmp_path: Path, openai_emulator: Emulator
):
    out = tmp_path / "out.parquet"
    summary = await run(openai_emulator, prompts_csv(tmp_path / "in.csv", 5), out, model="llama3")

    assert [r["cost_usd"] for r in rows(out)] == [None] * 5
    assert summary.cost_usd is None and "no price for model 'llama3'" in summary.cost_note


async def test_answers_without_usage_have_null_costs_and_an_unknown_total(
    tmp_path: Path, emulator: Emulator
):
    out = tmp_path / "out.parquet"
    summary = await aibatch.arun_file(
        prompts_csv(tmp_path / "in.csv", 5), out, base_url=emulator.base_url, **PRICES
    )

    assert [r["cost_usd"] for r in rows(out)] == [None] * 5
    assert summary.cost_usd is None and "reports no token usage" in summary.cost_note


async def test_a_re_run_spends_nothing_and_keeps_each_rows_cost(
    tmp_path: Path, openai_emulator: Emulator
):
    source, out = prompts_csv(tmp_path / "in.csv", 10), tmp_path / "out.parquet"
    await run(openai_emulator, source, out, **PRICES)
    first = [r["cost_usd"] for r in rows(out)]

    again = await run(openai_emulator, source, out, **PRICES)

    assert again.cost_usd == 0.0 and [r["cost_usd"] for r in rows(out)] == first


async def test_a_budget_is_never_passed_at_concurrency_256_with_faults(tmp_path: Path):
    source, out = prompts_csv(tmp_path / "in.csv", 3_000), tmp_path / "out.parquet"
    faults = Faults(error_rate=0.1, rate_limit_rate=0.1, cut_rate=0.05, retry_after=0.01, seed=7)
    budget = 0.05  # 2 in 5 of what the rows cost, 500 times a request's worst case
    async with Emulator(protocol="openai", faults=faults) as base_url:
        summary = await aibatch.arun_file(
            source,
            out,
            provider="openai",
            base_url=base_url,
            retry=FAST,
            concurrency=256,
            max_tokens=8,
            max_cost=budget,
            input_price=1.0,
            output_price=4.0,
        )
    table = rows(out)
    spent = math.fsum(r["cost_usd"] or 0.0 for r in table)

    assert summary.budget_reached and 0 < summary.unsent < len(table)
    assert spent <= budget and summary.cost_usd is not None and summary.cost_usd <= budget


async def test_a_budget_stop_writes_every_row_the_rest_unsent(
    tmp_path: Path, openai_emulator: Emulator
):
    source, out = prompts_csv(tmp_path / "in.csv", 50), tmp_path / "out.parquet"

    summary = await run(openai_emulator, source, out, max_tokens=5, max_cost=0.0002, **PRICES)

    statuses = Counter(r["status"] for r in rows(out))
    assert summary.budget_reached and not summary.interrupted
    assert statuses == {"ok": summary.ok, "unsent": summary.unsent} and summary.unsent > 0
    assert sum(statuses.values()) == 50 == summary.rows


async def test_a_re_run_with_a_higher_budget_sends_only_the_unsent_rows(
    tmp_path: Path, openai_emulator: Emulator
):
    source, out = prompts_csv(tmp_path / "in.csv", 50), tmp_path / "out.parquet"
    await run(openai_emulator, source, out, max_tokens=5, max_cost=0.0002, **PRICES)

    again = await run(openai_emulator, source, out, max_tokens=5, max_cost=1.0, **PRICES)

    assert [r["status"] for r in rows(out)] == ["ok"] * 50 and not again.budget_reached
    assert set(openai_emulator.stats.prompts.values()) == {1}


async def test_a_budget_that_covers_the_job_changes_nothing(
    tmp_path: Path, openai_emulator: Emulator
):
    source, out = prompts_csv(tmp_path / "in.csv", 30), tmp_path / "out.parquet"

    summary = await run(openai_emulator, source, out, max_tokens=5, max_cost=1.0, **PRICES)

    assert (summary.ok, summary.unsent, summary.budget_reached) == (30, 0, False)


def test_under_dask_the_budget_is_the_whole_jobs(tmp_path: Path):
    pytest.importorskip("distributed")
    source, out = prompts_csv(tmp_path / "in.csv", 400), tmp_path / "out"
    budget = 0.003  # half of what the rows cost: each partition stops at its share
    with emulator_in_thread(protocol="openai") as emu:
        summary = aibatch.dask.run_dataset(
            source,
            out,
            provider="openai",
            base_url=emu.base_url,
            retry=FAST,
            partition_rows=100,
            workers=2,
            max_tokens=5,
            max_cost=budget,
            **PRICES,
        )
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    spent = math.fsum(c for c in table.column("cost_usd").to_pylist() if c is not None)

    assert summary.budget_reached and spent <= budget
    assert table.num_rows == 400 and summary.unsent > 0


def test_merged_costs_add_up_over_the_parts_that_know_theirs():
    parts = [
        Summary(input="a", cost_usd=0.25),
        Summary(input="b"),
        Summary(input="c", cost_usd=1.0),
    ]

    assert Summary.merge(parts, input="job").cost_usd == 1.25
    assert Summary.merge([Summary(input="a")], input="job").cost_usd is None
