"""``aibatch inspect``'s text: an :class:`Inspection` as lines for a terminal.

Answers and error messages are untrusted text: control characters (a terminal's escape
sequences among them) are shown escaped, and long texts are cut to one line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

from ..jobs.spec import JobSpec
from .inspect import ErrorGroup, Inspection, Percentiles

__all__ = ["flat_options", "inspection_text", "job_options", "one_line", "seconds"]

WIDTH = 100


def one_line(text: str | None, limit: int = 120) -> str:
    """``text`` on one line: controls escaped, spaces collapsed, cut to ``limit``."""
    if text is None:
        return ""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def flat_options(options: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every option, nested ones named ``a.b``."""
    for name, value in options.items():
        if isinstance(value, Mapping):
            yield from flat_options(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


ALWAYS = ("input", "output", "provider", "model", "concurrency", "retry.attempts")


def job_options(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The options worth showing: those that differ from the defaults, and a few always."""
    defaults = dict(flat_options(JobSpec(input="-").public_options()))
    return [
        (name, value)
        for name, value in flat_options(options)
        if value is not None and (name in ALWAYS or value != defaults.get(name))
    ]


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def seconds(value: float) -> str:
    """A duration in seconds, with three significant digits below ten seconds."""
    return f"{value:.3g} s" if value < 10 else f"{value:,.1f} s"


def percentiles_text(p: Percentiles | None, of: str) -> str:
    """``p50 .. p90 .. p99 .. max ..`` of ``p``, or why there is none."""
    if p is None:
        return f"none (0 {of})"
    figures = "  ".join(
        f"{name} {_number(getattr(p, name))}" for name in ("p50", "p90", "p99", "max")
    )
    return f"{figures}  ({p.count:,} {of})"


def _groups(title: str, groups: Mapping[str, ErrorGroup]) -> list[str]:
    if not groups:
        return []
    width = max(len(one_line(key, 40)) for key in groups)
    lines = [title]
    for key, group in groups.items():
        lines.append(
            f"  {one_line(key, 40):<{width}}  {group.count:>8,}  {one_line(group.example)}"
        )
    return lines


def inspection_text(inspection: Inspection) -> str:
    """What ``aibatch inspect`` prints."""
    i = inspection
    counts = ", ".join(f"{n:,} {name}" for name, n in i.counts.items())
    lines = [f"{one_line(i.path, 200)}: {i.rows:,} rows: {counts}"]
    origin = f"written by aibatch {i.version or 'unknown'}"
    if len(i.files) > 1:
        origin += f", in {len(i.files)} parts"
    if "reused" in i.recorded or "deduped" in i.recorded:
        origin += (
            f"; reused {i.recorded.get('reused', 0):,} from an earlier run,"
            f" {i.recorded.get('deduped', 0):,} duplicates sent once"
        )
    lines.append(origin)
    job = " ".join(f"{name}={one_line(str(value), 60)}" for name, value in job_options(i.options))
    lines += textwrap.wrap(f"job: {job or '(not recorded)'}", WIDTH, subsequent_indent="  ")
    if i.first_started is not None and i.last_finished is not None:
        first, last = i.first_started, i.last_finished
        span = seconds((last - first).total_seconds())
        lines.append(f"sent {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} UTC ({span})")
    lines.append(f"latency ms    {percentiles_text(i.latency_ms, 'rows sent')}")
    lines.append(f"first chunk   {percentiles_text(i.ttfb_ms, 'answers')}")
    if i.attempts:
        lines.append("attempts      " + "  ".join(f"{k}: {v:,}" for k, v in i.attempts.items()))
    if i.prompt_tokens is not None or i.completion_tokens is not None:
        lines.append(
            f"tokens        {i.prompt_tokens or 0:,} prompt,"
            f" {i.completion_tokens or 0:,} completion"
        )
    if i.cost_usd is not None:
        lines.append(f"cost          ${i.cost_usd:,.4f}")
    lines += _groups("errors by type", i.errors_by_type)
    lines += _groups("errors by HTTP status", i.errors_by_http_status)
    if i.failed_rows:
        lines.append(f"first {len(i.failed_rows)} failed rows")
    for row in i.failed_rows:
        where = f"row {row.row}" + (f" (id {one_line(str(row.id), 40)})" if row.id else "")
        status = f"HTTP {row.http_status}" if row.http_status is not None else "no HTTP status"
        tries = f"{row.attempts} attempt{'s' if row.attempts != 1 else ''}"
        lines.append(f"  {where}: {one_line(row.error_type, 40)}, {status}, {tries}")
        lines.append(f"    error:  {one_line(row.error)}")
        lines.append(f"    prompt: {one_line(row.prompt)}")
    return "\n".join(lines)
