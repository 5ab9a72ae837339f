"""TokenManager: reuse, single-flight fetch, refresh on rejection, wear-out, pool, secrecy."""

from __future__ import annotations

import anyio
import pytest

from aibatch.errors import TransientError, UsageError
from aibatch.providers.tokens import Token, TokenManager

CALLERS = 50


class FakeTokenSource:
    """A token endpoint: counts fetches and, when gated, holds each fetch until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: anyio.Event | None = None
        self.fetching = anyio.Event()
        self.failures_left = 0

    async def __call__(self) -> str:
        self.calls += 1
        number = self.calls
        self.fetching.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise TransientError("token endpoint down")
        return f"secret-token-{number}"


class Arrivals:
    """Counts callers as they arrive and fires an event when all have."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_here = anyio.Event()

    def arrive(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.all_here.set()


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def values(manager: TokenManager, n: int) -> list[str]:
    return [(await manager.get()).value for _ in range(n)]


async def test_the_same_token_is_reused_across_calls():
    source = FakeTokenSource()
    manager = TokenManager(source)

    tokens = [await manager.get() for _ in range(5)]

    assert {t.value for t in tokens} == {"secret-token-1"}
    assert source.calls == 1
    assert manager.fetches == 1


async def test_fifty_concurrent_callers_share_one_fetch():
    source = FakeTokenSource()
    source.gate = anyio.Event()
    manager = TokenManager(source)
    arrivals = Arrivals(CALLERS)
    tokens: list[Token] = []

    async def caller() -> None:
        arrivals.arrive()
        tokens.append(await manager.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(CALLERS):
                tg.start_soon(caller)
            await arrivals.all_here.wait()
            await source.fetching.wait()
            source.gate.set()

    assert len(tokens) == CALLERS
    assert {t.value for t in tokens} == {"secret-token-1"}
    assert source.calls == 1
    assert manager.fetches == 1


async def test_fifty_callers_rejecting_the_same_token_cause_one_refresh():
    source = FakeTokenSource()
    manager = TokenManager(source)
    stale = await manager.get()
    source.gate = anyio.Event()
    source.fetching = anyio.Event()
    arrivals = Arrivals(CALLERS)
    tokens: list[Token] = []

    async def caller() -> None:
        manager.reject(stale)
        arrivals.arrive()
        tokens.append(await manager.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(CALLERS):
                tg.start_soon(caller)
            await arrivals.all_here.wait()
            await source.fetching.wait()
            source.gate.set()

    assert {t.value for t in tokens} == {"secret-token-2"}
    assert {t.generation for t in tokens} == {stale.generation + 1}
    assert source.calls == 2
    assert manager.rejections == 1


async def test_rejecting_a_token_makes_the_next_call_fetch_a_new_one():
    source = FakeTokenSource()
    manager = TokenManager(source)
    first = await manager.get()

    manager.reject(first)
    second = await manager.get()

    assert first.value == "secret-token-1"
    assert second.value == "secret-token-2"
    assert second.generation == first.generation + 1
    assert manager.rejections == 1


async def test_a_rejection_of_a_stale_generation_is_ignored():
    source = FakeTokenSource()
    manager = TokenManager(source)
    first = await manager.get()
    manager.reject(first)
    second = await manager.get()

    manager.reject(first)  # a late failure of a request that used the old token
    third = await manager.get()

    assert third is second
    assert source.calls == 2
    assert manager.rejections == 1


async def test_rejecting_the_same_token_twice_counts_once():
    manager = TokenManager(FakeTokenSource())
    token = await manager.get()

    manager.reject(token)
    manager.reject(token)

    assert manager.rejections == 1
    assert (await manager.get()).value == "secret-token-2"


async def test_a_token_is_replaced_after_max_uses():
    source = FakeTokenSource()
    manager = TokenManager(source, max_uses=3)

    got = await values(manager, 7)

    assert got == ["secret-token-1"] * 3 + ["secret-token-2"] * 3 + ["secret-token-3"]
    assert source.calls == 3


async def test_a_token_is_replaced_once_it_reaches_max_age():
    source = FakeTokenSource()
    clock = FakeClock()
    manager = TokenManager(source, max_age=10.0, clock=clock)

    first = await manager.get()
    clock.now += 9.999
    still_first = await manager.get()
    clock.now += 0.001
    second = await manager.get()
    clock.now += 9.0
    still_second = await manager.get()

    assert still_first is first
    assert second.value == "secret-token-2"
    assert still_second is second
    assert source.calls == 2


async def test_max_age_counts_from_when_the_token_arrived():
    source = FakeTokenSource()
    clock = FakeClock()
    manager = TokenManager(source, max_age=10.0, clock=clock)
    clock.now += 500.0  # time passing before the first fetch does not age the token

    first = await manager.get()
    clock.now += 5.0
    again = await manager.get()

    assert again is first


async def test_a_pool_hands_out_its_tokens_round_robin():
    source = FakeTokenSource()
    manager = TokenManager(source, pool_size=3)

    tokens = [await manager.get() for _ in range(7)]

    assert [t.value for t in tokens] == [
        "secret-token-1",
        "secret-token-2",
        "secret-token-3",
        "secret-token-1",
        "secret-token-2",
        "secret-token-3",
        "secret-token-1",
    ]
    assert [t.slot for t in tokens] == [0, 1, 2, 0, 1, 2, 0]
    assert source.calls == 3


async def test_rejecting_one_pool_token_refreshes_only_its_slot():
    source = FakeTokenSource()
    manager = TokenManager(source, pool_size=2)
    first, second = await manager.get(), await manager.get()

    manager.reject(second)
    again = [await manager.get() for _ in range(4)]

    assert [t.value for t in again] == [
        "secret-token-1",
        "secret-token-3",
        "secret-token-1",
        "secret-token-3",
    ]
    assert again[0] is first
    assert source.calls == 3


async def test_a_failed_fetch_raises_and_the_next_call_fetches_again():
    source = FakeTokenSource()
    source.failures_left = 1
    manager = TokenManager(source)

    with pytest.raises(TransientError):
        await manager.get()
    token = await manager.get()

    assert token.value == "secret-token-2"
    assert manager.fetches == 1


async def test_a_caller_cancelled_while_fetching_lets_the_next_caller_fetch():
    source = FakeTokenSource()
    source.gate = anyio.Event()
    manager = TokenManager(source)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.get)
            await source.fetching.wait()
            tg.cancel_scope.cancel()
        source.gate.set()
        token = await manager.get()

    assert token.value == "secret-token-2"
    assert source.calls == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"pool_size": 0}, {"max_uses": 0}, {"max_age": 0.0}, {"max_age": -1.0}],
)
def test_out_of_range_settings_are_refused_as_usage_errors(kwargs):
    with pytest.raises(UsageError):
        TokenManager(FakeTokenSource(), **kwargs)


async def test_reprs_never_show_a_token_value():
    source = FakeTokenSource()
    manager = TokenManager(source, pool_size=2)
    tokens = [await manager.get(), await manager.get()]

    shown = [repr(manager), str(manager), *map(repr, tokens), *map(str, tokens)]

    for text in shown:
        assert "secret-token" not in text, text
