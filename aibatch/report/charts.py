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
    axes.set_xlabel("latency, ms (log scale)")
    axes.set_ylabel("rows")
    for q, style in ((50, "-"), (99, "--")):
        value = inspection.latency.percentile(q)
        if value is not None:
            axes.axvline(value, color="#222", linestyle=style, linewidth=1, label=f"p{q}")
    axes.legend(frameon=False)


def _timeline(inspection: Inspection, bins: int = 60) -> tuple[Any, dict[str, Any], float]:
    """The timeline in at most ``bins`` bins: seconds from its start, counts, bin width."""
    starts, counts = inspection.timeline.counts()
    factor = max(1, -(-len(starts) // bins))
    width = inspection.timeline.width * factor
    pad = -len(starts) % factor
    coarse = {
        name: np.append(values, np.zeros(pad, np.int64)).reshape(-1, factor).sum(axis=1)
        for name, values in counts.items()
    }
    seconds = np.arange(len(starts) // factor + (pad > 0)) * width
    return seconds, coarse, width


def _throughput(axes: Any, inspection: Inspection) -> None:
    seconds, counts, width = _timeline(inspection)
    if not len(seconds):
        _empty(axes, "no finished rows")
        return
    edges = np.append(seconds, seconds[-1] + width)
    ok, error = counts["ok"] / width, counts["error"] / width
    axes.stairs(ok + error, edges, fill=True, color=ERROR, label="error")
    axes.stairs(ok, edges, fill=True, color=OK, label="ok")
    axes.set_xlabel("seconds since the first row finished")
    axes.set_ylabel("rows finished per second")
    axes.legend(frameon=False, loc="upper right")


def _attempts(axes: Any, inspection: Inspection) -> None:
    by_status = inspection.attempts_by_status
    values = sorted(set(by_status["ok"]) | set(by_status["error"]))
    if not values:
        _empty(axes, "no row was sent")
        return
    ok = np.array([by_status["ok"].get(v, 0) for v in values])
    error = np.array([by_status["error"].get(v, 0) for v in values])
    axes.bar(values, ok, color=OK, label="ok")
    axes.bar(values, error, bottom=ok, color=ERROR, label="error")
    axes.set_xticks(values)
    axes.yaxis.set_major_locator(_whole())
    axes.set_xlabel("requests made for the row")
    axes.set_ylabel("rows")
    axes.legend(frameon=False)


def _errors(axes: Any, inspection: Inspection) -> None:
    seconds, counts, width = _timeline(inspection)
    if not len(seconds) or not counts["error"].any():
        _empty(axes, "no failed rows")
        return
    axes.stairs(counts["error"], np.append(seconds, seconds[-1] + width), fill=True, color=ERROR)
    axes.yaxis.set_major_locator(_whole())
    axes.set_xlabel("seconds since the first row finished")
    axes.set_ylabel(f"failed rows per {_duration(width)}")


def _whole() -> Any:
    """Ticks at whole numbers only: an axis of row counts."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


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
