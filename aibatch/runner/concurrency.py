"""AdaptiveLimit: how many requests to keep in flight when nobody says the limit.

Additive increase, multiplicative decrease, as TCP does: start low and double the
limit every "window" of clean answers (slow start) until the first 429, then grow by
one per window; on a 429, cut to ``decrease`` times the requests that were in flight
(not the nominal limit, which may be far above what was really sent). One cut per
window: the requests already in flight were sent under the old limit, and their 429s
say nothing new. The result settles just under the service's limit, with few 429s.
"""

from __future__ import annotations

__all__ = ["AdaptiveLimit"]


class AdaptiveLimit:
    """The limit on requests in flight, adapted to rate limiting.

    Args:
        ceiling: never above this (``-c`` with ``--adaptive``).
        start: the limit to begin with.
        floor: never below this.
        decrease: the factor of a cut.
    """

    def __init__(
        self, ceiling: int, *, start: int = 4, floor: int = 1, decrease: float = 0.9
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        if not 0 < decrease < 1:
            raise ValueError("decrease must lie between 0 and 1")
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
        if self.cuts and self._since_cut < self.current:
            return self.current  # this window was already cut for
        self.limit = max(float(self.floor), min(self.limit, float(inflight)) * self.decrease)
        self.cuts += 1
        self._since_cut = 0
        return self.current
