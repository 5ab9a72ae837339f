"""AdaptiveLimit: how many requests to keep in flight when nobody says the limit.

Additive increase, multiplicative decrease, as TCP does: start low and double the
limit every "window" of clean answers (slow start) until the first 429, then grow by
one per window. A 429 says precisely that ``n`` in flight was too many, so every 429
brings the limit down to ``n - 1`` at once: a 429 comes back fast, and a slot above
the service's capacity would otherwise spin out 429 after 429. Once per window the
limit is also cut to ``decrease`` times what was in flight (not the nominal limit,
which may be far above what was really sent), to leave headroom. The result settles
just under the service's limit, with few 429s.
"""

from __future__ import annotations

from ..errors import UsageError

__all__ = ["AdaptiveLimit"]


class AdaptiveLimit:
    """The limit on requests in flight, adapted to rate limiting.

    Args:
        ceiling: never above this (``-c`` with ``--adaptive``).
        start: the limit to begin with.
        floor: never below this.
        decrease: the factor of a cut.

    Raises:
        UsageError: bounds out of order, or ``decrease`` not between 0 and 1.
    """

    def __init__(
        self, ceiling: int, *, start: int = 4, floor: int = 1, decrease: float = 0.9
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise UsageError("need 1 <= floor <= ceiling")
        if not 0 < decrease < 1:
            raise UsageError("decrease must lie between 0 and 1")
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.limit = float(max(floor, min(start, ceiling)))
        self.slow_start = True
        self.cuts = 0
        self._since_cut = 0

    def __repr__(self) -> str:
        return f"AdaptiveLimit(current={self.current}, ceiling={self.ceiling}, cuts={self.cuts})"

    @property
    def current(self) -> int:
        """The limit now, a whole number of requests."""
        return max(self.floor, min(self.ceiling, int(self.limit)))

    def succeeded(self) -> int:
        """A request was answered; return the new limit."""
        self._since_cut += 1
        self.limit += 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(self.limit, float(self.ceiling))
        return self.current

    def rate_limited(self, inflight: int) -> int:
        """A request was answered 429 while ``inflight`` were in flight; return the limit."""
        self.slow_start = False
        limit = min(self.limit, float(inflight - 1))
        if not self.cuts or self._since_cut >= self.current:  # once per window
            limit = min(limit, min(self.limit, float(inflight)) * self.decrease)
            self.cuts += 1
            self._since_cut = 0
        self.limit = max(float(self.floor), limit)
        return self.current
