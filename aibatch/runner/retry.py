"""call_with_retries: exponential backoff with jitter that honours ``Retry-After``.

Only :class:`TransientError` and :class:`InvalidOutput` (an answer that does not fit
the job's schema: the next may) are retried; the decision reads the class, never the
message. The sleep is injectable, so tests do not wait.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from ..errors import InvalidOutput, Overloaded, ProviderError, TokenRejected, TransientError
from ..jobs.spec import RetryPolicy

log = logging.getLogger(__name__)

__all__ = ["Attempted", "call_with_retries", "wait_before_retry"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """The outcome of a call made up to ``policy.attempts`` times."""

    value: T | None
    error: ProviderError | None
    attempts: int


def wait_before_retry(
    policy: RetryPolicy, retry: int, error: ProviderError, rand: Callable[[], float]
) -> float:
    """Seconds to wait before retry number ``retry`` after ``error``.

    The backoff, or what a 429's or 503's ``Retry-After`` asks if that is longer, plus up to
    ``wait_jitter`` random seconds: rows limited together then do not all come back
    at the same instant and get limited together again.
    """
    if isinstance(error, TokenRejected):
        return 0.0  # the provider already fetched a fresh token
    wait = policy.backoff(retry)
    if isinstance(error, Overloaded) and error.retry_after is not None:
        wait = max(wait, error.retry_after)
    return wait + policy.wait_jitter * rand()


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    rand: Callable[[], float] = random.random,
) -> Attempted[T]:
    """Call ``fn`` until it succeeds, fails permanently, or the attempts run out.

    Returns:
        The value, or the last error, with the number of attempts made. Errors that are
        not :class:`ProviderError` propagate: they are bugs or cancellations.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return Attempted(await fn(), None, attempt)
        except (TransientError, InvalidOutput) as exc:
            if attempt == policy.attempts:
                return Attempted(None, exc, attempt)
            wait = wait_before_retry(policy, attempt, exc, rand)
            log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, exc, wait)
            await sleep(wait)
        except ProviderError as exc:
            return Attempted(None, exc, attempt)
    raise AssertionError("unreachable")  # pragma: no cover
