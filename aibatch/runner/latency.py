"""Latencies of a run, for its percentiles, in bounded memory.

Every latency is kept while there are at most :data:`EXACT_LIMIT` of them, so the
percentiles of all but the largest runs are exact (nearest rank, as
:func:`~aibatch.runner.summary.percentile`). Past that they are counted in fixed bins
1% wide on a log scale: a percentile is then within 0.5% of the true value, and a
run of ten million rows keeps some 20 kB instead of 80 MB.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from .summary import percentile

__all__ = ["EXACT_LIMIT", "Latencies"]

EXACT_LIMIT = 65_536
_GROWTH = 1.01  # each bin is 1% wider than the one before it
_LOW = 1e-3  # milliseconds at or below this share the first bin
_BINS = math.ceil(math.log(1e9 / _LOW) / math.log(_GROWTH)) + 1  # up to 1e9 ms


class Latencies:
    """Milliseconds added one at a time; percentiles at the end."""

    def __init__(self) -> None:
        self._recent: array[float] = array("d")  # all of them, until binned
        self._bins: np.ndarray | None = None
        self._count = 0
        self._min = math.inf
        self._max = -math.inf

    def __len__(self) -> int:
        return self._count + len(self._recent)

    def append(self, ms: float) -> None:
        """Add one latency."""
        recent = self._recent
        recent.append(ms)
        if len(recent) >= EXACT_LIMIT:
            self._bin()

    def _bin(self) -> None:
        values = np.frombuffer(self._recent, np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            self._min = min(self._min, float(values.min()))
            self._max = max(self._max, float(values.max()))
            index = np.log(np.maximum(values, _LOW) / _LOW) / math.log(_GROWTH)
            counts = np.bincount(np.minimum(index.astype(np.int64), _BINS - 1), minlength=_BINS)
            self._bins = counts if self._bins is None else self._bins + counts
            self._count += len(values)
        self._recent = array("d")

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100); ``None`` with no latencies."""
        if self._bins is None:
            return percentile(sorted(v for v in self._recent if v == v), q)
        if self._recent:
            self._bin()
        if q >= 100:
            return self._max
        rank = max(0, min(self._count - 1, round(q / 100.0 * (self._count - 1))))
        index = int(np.searchsorted(np.cumsum(self._bins), rank + 1))
        middle = float(_LOW * _GROWTH ** (index + 0.5))
        return min(self._max, max(self._min, middle))
