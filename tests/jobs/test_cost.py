"""Prices, estimates and the budget (aibatch.jobs.cost), without the engine."""

from __future__ import annotations

import contextlib
import math
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest
from anyio import wait_all_tasks_blocked
from genai_prices import Usage, calc_price, data_snapshot

from aibatch.errors import BudgetReached, RateLimited, TransientError
from aibatch.jobs.cost import (
    Budget,
    Price,
    Rate,
    budget_shares,
    estimate,
    look_up_price,
    max_input_tokens,
    request_size,
)
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest, Message


def request(*texts: str, system: str | None = None) -> ChatRequest:
    messages = [Message("system", system)] if system else []
    messages += [Message("user", text) for text in texts]
    return ChatRequest(messages=tuple(messages), model="m")


def table_cost(model: str, input_tokens: int, output_tokens: int) -> float:
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return float(calc_price(usage, model).total_price)


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-latest", "gemini-2.5-pro"]
)
@pytest.mark.parametrize("tokens", [(0, 0), (1_234, 567), (250_000, 8_000)])
def test_a_table_price_costs_what_genai_prices_computes(model: str, tokens: tuple[int, int]):
    price = look_up_price(model).price
    assert price is not None

    assert price.cost(*tokens) == pytest.approx(table_cost(model, *tokens), rel=1e-12, abs=1e-15)


def test_every_model_the_table_prices_by_tokens_costs_what_genai_prices_computes(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("AIBATCH_CACHE_DIR", "off")  # 2,000 models, each looked up once
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            price = look_up_price(model.id).price
            if price is None:
                continue
            for tokens in ((1_000, 300), (300_000, 2_000)):
                assert price.cost(*tokens) == pytest.approx(
                    table_cost(model.id, *tokens), rel=1e-9, abs=1e-15
                ), model.id
            checked += 1

    assert checked > 500


def test_a_prompt_past_a_tier_pays_the_tier_rate_for_all_its_tokens():
    price = Price(input=Rate(1.0, ((200_000, 2.0),)), output=Rate(10.0, ((200_000, 15.0),)))

    assert price.cost(200_000, 1_000) == (200_000 * 1.0 + 1_000 * 10.0) / 1e6
    assert price.cost(200_001, 1_000) == (200_001 * 2.0 + 1_000 * 15.0) / 1e6


def test_many_rows_priced_at_once_cost_what_each_row_costs():
    price = Price(input=Rate(1.0, ((100, 3.0),)), output=Rate(2.0), per_request=0.001)
    inputs, outputs = np.array([10, 100, 101, 5000]), np.array([7, 0, 3, 9])

    total = price.total(inputs, outputs)

    assert total == pytest.approx(
        math.fsum(price.cost(i, o) for i, o in zip(inputs.tolist(), outputs.tolist(), strict=True))
    )


def test_both_overrides_price_a_model_the_table_does_not_know():
    lookup = look_up_price("my-local-llama", input_price=1.0, output_price=2.0)

    assert lookup.price is not None and lookup.price.cost(1_000_000, 1_000_000) == 3.0


def test_one_override_replaces_only_its_own_side_of_the_tables_price():
    table = look_up_price("gpt-4o-mini").price
    lookup = look_up_price("gpt-4o-mini", output_price=100.0)
    assert table is not None and lookup.price is not None

    assert (lookup.price.input, lookup.price.output) == (table.input, Rate(100.0))


def test_a_model_the_table_does_not_know_has_no_price_and_says_how_to_give_one():
    lookup = look_up_price("my-local-llama")

    assert lookup.price is None
    assert "no price for model 'my-local-llama'" in lookup.note
    assert "--input-price and --output-price" in lookup.note


def test_a_model_is_priced_by_its_name_alone():
    lookup = look_up_price("gpt-4o-mini")

    assert lookup.price is not None and "openai gpt-4o-mini" in lookup.note


def test_without_the_price_table_installed_the_note_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # as if it were not installed

    lookup = look_up_price("gpt-4o-mini")

    assert lookup.price is None and "pip install 'aibatch[prices]'" in lookup.note


def test_prices_are_read_without_the_network(monkeypatch: pytest.MonkeyPatch):
    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"a connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)

    assert look_up_price("claude-3-5-haiku-latest").price is not None
    assert not any(t.name.startswith("genai_prices") for t in threading.enumerate())


@pytest.mark.parametrize(
    "texts",
    [["hi"], ["Résumé: naïve café, 東京"], ["one two three " * 50], ["", "a\nb"], ["🙂" * 9]],
)
def test_the_worst_case_is_never_below_the_emulators_usage(texts: list[str]):
    req = request(*texts, system="Be brief.")
    billed = len(format_prompt(req.message_dicts).split())  # the emulator's prompt_tokens

    assert max_input_tokens(req) >= billed


def test_the_worst_case_counts_each_utf8_byte_as_a_token():
    short, long = request("abc"), request("abc" + "é" * 10)

    assert max_input_tokens(long) - max_input_tokens(short) == 20


def test_an_estimate_spans_four_characters_a_token_to_one_token_per_two_bytes():
    sizes = np.array([request_size(request("x" * 400))] * 3)
    price = Price(input=Rate(1.0), output=Rate(2.0))

    found = estimate(
        look_up_price("m", input_price=1.0, output_price=2.0),
        sizes,
        max_tokens=None,
        expected_output_tokens=50,
    )

    assert found.input_tokens == (3 * (100 + 4), 3 * (200 + 4))
    assert found.cost_usd == (
        price.total(np.full(3, 104), np.full(3, 50)),
        price.total(np.full(3, 204), np.full(3, 50)),
    )
    assert found.output_assumed and found.worst_case_usd is None


def test_an_estimate_with_max_tokens_gives_the_worst_case_the_budget_reserves():
    req = request("hello there")
    found = estimate(
        look_up_price("m", input_price=1.0, output_price=2.0),
        np.array([request_size(req)]),
        max_tokens=30,
        expected_output_tokens=500,
    )

    assert found.output_tokens == 30 and not found.output_assumed
    assert found.worst_case_usd == (max_input_tokens(req) * 1.0 + 30 * 2.0) / 1e6


def test_an_estimate_without_a_price_has_no_cost():
    found = estimate(
        look_up_price("my-local-llama"),
        np.array([request_size(request("hi"))]),
        max_tokens=None,
        expected_output_tokens=10,
    )

    assert found.cost_usd is None and found.to_dict()["estimated_cost_usd"] is None


def test_budget_shares_never_add_up_to_more_than_the_budget():
    shares = budget_shares(0.3, [100_000] * 7 + [3])

    assert math.fsum(shares) <= 0.3 and shares[0] == pytest.approx(0.3 * 100_000 / 700_003)


async def test_a_request_that_does_not_fit_waits_for_those_in_flight_to_settle():
    budget = Budget(1.0)
    await budget.reserve(0.7)
    started = anyio.Event()

    async def second() -> None:
        await budget.reserve(0.5)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await wait_all_tasks_blocked()
        assert not started.is_set()
        budget.settle(0.7, 0.1)

    assert started.is_set() and (budget.spent, budget.held) == (0.1, 0.5)


async def test_with_nothing_in_flight_a_request_that_does_not_fit_reaches_the_budget():
    budget = Budget(1.0)
    await budget.reserve(0.6)
    budget.settle(0.6, 0.6)

    with pytest.raises(BudgetReached, match=r"budget of \$1 is spent"):
        await budget.reserve(0.5)


async def test_once_the_budget_is_reached_every_waiting_request_stops():
    budget = Budget(1.0)
    await budget.reserve(0.9)
    stopped: list[str] = []

    async def waiter(amount: float) -> None:
        try:
            await budget.reserve(amount)
        except BudgetReached:
            stopped.append(f"{amount}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 0.95)
        tg.start_soon(waiter, 0.99)
        await wait_all_tasks_blocked()
        budget.settle(0.9, 0.9)

    assert sorted(stopped) == ["0.95", "0.99"] and budget.reached


async def call(budget: Budget, attempt: Callable[[], Any], costs: list[float | None]) -> None:
    with contextlib.suppress(TransientError):
        await budget.charging(attempt, 0.5, costs)()


@pytest.mark.parametrize(
    ("outcome", "spent"),
    [
        (0.01, 0.01),  # an answer: what it cost
        (None, 0.5),  # an answer without usage: its worst case
        (RateLimited("429"), 0.0),  # refused with a status: not billed
        (TransientError("stream cut before it ended", http_status=200), 0.5),  # maybe billed
    ],
)
async def test_a_request_settles_with_what_it_may_have_cost(outcome: object, spent: float):
    budget, costs = Budget(1.0), []

    async def attempt() -> str:
        if isinstance(outcome, Exception):
            raise outcome
        costs.append(outcome)  # type: ignore[arg-type]
        return "answer"

    await call(budget, attempt, costs)

    assert (budget.spent, budget.held, budget.in_flight) == (spent, 0.0, 0)
