"""call_with_retries and RateLimiter, with recorded sleeps and a fake clock: nothing waits."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from aibatch.errors import (
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    UsageError,
)
from aibatch.jobs.spec import RetryPolicy
from aibatch.runner.ratelimit import RateLimiter
from aibatch.runner.retry import Attempted, call_with_retries, wait_before_retry

# No jitter unless a test asks for it, so waits are exact.
POLICY = RetryPolicy(attempts=5, wait_initial=0.5, wait_max=30.0, wait_jitter=0.5)


def no_jitter() -> float:
    return 0.0


class Script:
    """A call that fails with the given errors in turn, then answers ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class RecordingSleep:
    """Records each wait instead of waiting; moves a fake clock along when given one."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def run(
    script: Script,
    policy: RetryPolicy = POLICY,
    rand: Callable[[], float] = no_jitter,
) -> tuple[Attempted[str], list[float]]:
    sleep = RecordingSleep()
    outcome = await call_with_retries(script, policy, sleep=sleep, rand=rand)
    return outcome, sleep.waits


# call_with_retries: what is retried


async def test_a_call_that_succeeds_at_once_is_made_once_without_waiting():
    script = Script()

    outcome, waits = await run(script)

    assert (outcome.value, outcome.error, outcome.attempts) == ("done", None, 1)
    assert waits == []
    assert script.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        TransientError("502 bad gateway", http_status=502),
        RateLimited("429", retry_after=None),
        TokenRejected("403", http_status=403),
    ],
    ids=["transient", "rate-limited", "token-rejected"],
)
async def test_every_transient_error_is_retried_until_the_call_succeeds(error):
    script = Script(error, error)

    outcome, waits = await run(script)

    assert (outcome.value, outcome.error, outcome.attempts) == ("done", None, 3)
    assert len(waits) == 2
    assert script.calls == 3


async def test_a_permanent_error_stops_at_once():
    error = PermanentError("400 bad request", http_status=400)
    script = Script(error)

    outcome, waits = await run(script)

    assert (outcome.value, outcome.error, outcome.attempts) == (None, error, 1)
    assert waits == []
    assert script.calls == 1


async def test_a_provider_error_that_is_not_transient_stops_at_once():
    error = ProviderError("something unclassified")
    script = Script(error)

    outcome, waits = await run(script)

    assert (outcome.error, outcome.attempts, waits) == (error, 1, [])


async def test_an_error_that_is_not_a_provider_error_propagates_as_a_bug():
    script = Script(TransientError("once"), ValueError("a bug"))

    with pytest.raises(ValueError, match="a bug"):
        await run(script)

    assert script.calls == 2


async def test_the_decision_reads_the_class_not_the_message():
    # A permanent error whose text looks transient is still not retried.
    script = Script(PermanentError("503 rate limit timeout, try again", http_status=404))

    outcome, _ = await run(script)

    assert outcome.attempts == 1


# call_with_retries: giving up


async def test_after_the_last_attempt_the_last_error_and_the_count_are_returned():
    errors = [TransientError(f"failure {i}") for i in range(4)]
    script = Script(*errors, TransientError("never reached"))

    outcome, waits = await run(script, RetryPolicy(attempts=4, wait_jitter=0))

    assert (outcome.value, outcome.error, outcome.attempts) == (None, errors[-1], 4)
    assert len(waits) == 3
    assert script.calls == 4


async def test_one_attempt_means_no_retry():
    error = TransientError("down")

    outcome, waits = await run(Script(error), RetryPolicy(attempts=1))

    assert (outcome.error, outcome.attempts, waits) == (error, 1, [])


async def test_a_permanent_error_after_retries_stops_there():
    permanent = PermanentError("400")
    script = Script(TransientError("a"), permanent, TransientError("b"))

    outcome, waits = await run(script)

    assert (outcome.error, outcome.attempts, len(waits)) == (permanent, 2, 1)


# call_with_retries: how long it waits


async def test_waits_grow_exponentially_and_are_capped_at_wait_max():
    policy = RetryPolicy(attempts=8, wait_initial=1, wait_max=10, wait_exp_base=3)
    script = Script(*[TransientError("down")] * 7)

    outcome, waits = await run(script, policy)

    assert outcome.attempts == 8
    assert waits == [1, 3, 9, 10, 10, 10, 10]


async def test_jitter_adds_up_to_wait_jitter_seconds():
    policy = RetryPolicy(attempts=3, wait_initial=1, wait_max=10, wait_jitter=0.4)
    randoms = iter([0.5, 1.0])
    script = Script(TransientError("a"), TransientError("b"))

    _, waits = await run(script, policy, rand=lambda: next(randoms))

    assert waits == pytest.approx([1.2, 2.4])


async def test_rate_limited_waits_retry_after_when_it_is_longer_than_the_backoff():
    script = Script(RateLimited("429", retry_after=7.0))

    _, waits = await run(script)

    assert waits == [7.0]


async def test_rate_limited_waits_the_backoff_when_retry_after_is_shorter():
    script = Script(RateLimited("429", retry_after=0.1), RateLimited("429", retry_after=0.1))

    _, waits = await run(script, rand=lambda: 1.0)

    assert waits == [0.5 + 0.5, 1.0 + 0.5]


async def test_rate_limited_adds_jitter_on_top_of_retry_after():
    script = Script(RateLimited("429", retry_after=7.0), RateLimited("429", retry_after=7.0))

    _, waits = await run(script, rand=iter([1.0, 0.25]).__next__)

    assert waits == pytest.approx([7.0 + 0.5, 7.0 + 0.125])


def test_rows_limited_together_retry_at_different_instants():
    policy = RetryPolicy(attempts=2, wait_jitter=2.0)
    errors = [RateLimited("429", retry_after=3.0) for _ in range(20)]
    rand = iter([i / 20 for i in range(20)]).__next__

    waits = [wait_before_retry(policy, 1, error, rand) for error in errors]

    assert len(set(waits)) == 20
    assert min(waits) >= 3.0
    assert max(waits) <= 3.0 + 2.0


async def test_rate_limited_without_retry_after_waits_the_backoff():
    _, waits = await run(Script(RateLimited("429")))

    assert waits == [0.5]


async def test_a_rejected_token_is_retried_without_waiting():
    script = Script(TokenRejected("401"), TokenRejected("403"))

    outcome, waits = await run(script, rand=lambda: 1.0)

    assert outcome.value == "done"
    assert waits == [0.0, 0.0]


def test_wait_before_retry_uses_the_retry_number_for_the_backoff():
    error = TransientError("down")

    waits = [wait_before_retry(POLICY, retry, error, no_jitter) for retry in (1, 2, 3)]

    assert waits == [0.5, 1.0, 2.0]


# RateLimiter


async def test_sequential_callers_start_one_interval_apart():
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    limiter = RateLimiter(4, clock=clock, sleep=sleep)
    starts = []

    for _ in range(5):
        await limiter.wait()
        starts.append(clock.now)

    assert starts == pytest.approx([1000.0, 1000.25, 1000.5, 1000.75, 1001.0])
    assert sleep.waits == pytest.approx([0.25] * 4)


async def test_concurrent_callers_each_get_their_own_slot():
    clock = FakeClock()
    sleep = RecordingSleep()  # the clock stands still: everyone arrives at once
    limiter = RateLimiter(10, clock=clock, sleep=sleep)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(limiter.wait)

    assert sorted(sleep.waits) == pytest.approx([0.1, 0.2, 0.3, 0.4])


async def test_a_caller_after_a_quiet_spell_starts_at_once_but_no_burst_follows():
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    limiter = RateLimiter(2, clock=clock, sleep=sleep)
    await limiter.wait()
    clock.now += 60

    await limiter.wait()
    await limiter.wait()

    assert sleep.waits == pytest.approx([0.5])


async def test_a_caller_who_arrives_mid_interval_waits_only_the_rest_of_it():
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    limiter = RateLimiter(1, clock=clock, sleep=sleep)
    await limiter.wait()
    clock.now += 0.75

    await limiter.wait()

    assert sleep.waits == pytest.approx([0.25])


def test_the_interval_is_one_over_rps():
    assert RateLimiter(8).interval == pytest.approx(0.125)


@pytest.mark.parametrize("rps", [0, -1.0])
def test_a_rate_that_is_not_positive_is_refused_as_a_usage_error(rps):
    with pytest.raises(UsageError, match="positive"):
        RateLimiter(rps)
