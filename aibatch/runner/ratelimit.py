"""RateLimiter: spaces request starts to at most ``rps`` per second."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ..errors import UsageError

__all__ = ["RateLimiter"]


class RateLimiter:
    """Hands out start times ``1/rps`` apart; a caller sleeps until its own slot.

    Args:
        rps: request starts per second.
        clock: monotonic clock, injectable for tests.
        sleep: sleep function, injectable for tests.

    Raises:
        UsageError: ``rps`` is not positive.
    """

    def __init__(
        self,
        rps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rps <= 0:
            raise UsageError("rps must be positive")
        self.interval = 1.0 / rps
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def wait(self) -> None:
        """Return at this caller's start time."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await self._sleep(start - now)
