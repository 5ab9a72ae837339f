"""Bounded summaries of a column read in batches: percentiles and counts over time.

Both keep a fixed amount of memory whatever the number of rows, so an output of ten
million rows is inspected in the memory of one of ten thousand.

:class:`LogHistogram` keeps the values themselves while they are few (percentiles are
then exact, by nearest rank as in :func:`aibatch.runner.summary.percentile`), then
counts them in fixed logarithmic bins 1% wide: a percentile is then within 0.5% of the
true value, and the maximum stays exact.

:class:`TimeHistogram` counts events per time bin, for several series at once, in a
fixed number of bins whose width doubles whenever an event falls outside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..runner.summary import percentile

__all__ = ["LogHistogram", "TimeHistogram"]

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int64]

EXACT_LIMIT = 4096  # values kept as they are: below this, percentiles are exact
_GROWTH = 1.01  # each bin is 1% wider than the one before it
_LOW = 1e-3  # values at or below this share the first bin
_BINS = math.ceil(math.log(1e9 / _LOW) / math.log(_GROWTH)) + 1  # up to 1e9: ~2,800 bins


class LogHistogram:
    """Percentiles of positive values (milliseconds) added in batches, in bounded memory."""

    def __init__(self) -> None:
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self._exact: list[Floats] | None = []
        self._bins: Counts | None = None

    def add(self, values: Floats) -> None:
        """Count ``values`` (NaNs are left out)."""
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        self.count += int(values.size)
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        if self._exact is not None:
            self._exact.append(values)
            if self.count <= EXACT_LIMIT:
                return
            values = np.concatenate(self._exact)
            self._exact = None
            self._bins = np.zeros(_BINS, np.int64)
        assert self._bins is not None
        self._bins += np.bincount(_bin_of(values), minlength=_BINS)

    @property
    def exact(self) -> bool:
        """Whether the values are still kept as they are (percentiles are exact)."""
        return self._exact is not None

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100), nearest rank; ``None`` with no values."""
        if self.count == 0:
            return None
        if q >= 100:
            return self.max
        if self._exact is not None:
            return percentile(np.sort(np.concatenate(self._exact)).tolist(), q)
        assert self._bins is not None
        rank = max(0, min(self.count - 1, round(q / 100.0 * (self.count - 1))))
        index = int(np.searchsorted(np.cumsum(self._bins), rank + 1))
        return min(self.max, max(self.min, _middle(index)))

    def histogram(self, bins: int = 40) -> tuple[Floats, Counts]:
        """Counts in ``bins`` logarithmic bins from the least value to the greatest.

        Returns:
            The ``bins + 1`` edges and the ``bins`` counts (both empty with no values).
        """
        if self.count == 0:
            return np.zeros(0), np.zeros(0, np.int64)
        low, high = max(self.min, _LOW), max(self.max, _LOW)
        if high <= low * 1.0001:
            low, high = low / 1.5, high * 1.5
        edges = np.geomspace(low, high, bins + 1)
        if self._exact is not None:
            values, weights = np.concatenate(self._exact), None
        else:
            assert self._bins is not None
            used = np.flatnonzero(self._bins)
            values = np.clip([_middle(int(i)) for i in used], self.min, self.max)
            weights = self._bins[used]
        counts, _ = np.histogram(np.clip(values, low, high), bins=edges, weights=weights)
        return edges, counts.astype(np.int64)


def _bin_of(values: Floats) -> npt.NDArray[np.intp]:
    scaled = np.log(np.maximum(values, _LOW) / _LOW) / math.log(_GROWTH)
    return np.minimum(np.ceil(scaled).astype(np.intp), _BINS - 1)


def _middle(index: int) -> float:
    """The geometric middle of bin ``index``: within half a bin of any value in it."""
    if index == 0:
        return _LOW
    return float(_LOW * _GROWTH ** (index - 0.5))


class TimeHistogram:
    """Events per time bin, for several series, in a fixed number of bins.

    Args:
        series: the series' names; :meth:`add` counts into one of them.
        bins: how many bins; their width doubles as the events spread.
    """

    def __init__(self, series: Sequence[str], bins: int = 256) -> None:
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number of at least 2")
        self.series = tuple(series)
        self.bins = bins
        self.origin: float | None = None  # seconds since the epoch where bin 0 starts
        self.width = 0.0
        self._counts = np.zeros((len(self.series), bins), np.int64)

    def add(self, seconds: Floats, series: str) -> None:
        """Count events at ``seconds`` (since the epoch; NaNs are left out) in ``series``."""
        seconds = seconds[~np.isnan(seconds)]
        if seconds.size == 0:
            return
        low, high = float(seconds.min()), float(seconds.max())
        if self.origin is None:
            self.origin = low
            self.width = max((high - low) / (self.bins - 1), 1e-3)
        while low < self.origin:
            self._double(left=True)
        while high >= self.origin + self.width * self.bins:
            self._double(left=False)
        index = np.minimum(((seconds - self.origin) // self.width).astype(np.intp), self.bins - 1)
        self._counts[self.series.index(series)] += np.bincount(index, minlength=self.bins)

    def _double(self, *, left: bool) -> None:
        """Twice as wide bins; growing left, the old range becomes the right half."""
        assert self.origin is not None
        half = self.bins // 2
        merged = self._counts.reshape(len(self.series), half, 2).sum(axis=2)
        self._counts[:] = 0
        if left:
            self._counts[:, half:] = merged
            self.origin -= self.width * self.bins
        else:
            self._counts[:, :half] = merged
        self.width *= 2

    def counts(self) -> tuple[Floats, dict[str, Counts]]:
        """Bin starts (seconds since the epoch) and counts per series, empty ends cut.

        Both are empty when nothing was counted.
        """
        used = np.flatnonzero(self._counts.sum(axis=0))
        if self.origin is None or used.size == 0:
            return np.zeros(0), {name: np.zeros(0, np.int64) for name in self.series}
        span = slice(int(used[0]), int(used[-1]) + 1)
        starts = self.origin + self.width * np.arange(self.bins, dtype=np.float64)[span]
        return starts, {name: self._counts[i, span] for i, name in enumerate(self.series)}
