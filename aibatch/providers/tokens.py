"""TokenManager: one token shared by every request, fetched once, refreshed on rejection.

The original AiChatOnline client fetched a token for every prompt. Here a manager hands
the same token to every request; only one fetch per slot is ever in flight (concurrent
callers wait for it); a token is replaced when the server rejects it, and optionally
after a number of uses or an age. A pool of ``pool_size`` slots spreads load over
several tokens, handed out round-robin.

A token's value never appears in a repr, a log line or an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ..errors import UsageError

log = logging.getLogger(__name__)

__all__ = ["Token", "TokenManager"]


@dataclass(frozen=True, slots=True, eq=False)
class Token:
    """A token handed out by a :class:`TokenManager`; its repr hides the value."""

    value: str = field(repr=False)
    slot: int
    generation: int


@dataclass(slots=True)
class _Slot:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    token: Token | None = None
    uses: int = 0
    born: float = 0.0
    generation: int = 0


class TokenManager:
    """Hands out tokens from ``fetch`` with single-flight refresh.

    Args:
        fetch: coroutine function returning a new token value.
        max_uses: replace a token after this many uses (``None``: never).
        max_age: replace a token after this many seconds (``None``: never).
        pool_size: number of tokens to spread requests over.
        clock: monotonic clock, injectable for tests.

    Raises:
        UsageError: a bound out of range.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[str]],
        *,
        max_uses: int | None = None,
        max_age: float | None = None,
        pool_size: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pool_size < 1:
            raise UsageError("token_pool must be at least 1")
        if max_uses is not None and max_uses < 1:
            raise UsageError("token_max_uses must be at least 1")
        if max_age is not None and max_age <= 0:
            raise UsageError("token_max_age must be positive")
        self._fetch = fetch
        self._max_uses = max_uses
        self._max_age = max_age
        self._clock = clock
        self._slots = [_Slot() for _ in range(pool_size)]
        self._next = 0
        self.fetches = 0
        self.rejections = 0

    def __repr__(self) -> str:
        return f"TokenManager(pool_size={len(self._slots)}, fetches={self.fetches})"

    def _usable(self, slot: _Slot) -> bool:
        if slot.token is None:
            return False
        if self._max_uses is not None and slot.uses >= self._max_uses:
            return False
        return self._max_age is None or self._clock() - slot.born < self._max_age

    async def get(self) -> Token:
        """Return a usable token, fetching one if its slot is empty or worn out."""
        index = self._next
        slot = self._slots[index]
        self._next = (index + 1) % len(self._slots)
        if not self._usable(slot):
            async with slot.lock:
                # Whoever held the lock before us may have refreshed it already.
                if not self._usable(slot):
                    value = await self._fetch()
                    self.fetches += 1
                    slot.generation += 1
                    slot.token = Token(value, index, slot.generation)
                    slot.uses = 0
                    slot.born = self._clock()
                    log.debug("fetched token generation %d for slot %d", slot.generation, index)
        slot.uses += 1
        assert slot.token is not None
        return slot.token

    def reject(self, token: Token) -> None:
        """Mark ``token`` as refused by the server, so the next :meth:`get` replaces it.

        Rejections of a token that was already replaced are ignored, so fifty requests
        failing on the same expired token cause one fetch, not fifty.
        """
        slot = self._slots[token.slot]
        if slot.token is not None and slot.generation == token.generation:
            self.rejections += 1
            slot.token = None
