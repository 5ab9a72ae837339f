"""AdaptiveLimit: a scripted sequence of outcomes in, the limits out; then the engine.

An outcome is ``OK`` (an answer came back) or an error while ``n`` requests were in
flight: ``throttled(n)`` (a 429), ``busy(n)`` (a 503 or 529), ``refused(n)`` (a
connection refused or reset), or any other error. Nothing in the unit tests sleeps or
touches the network; they end with a simulated service with a fixed number of slots,
round by round. The last tests run the engine against the emulator on loopback.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import pytest

from aibatch.errors import (
    ConnectionRefused,
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
    UsageError,
)
from aibatch.jobs.spec import RetryPolicy
from aibatch.providers.emulator import Emulator, Faults
from aibatch.runner.api import arun_file
from aibatch.runner.concurrency import AdaptiveLimit

OK = "ok"
Outcome = str | tuple[ProviderError, int]


def throttled(inflight: int) -> tuple[ProviderError, int]:
    return (RateLimited("HTTP 429"), inflight)


def busy(inflight: int, status: int = 503) -> tuple[ProviderError, int]:
    return (Overloaded(f"HTTP {status}", http_status=status), inflight)


def refused(inflight: int) -> tuple[ProviderError, int]:
    return (ConnectionRefused("connection refused or reset"), inflight)


def ok(n: int) -> list[str]:
    return [OK] * n


def drive(limit: AdaptiveLimit, outcomes: Iterable[Outcome]) -> list[int]:
    """Feed ``outcomes`` to ``limit``; return the limit after each one."""
    limits = []
    for outcome in outcomes:
        if outcome == OK:
            limits.append(limit.succeeded())
        else:
            error, inflight = outcome
            limits.append(limit.failed(error, inflight))
        assert limits[-1] == limit.current
    return limits


# slow start


def test_the_limit_starts_at_sixteen_requests():
    assert AdaptiveLimit(512).current == 16


def test_slow_start_doubles_the_limit_with_every_window_of_clean_answers():
    limits = drive(AdaptiveLimit(512, start=4), ok(4 + 8 + 16 + 32))

    assert limits == list(range(5, 65))
    # a window is as many answers as the limit allowed in flight
    assert [limits[3], limits[4 + 8 - 1], limits[4 + 8 + 16 - 1], limits[-1]] == [8, 16, 32, 64]


def test_slow_start_stops_at_the_ceiling():
    assert drive(AdaptiveLimit(6, start=4), ok(6)) == [5, 6, 6, 6, 6, 6]


# the cut


def first_cut() -> AdaptiveLimit:
    """A limit of 40 after its first 429, which came with more requests in flight."""
    limit = AdaptiveLimit(512, start=40)
    assert drive(limit, [throttled(100)]) == [36]  # 0.9 x 40
    assert limit.cuts == 1
    return limit


def test_the_first_429_cuts_by_the_decrease_factor():
    first_cut()


def test_the_decrease_factor_sets_the_depth_of_the_cut():
    limit = AdaptiveLimit(512, start=20, decrease=0.5)

    assert drive(limit, [throttled(40)]) == [10]


def test_the_first_429_cuts_even_before_any_answer():
    limit = AdaptiveLimit(512)

    assert drive(limit, [throttled(4)])[-1] < 4
    assert limit.cuts == 1


def test_a_cut_is_decrease_times_the_requests_in_flight():
    limit = AdaptiveLimit(512, start=4)
    drive(limit, ok(28))
    assert limit.current == 32

    assert drive(limit, [throttled(20)]) == [18]  # 0.9 x 20 in flight, not x 32 allowed


def test_every_429_brings_the_limit_below_what_was_in_flight():
    limit = first_cut()

    assert drive(limit, [throttled(30), throttled(25)]) == [29, 24]
    # more in flight than the limit: sent under an older, higher limit, nothing new
    assert drive(limit, [throttled(50), throttled(25)]) == [24, 24]
    assert limit.cuts == 1  # these were caps, not cuts


def test_only_one_cut_by_the_decrease_factor_is_made_per_window():
    limit = first_cut()

    # the burst's other 429s were sent under the old limit: they say nothing new
    assert drive(limit, [throttled(100)] * 5) == [36] * 5
    assert limit.cuts == 1
    # nor does a 429 before a whole window (36 answers) came back since the cut
    assert drive(limit, [*ok(35), throttled(100)])[-1] == 36
    assert limit.cuts == 1
    # once it has, the next 429 cuts again
    assert drive(limit, [*ok(1), throttled(100)])[-1] == 33  # 0.9 x 36.9
    assert limit.cuts == 2


def test_slow_start_ends_at_the_first_429():
    limit = first_cut()

    assert drive(limit, ok(5)) == [36] * 5
    assert not limit.slow_start


def test_after_the_first_cut_the_limit_grows_by_one_per_window():
    limit = AdaptiveLimit(512, start=10)
    drive(limit, [throttled(50)])
    assert limit.current == 9

    limits = drive(limit, ok(300))

    steps = [b - a for a, b in pairwise([9, *limits])]
    assert set(steps) == {0, 1}
    # each step up by one takes a window: as many answers as the limit (or one more)
    rises = [i for i, step in enumerate(steps) if step]
    for before, after in pairwise(rises):
        window = limits[before]
        assert after - before in (window, window + 1)
    assert len(rises) == limits[-1] - 9 >= 10


def test_additive_growth_stops_at_the_ceiling():
    limit = AdaptiveLimit(12, start=12)
    drive(limit, [throttled(12)])

    assert drive(limit, ok(100))[-1] == 12


# what counts as congestion


@pytest.mark.parametrize("status", [503, 529])
def test_a_503_or_a_529_cuts_the_limit_as_a_429_does(status):
    limit = AdaptiveLimit(512, start=40)

    assert drive(limit, [busy(100, status), busy(30, status)]) == [36, 29]


@pytest.mark.parametrize(
    "error",
    [
        TransientError("HTTP 500: internal error", http_status=500),
        TransientError("stream cut before it ended", http_status=200),
        TransientError("no complete answer within 120 s (--timeout)"),
        PermanentError("HTTP 400: bad request", http_status=400),
    ],
    ids=["500", "cut-stream", "timeout", "400"],
)
def test_a_fault_is_not_congestion_and_leaves_the_limit_alone(error):
    limit = AdaptiveLimit(512, start=40)

    assert drive(limit, [(error, 40)] * 5 + ok(1)) == [40] * 5 + [41]  # still in slow start
    assert limit.cuts == 0


def test_a_refused_connection_while_the_service_answers_cuts_the_limit():
    limit = AdaptiveLimit(512, start=40)
    drive(limit, ok(1))

    assert drive(limit, [refused(41)]) == [36]  # 0.9 x 41


def test_a_refused_connection_before_any_answer_leaves_the_limit_alone():
    limit = AdaptiveLimit(512, start=40)

    assert drive(limit, [refused(40)] * 3) == [40] * 3
    assert limit.cuts == 0


def test_after_an_outage_the_limit_doubles_per_window_back_to_where_it_was():
    limit = AdaptiveLimit(512, start=8)
    assert drive(limit, ok(2)) == [9, 10]
    # every request in flight refused, then the retries: more refusals in a row than
    # the limit of 10, with nothing answered in between, is an outage
    cut = drive(limit, [*map(refused, range(10, 0, -1)), *[refused(1)] * 20])
    assert cut[-1] == 1

    limits = drive(limit, ok(9 + 10))

    assert limits[:9] == list(range(2, 11))  # slow start, up to the limit before the outage
    assert set(limits[9:]) == {10}  # then one per window


# a refused level, tried again less and less often


def waits_under_the_refused_level(limit: AdaptiveLimit, level: int, refusals: int) -> list[int]:
    """Refuse ``level`` requests ``refusals`` times; each time, count the answers until
    the limit allows ``level`` again."""
    waits = []
    for _ in range(refusals):
        drive(limit, [busy(level)])
        answers = 0
        while limit.current < level and answers < 100 * level * limit.max_hold:
            answers += 1
            limit.succeeded()
        waits.append(answers)
    return waits


def test_each_time_a_level_is_refused_again_the_limit_waits_twice_as_long_under_it():
    waits = waits_under_the_refused_level(AdaptiveLimit(512, start=13), 13, 5)

    # windows of 12 answers: 1 (growth alone takes longer), 2, 4, 8, 16
    assert waits[0] < 2 * 12
    assert waits[1:] == [2 * 12, 4 * 12, 8 * 12, 16 * 12]


def test_the_wait_under_a_refused_level_is_at_most_max_hold_windows():
    waits = waits_under_the_refused_level(AdaptiveLimit(512, start=13, max_hold=4), 13, 5)

    assert waits[2:] == [4 * 12] * 3


def test_once_a_refused_level_is_answered_for_a_window_a_new_level_starts_afresh():
    limit = AdaptiveLimit(512, start=13)
    waits_under_the_refused_level(limit, 13, 3)  # 13 held for 4 windows next time
    drive(limit, ok(3 * 13))  # answered at 13 and above: the service grew
    assert limit.current == 15

    # 16 refused: a new level, waited under for one window only, not 8 (as 13 would
    # be next time): growth alone takes longer
    assert waits_under_the_refused_level(limit, 16, 1)[0] < 2 * 15


# bounds


def test_the_limit_never_goes_below_the_floor():
    limit = AdaptiveLimit(100, floor=3)

    assert drive(limit, [throttled(1)]) == [3]
    assert drive(limit, [*ok(3), throttled(3), throttled(1)] * 5) == [3, 3, 3, 3, 3] * 5


def test_the_default_floor_is_one_request():
    limit = AdaptiveLimit(100, start=1)

    assert drive(limit, [throttled(1)]) == [1]


@pytest.mark.parametrize(
    ("options", "current"),
    [
        ({"ceiling": 2}, 2),
        ({"ceiling": 100, "start": 1, "floor": 3}, 3),
        ({"ceiling": 100, "start": 50}, 50),
    ],
)
def test_the_start_is_kept_between_the_floor_and_the_ceiling(options, current):
    assert AdaptiveLimit(**options).current == current


@pytest.mark.parametrize(
    "options",
    [
        {"ceiling": 0},
        {"ceiling": 4, "floor": 5},
        {"ceiling": 4, "floor": 0},
        {"ceiling": 4, "decrease": 0.0},
        {"ceiling": 4, "decrease": 1.0},
        {"ceiling": 4, "decrease": 1.5},
        {"ceiling": 4, "max_hold": 0},
    ],
)
def test_bounds_that_make_no_sense_are_refused_as_usage_errors(options):
    with pytest.raises(UsageError):
        AdaptiveLimit(**options)


def test_the_repr_shows_the_limit_the_ceiling_and_the_cuts():
    assert repr(first_cut()) == "AdaptiveLimit(current=36, ceiling=512, cuts=1)"


# a whole scripted run


def test_a_scripted_run_of_slow_start_a_burst_of_429s_and_recovery():
    limit = AdaptiveLimit(40, start=4)
    outcomes = [
        *ok(17),  # slow start: 4 -> 21
        throttled(21),  # the first 429: cut by the decrease factor, to 18
        throttled(21),  # the same burst: nothing new
        throttled(20),
        throttled(18),  # 18 in flight were too many too: 17
        *ok(17),  # additive: + 1/limit each, not yet 18
        throttled(30),  # a window since the cut: cut again, 0.9 x 17.9...
        *ok(1),
    ]

    limits = drive(limit, outcomes)

    assert limits == [*range(5, 22), 18, 18, 18, 17, *[17] * 17, 16, 16]
    assert limit.cuts == 2
    assert not limit.slow_start


# against a simulated service with a fixed number of slots


def simulate(capacity: int, rounds: int = 300) -> list[tuple[int, int]]:
    """Each round sends ``current`` requests at once; those beyond ``capacity`` get 429s.

    The 429s come back first (they are answered at once), then the answers. Returns
    ``(limit, refused)`` per round.
    """
    limit = AdaptiveLimit(512)
    history = []
    for _ in range(rounds):
        sent = limit.current
        refused = max(0, sent - capacity)
        drive(limit, [throttled(sent)] * refused + ok(sent - refused))
        history.append((sent, refused))
    return history


def assert_settles_just_under(capacity: int, history: list[tuple[int, int]]) -> None:
    settled = history[-100:]
    limits = [sent for sent, _ in settled]
    refused = sum(r for _, r in settled) / sum(limits)
    assert 0.8 * capacity <= min(limits)
    assert max(limits) <= capacity + 1
    assert refused <= 0.2


@pytest.mark.parametrize("capacity", [4, 8, 16, 32, 100])
def test_against_a_service_with_a_fixed_number_of_slots_the_limit_settles_just_under_them(
    capacity,
):
    assert_settles_just_under(capacity, simulate(capacity))


@pytest.mark.parametrize("capacity", [4, 12, 100])
def test_against_a_fixed_capacity_the_level_above_it_is_tried_less_and_less_often(capacity):
    history = simulate(capacity)

    assert sum(refused for _, refused in history[-200:]) <= 4  # one a window would be 200


# the end of a job


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def held_under_13(limit: AdaptiveLimit, clock: Clock) -> list[int]:
    """13 refused (Retry-After: 1 s), then answers at 240 a second; the limits after each."""
    drive(limit, [busy(13, 429)])
    limit.congested(13, retry_after=1.0)
    limits = []
    for _ in range(400):
        clock.now += 1 / 240
        limits.append(limit.succeeded())
    return limits


def test_a_refused_level_is_tried_again_in_the_middle_of_a_job():
    clock = Clock()
    limit = AdaptiveLimit(512, start=13, clock=clock)
    limit.expect(10_000)

    assert max(held_under_13(limit, clock)) >= 13


def test_near_the_end_of_a_job_a_refused_level_is_not_tried_again():
    clock = Clock()
    limit = AdaptiveLimit(512, start=13, clock=clock)
    # 400 rows left at 240 a second: answered within two waits of Retry-After (2 s)
    limit.expect(401)

    assert max(held_under_13(limit, clock)) == 12


def simulate_job(capacity: int, rows: int, rtt: float = 0.05) -> list[tuple[int, int, int]]:
    """A job of ``rows`` against ``capacity`` slots, Retry-After: 1 s, a round per ``rtt``.

    The refusals come back first, each while one fewer is in flight; then the answers.
    Returns ``(rows left, sent, refused)`` per round; a refused row goes back in the queue.
    """
    clock = Clock()
    limit = AdaptiveLimit(512, clock=clock)
    limit.expect(rows)
    history = []
    left = rows
    while left and len(history) < 10_000:
        sent = min(limit.current, left)
        refused = max(0, sent - capacity)
        for inflight in range(sent, sent - refused, -1):
            limit.congested(inflight, retry_after=1.0)
        for _ in range(sent - refused):
            clock.now += rtt / (sent - refused)
            limit.succeeded()
        history.append((left, sent, refused))
        left -= sent - refused
    return history


@pytest.mark.parametrize("rows", [3_000, 16_000])
def test_a_job_against_a_fixed_capacity_is_not_refused_in_its_last_two_seconds(rows):
    history = simulate_job(40, rows)

    last_two_seconds = history[-int(2 / 0.05) :]
    assert sum(refused for _, _, refused in last_two_seconds) == 0


# the engine against the emulator: the server, each status


ROWS = 600
SERVER_LIMIT = 12


@pytest.mark.parametrize(
    ("protocol", "status"),
    [
        ("aichatonline", 503),
        ("aichatonline", 529),
        ("aichatonline", 429),
        ("openai", 503),
        ("anthropic", 529),
    ],
)
async def test_auto_against_a_server_refusing_above_12_in_flight_settles_under_12(
    tmp_path: Path, protocol: str, status: int
):
    source = tmp_path / "in.csv"
    source.write_text("prompt\n" + "".join(f"question {i}\n" for i in range(ROWS)))
    faults = Faults(max_inflight=SERVER_LIMIT, overload_status=status, retry_after=0.01)
    emulator = Emulator(latency=0.02, faults=faults, protocol=protocol)
    async with emulator as base_url:
        summary = await arun_file(
            source,
            tmp_path / "out.parquet",
            provider=protocol,
            emulate=False,
            concurrency=512,
            adaptive=True,
            base_url=base_url,
            retry=RetryPolicy(attempts=20, wait_initial=0.01, wait_max=0.05, wait_jitter=0.01),
        )

    assert summary.ok == ROWS
    # settled just under the server's limit, with few requests refused: a fixed -c 512,
    # or an -c auto deaf to the status, sends about two requests a row here
    assert 0.8 * SERVER_LIMIT <= summary.concurrency <= SERVER_LIMIT + 1
    assert summary.requests <= 1.1 * ROWS
