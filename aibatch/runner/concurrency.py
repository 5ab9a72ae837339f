"""AdaptiveLimit: how many requests to keep in flight when nobody says the limit.

Additive increase, multiplicative decrease, as TCP does: start low and double the
limit every "window" of clean answers (slow start) until the first sign of congestion,
then grow by one per window.

Congestion is read from the class of the error (:meth:`AdaptiveLimit.failed`): every
"too busy" answer, :class:`~aibatch.errors.Overloaded` (429, 503, 529), and a
:class:`~aibatch.errors.ConnectionRefused` (refused, or reset before any answer) while
the service is up. Any other error (a 500, a cut stream, a timeout) is a fault, not
congestion: the limit stays where it is.

Congestion while ``n`` were in flight says precisely that ``n`` was too many, so every
signal brings the limit down to ``n - 1`` at once: a refusal comes back fast, and a slot
above the service's capacity would otherwise spin out refusal after refusal. Once per
window the limit is also cut to ``decrease`` times what was in flight (not the nominal
limit, which may be far above what was really sent), to leave headroom.

A refused level is not tried again at once: the limit waits just under it for a window,
then twice as long each time the same level is refused again (up to ``max_hold``
windows). A service with a fixed capacity then refuses a request now and then, not one
per window; once the level is answered for a whole window, the service has grown and
the limit grows freely again. The result settles just under the service's limit, with
few refusals.

Up or down: the service is up once it has answered anything (any HTTP status). A run of
refused connections, with no answer in between, longer than the limit was when the run
began cannot be congestion (nothing is being served at all): it is an outage. Its
refusals stop lowering the limit, and once answers come back the limit doubles per
window (slow start) up to where it stood before the outage.

The end of a job: a refused request waits out the refusal's ``Retry-After`` before it is
sent again, so a refusal in the job's last seconds holds the whole job back by that
long, for one row. Told how many rows the job sends (:meth:`AdaptiveLimit.expect`), the
limit does not try a refused level again once the rows left would all be answered, at
the rate of the last window, within twice that wait: a higher level could no longer pay
for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import ConnectionRefused, Overloaded, ProviderError, UsageError

log = logging.getLogger(__name__)

__all__ = ["AdaptiveLimit"]

_JUST_UNDER = 1e-6  # a limit this far under a level allows one request fewer
START = 16  # requests in flight before anything is known


class AdaptiveLimit:
    """The limit on requests in flight, adapted to congestion.

    Args:
        ceiling: never above this (``-c`` with ``--adaptive``).
        start: the limit to begin with.
        floor: never below this.
        decrease: the factor of a cut.
        max_hold: the longest wait, in windows, under a level refused again and again.
        clock: seconds, for the rate of answers (tests pass a fake one).

    Raises:
        UsageError: bounds out of order, ``decrease`` not between 0 and 1, or
            ``max_hold`` below 1.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        start: int = START,
        floor: int = 1,
        decrease: float = 0.9,
        max_hold: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise UsageError("need 1 <= floor <= ceiling")
        if not 0 < decrease < 1:
            raise UsageError("decrease must lie between 0 and 1")
        if max_hold < 1:
            raise UsageError("max_hold must be at least 1 window")
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.max_hold = max_hold
        self.limit = float(max(floor, min(start, ceiling)))
        self.slow_start = True
        self.cuts = 0
        self._since_cut = 0
        self._threshold = float(ceiling)  # slow start ends here
        self._refused_level: int | None = None  # the fewest in flight refused lately
        self._hold = 1  # windows to wait under that level before trying it again
        self._calm = 0  # answers since the last congestion
        self._answered = False  # the service has answered something: it is there
        self._refusals = 0  # connections refused since the last answer
        self._before_refusals = 0.0  # the limit when those refusals began
        self._outage = False
        self._clock = clock
        self._rows_left: int | None = None  # rows still to be answered, when told (expect)
        self._wait: float | None = None  # the last refusal's Retry-After, seconds
        self._rate: float | None = None  # answers per second over the last window
        self._window_began = clock()
        self._window_answers = 0

    def __repr__(self) -> str:
        return f"AdaptiveLimit(current={self.current}, ceiling={self.ceiling}, cuts={self.cuts})"

    @property
    def current(self) -> int:
        """The limit now, a whole number of requests."""
        return max(self.floor, min(self.ceiling, int(self.limit)))

    def expect(self, rows: int) -> None:
        """The job will send ``rows`` rows: near its end, refused levels are not tried again."""
        self._rows_left = rows

    def succeeded(self) -> int:
        """A request was answered; return the new limit."""
        self._heard()
        self._since_cut += 1
        self._calm += 1
        self._count_answer()
        limit = self.limit + (1.0 if self.slow_start else 1.0 / self.limit)
        level = self._refused_level
        if level is not None:
            if self._holding(level) or self._ending():  # wait just under the refused level
                limit = min(limit, max(self.limit, level - _JUST_UNDER))
            elif limit >= level + 1:  # answered at that level for a window: the service grew
                self._refused_level, self._hold = None, 1
        if self.slow_start and limit >= self._threshold:
            self.slow_start = False
        self.limit = min(limit, float(self.ceiling))
        return self.current

    def failed(self, error: ProviderError, inflight: int) -> int:
        """A request failed with ``error`` while ``inflight`` were in flight; return the limit.

        :class:`Overloaded` is congestion; :class:`ConnectionRefused` is congestion
        while the service is up; any other error leaves the limit alone.
        """
        if isinstance(error, Overloaded):
            self._heard()
            return self.congested(inflight, error.retry_after)
        if isinstance(error, ConnectionRefused):
            return self.refused(inflight)
        if error.http_status is not None:
            self._heard()  # a 500 is a fault, but it says the service is up
        return self.current

    def congested(self, inflight: int, retry_after: float | None = None) -> int:
        """The service was too busy for ``inflight`` requests at once; return the limit.

        ``retry_after`` is how long it asked the refused request to wait, if it said.
        """
        if retry_after is not None:
            self._wait = retry_after
        self.slow_start = False
        level = self._refused_level
        if level is None or inflight < level:
            self._refused_level, self._hold = inflight, 1
        elif not self._holding(level):  # it tried that level again: refused again
            self._hold = min(2 * self._hold, self.max_hold)
        self._calm = 0
        limit = min(self.limit, float(inflight - 1))
        if not self.cuts or self._since_cut >= self.current:  # once per window
            limit = min(limit, min(self.limit, float(inflight)) * self.decrease)
            self.cuts += 1
            self._since_cut = 0
        self.limit = max(float(self.floor), limit)
        return self.current

    def refused(self, inflight: int) -> int:
        """A connection was refused, or reset before any answer; return the limit.

        Congestion while the service is up; nothing while it has never answered, nor
        once so many connections in a row were refused that it must be down.
        """
        if not self._answered:
            return self.current
        if not self._refusals:
            self._before_refusals = self.limit
        self._refusals += 1
        if self._refusals <= self._before_refusals:
            return self.congested(inflight)
        if not self._outage:
            self._outage = True
            log.warning(
                "%d connections in a row refused and nothing answered: the service looks"
                " down; the limit goes back up to %d once it answers again",
                self._refusals,
                int(self._before_refusals),
            )
            self.slow_start = True
            self._threshold = self._before_refusals
            self._refused_level, self._hold = None, 1
        return self.current

    def _count_answer(self) -> None:
        """Count an answer: the rows left, and the rate once per window."""
        if self._rows_left is not None:
            self._rows_left = max(0, self._rows_left - 1)
        self._window_answers += 1
        if self._window_answers >= self.current:
            now = self._clock()
            elapsed = now - self._window_began
            if elapsed > 0:
                self._rate = self._window_answers / elapsed
            self._window_began, self._window_answers = now, 0

    def _ending(self) -> bool:
        """Whether the rows left would all be answered before a refusal's wait ran out twice."""
        rows, rate, wait = self._rows_left, self._rate, self._wait
        if rows is None or rate is None or wait is None:
            return False
        return rows < 2 * wait * rate

    def _holding(self, level: int) -> bool:
        """Whether the limit still waits under the refused ``level`` (windows of ``level - 1``)."""
        return self._calm < self._hold * max(level - 1, 1)

    def _heard(self) -> None:
        """The service answered (anything): it is up."""
        self._answered = True
        self._refusals = 0
        self._outage = False
