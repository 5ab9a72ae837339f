"""The report's charts, drawn by matplotlib as SVG to inline in the page.

matplotlib is the optional extra ``aibatch[report]``: this module imports it, and only
the report imports this module. Text is drawn as paths (``svg.fonttype: path``), so a
chart needs no font, and nothing in a chart comes from the output's text: labels are
numbers and our own words, never an error message or an answer.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from ..errors import UsageError
from .inspect import Inspection

__all__ = ["charts"]

INSTALL = "pip install 'aibatch[report]'"
OK, ERROR, ACCENT = "#2f7d4f", "#c0392b", "#33658a"
_STYLE = {
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "axes.axisbelow": True,
    "figure.dpi": 100,
}


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as exc:
        raise UsageError(f"the report draws its charts with matplotlib: {INSTALL}") from exc
    return matplotlib


def charts(inspection: Inspection) -> dict[str, str]:
    """Each chart's title and its ``<svg>`` element, in the order the page shows them.

    Raises:
        UsageError: matplotlib is not installed (the message says how to install it).
    """
    mpl = _matplotlib()
    drawn: dict[str, str] = {}
    with mpl.rc_context(_STYLE):
        for number, (title, draw) in enumerate(_CHARTS):
            # Ids of clip paths and markers differ between charts sharing one page.
            with mpl.rc_context({"svg.hashsalt": f"aibatch-chart-{number}"}):
                figure = mpl.figure.Figure(figsize=(5.6, 2.9), layout="constrained")
                draw(figure.add_subplot(), inspection)
                drawn[title] = _svg(figure)
    return drawn


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    # In HTML an <svg> stands alone: no XML declaration, doctype or metadata block.
    text = text[text.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


def _empty(axes: Any, why: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, why, ha="center", va="center", color="#777", transform=axes.transAxes)


def _latency(axes: Any, inspection: Inspection) -> None:
    edges, counts = inspection.latency.histogram(40)
    if not len(counts):
        _empty(axes, "no row was sent")
        return
    axes.stairs(counts, edges, fill=True, color=ACCENT, alpha=0.85)
    axes.set_xscale("log")
    _plain_log_ticks(axes, edges[0], edges[-1])
    _counts(axes)
    axes.set_xlabel("latency, ms (log scale)")
    axes.set_ylabel("rows")
    for q, style in ((50, "-"), (99, "--")):
        value = inspection.latency.percentile(q)
        if value is not None:
            axes.axvline(value, color="#222", linestyle=style, linewidth=1, label=f"p{q}")
    _legend(axes)


def _timeline(inspection: Inspection, bins: int = 60) -> tuple[Any, dict[str, Any], float]:
    """The timeline in at most ``bins`` bins: edges (seconds), counts per series, width.

    The last bin ends when the last row finished: it may be narrower than the others.
    """
    starts, counts = inspection.timeline.counts()
    factor = max(1, -(-len(starts) // bins))
    width = inspection.timeline.width * factor
    pad = -len(starts) % factor
    coarse = {
        name: np.append(values, np.zeros(pad, np.int64)).reshape(-1, factor).sum(axis=1)
        for name, values in counts.items()
    }
    edges = np.arange(len(starts) // factor + (pad > 0) + 1) * width
    if len(starts) and inspection.last_finished is not None:
        end = inspection.last_finished.timestamp() - starts[0]
        edges[-1] = min(edges[-1], max(end, edges[-2] + width / 100))
    return edges, coarse, width


def _throughput(axes: Any, inspection: Inspection) -> None:
    edges, counts, _ = _timeline(inspection)
    if len(edges) < 2:
        _empty(axes, "no finished rows")
        return
    ok, error = counts["ok"] / np.diff(edges), counts["error"] / np.diff(edges)
    error_area = axes.stairs(ok + error, edges, fill=True, color=ERROR, label="error")
    ok_area = axes.stairs(ok, edges, fill=True, color=OK, label="ok")
    _counts(axes)
    axes.set_xlabel("seconds since the first row finished")
    axes.set_ylabel("rows finished per second")
    _legend(axes, [ok_area, error_area])


def _attempts(axes: Any, inspection: Inspection) -> None:
    by_status = inspection.attempts_by_status
    values = sorted(set(by_status["ok"]) | set(by_status["error"]))
    if not values:
        _empty(axes, "no row was sent")
        return
    ok = np.array([by_status["ok"].get(v, 0) for v in values])
    error = np.array([by_status["error"].get(v, 0) for v in values])
    axes.bar(values, ok, width=0.6, color=OK, label="ok")
    axes.bar(values, error, width=0.6, bottom=ok, color=ERROR, label="error")
    axes.set_xticks(values)
    axes.set_xlim(values[0] - 1, values[-1] + 1)
    _counts(axes)
    axes.set_xlabel("requests made for the row")
    axes.set_ylabel("rows")
    _legend(axes)


def _errors(axes: Any, inspection: Inspection) -> None:
    edges, counts, width = _timeline(inspection)
    if len(edges) < 2 or not counts["error"].any():
        _empty(axes, "no failed rows")
        return
    axes.stairs(counts["error"], edges, fill=True, color=ERROR)
    _counts(axes)
    axes.set_xlabel("seconds since the first row finished")
    axes.set_ylabel(f"failed rows per {_duration(width)}")


def _counts(axes: Any) -> None:
    """The y axis counts rows: whole numbers, thousands separated."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _plain_log_ticks(axes: Any, low: float, high: float) -> None:
    """Log-scale ticks as plain numbers (0.1, 2, 30), minor ones too on a short range."""
    from matplotlib.ticker import NullFormatter, StrMethodFormatter

    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    short = high / low < 30
    axes.xaxis.set_minor_formatter(StrMethodFormatter("{x:g}") if short else NullFormatter())


def _legend(axes: Any, handles: list[Any] | None = None) -> None:
    """A legend above the plot, clear of the data."""
    where = {"loc": "lower right", "bbox_to_anchor": (1.0, 1.0), "ncols": 2, "frameon": False}
    if handles is None:
        axes.legend(**where)
    else:
        axes.legend(handles=handles, **where)


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1000:.3g} ms"


_CHARTS = (
    ("Latency of the rows sent", _latency),
    ("Throughput", _throughput),
    ("Attempts per row", _attempts),
    ("Errors over time", _errors),
)
