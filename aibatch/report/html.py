"""``aibatch report``: one self-contained HTML page about an output.

The page holds everything it shows: its style, and the charts as inline SVG
(:mod:`.charts`). It loads nothing, runs no script, and says so to the browser in a
Content-Security-Policy, so it opens offline and stays inert even if a text got through
unescaped. Every text taken from the output (paths, options, errors, prompts) is
HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import OutputError
from ..files import atomic_write
from .charts import charts
from .inspect import ErrorGroup, Inspection, Percentiles, inspect_output
from .text import job_options, seconds

__all__ = ["report_html", "write_report"]

POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1160px;
       padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.muted { color: #666; } .path { font-family: ui-monospace, monospace; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .n { font-size: 22px; font-weight: 600; } .card .k { color: #666; font-size: 12px; }
.ok .n { color: #2f7d4f; } .error .n { color: #c0392b; } .card.none .n { color: #222; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid #eee; border-radius: 6px; padding: 6px; }
figcaption { font-weight: 600; margin: 2px 4px 4px; }
figure svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.text { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap;
        word-break: break-word; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _text(value: str | None) -> str:
    """Untrusted text, escaped; its control characters shown escaped as in Python."""
    shown = "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in value or "")
    return f'<span class="text">{_e(shown)}</span>'


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], numeric: set[int]) -> str:
    """A table from already escaped cells; columns in ``numeric`` align right."""

    def cells(tag: str, values: Iterable[str]) -> str:
        return "".join(
            f'<{tag} class="{"num" if i in numeric else ""}">{v}</{tag}>'
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>"


def _cards(i: Inspection) -> str:
    cards = [("rows", f"{i.rows:,}", "rows")]
    cards += [(name, f"{n:,}", name) for name, n in i.counts.items()]
    if i.latency_ms is not None:
        cards += [("p50", f"{_number(i.latency_ms.p50)} ms", "latency p50")]
        cards += [("p99", f"{_number(i.latency_ms.p99)} ms", "latency p99")]
    if i.span_s is not None:
        cards.append(("span", seconds(i.span_s), "first sent to last finished"))
    if i.cost_usd is not None:
        cards.append(("cost", f"${i.cost_usd:,.4f}", "cost"))
    return "".join(
        f'<div class="card {_e(kind)}{" none" if value == "0" else ""}" id="count-{_e(kind)}">'
        f'<div class="n">{_e(value)}</div>'
        f'<div class="k">{_e(label)}</div></div>'
        for kind, value, label in cards
    )


def _figures(i: Inspection) -> str:
    def row(name: str, p: Percentiles | None, of: str) -> list[str]:
        if p is None:
            return [_e(name), *([""] * 4), f"0 {_e(of)}"]
        figures = (_number(v) for v in (p.p50, p.p90, p.p99, p.max))
        return [_e(name), *figures, f"{p.count:,} {_e(of)}"]

    table = _table(
        ["ms", "p50", "p90", "p99", "max", "of"],
        [row("latency", i.latency_ms, "rows sent"), row("first chunk", i.ttfb_ms, "answers")],
        {1, 2, 3, 4},
    )
    extra = []
    if i.attempts:
        extra.append("attempts: " + ", ".join(f"{k}: {v:,}" for k, v in i.attempts.items()))
    if i.prompt_tokens is not None or i.completion_tokens is not None:
        extra.append(
            f"tokens: {i.prompt_tokens or 0:,} prompt, {i.completion_tokens or 0:,} completion"
        )
    if i.cost_usd is not None:
        extra.append(f"cost: ${i.cost_usd:,.4f}")
    return table + "".join(f"<p>{_e(line)}</p>" for line in extra)


def _groups(title: str, key: str, groups: Mapping[str, ErrorGroup]) -> str:
    if not groups:
        return ""
    rows = [[_e(k), f"{g.count:,}", _text(g.example)] for k, g in groups.items()]
    return f"<h2>{_e(title)}</h2>" + _table([_e(key), "rows", "example message"], rows, {1})


def _failed(i: Inspection) -> str:
    error = i.counts.get("error", 0)
    if not i.failed_rows:
        return '<section id="failed"><h2>Failed rows</h2><p>No failed rows.</p></section>'
    rows = [
        [
            _e(r.row),
            _e(r.id),
            _e(r.error_type),
            _e(r.http_status),
            _e(r.attempts),
            _text(r.error),
            _text(r.prompt),
        ]
        for r in i.failed_rows
    ]
    head = ["row", "id", "error", "HTTP", "attempts", "message", "prompt sent"]
    shown = f"the first {len(rows):,} of {error:,}" if error > len(rows) else f"all {error:,}"
    table = _table(head, rows, {0, 3, 4})
    return f'<section id="failed"><h2>Failed rows</h2><p class="muted">{shown}</p>{table}</section>'


def report_html(inspection: Inspection) -> str:
    """The report page for ``inspection``, as one HTML document.

    Raises:
        UsageError: matplotlib is not installed (``pip install 'aibatch[report]'``).
    """
    i = inspection
    drawn = charts(i)
    origin = f"written by aibatch {i.version or 'unknown'}"
    if len(i.files) > 1:
        origin += f", in {len(i.files):,} parts"
    if i.first_started is not None and i.last_finished is not None:
        origin += (
            f"; sent {i.first_started:%Y-%m-%d %H:%M:%S} to {i.last_finished:%Y-%m-%d %H:%M:%S} UTC"
        )
    if "reused" in i.recorded:
        origin += f"; {i.recorded.get('reused', 0):,} rows reused from an earlier run"
    options = _table(
        ["option", "value"], ([_e(k), _e(v)] for k, v in job_options(i.options)), set()
    )
    figures = "".join(
        f"<figure><figcaption>{_e(title)}</figcaption>{svg}</figure>"
        for title, svg in drawn.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>aibatch report: {_e(Path(i.path).name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1>aibatch report</h1><p class="path">{_e(i.path)}</p>',
        f'<p class="muted">{_e(origin)}</p>',
        f'<div class="cards">{_cards(i)}</div>',
        f'<div class="charts">{figures}</div>',
        f"<h2>Latency, attempts and tokens</h2>{_figures(i)}",
        _groups("Errors by type", "type", i.errors_by_type),
        _groups("Errors by HTTP status", "HTTP status", i.errors_by_http_status),
        _failed(i),
        f"<h2>Job</h2>{options}",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def write_report(path: str | Path, report: str | Path, *, failed_rows: int = 100) -> Inspection:
    """Inspect the output at ``path`` and write its report page to ``report``.

    Args:
        path: an output file, or a Dask output folder of ``part-*.parquet`` files.
        report: the HTML file to write (atomically).
        failed_rows: how many of the first failed rows the page lists.

    Returns:
        The inspection the page shows.

    Raises:
        InputError: the output is missing or not an aibatch output.
        UsageError: matplotlib is not installed.
        OutputError: the page cannot be written.
    """
    inspection = inspect_output(path, failed_rows=failed_rows)
    page = report_html(inspection)
    try:
        with atomic_write(Path(report)) as handle:
            handle.write(page.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {report}: {exc.strerror or exc}") from exc
    return inspection
