"""What a person sees: progress, the summary at the end, and a bug reported in one line.

On a terminal the progress is a redrawn bar, cut to the terminal's width so that a
redraw never wraps; otherwise (cron, pipelines) a log line every few seconds.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import click

from ._version import __version__
from .errors import AibatchError

if TYPE_CHECKING:
    from .providers import AsyncGeneratorProvider
    from .runner.engine import Progress
    from .runner.job import Preview
    from .runner.summary import Summary

__all__ = [
    "ProgressReporter",
    "crash_report",
    "dry_run_text",
    "error_line",
    "provider_text",
    "summary_text",
]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def usd(amount: float) -> str:
    """An amount of US dollars: to the cent from $10, else to 4 places, or 2 digits if tiny."""
    if amount >= 10:
        return f"${amount:,.2f}"
    if amount >= 0.001 or amount <= 0:
        return f"${amount:.4f}"
    return f"${amount:.{1 - math.floor(math.log10(amount))}f}"


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to: ``$COLUMNS``, its size, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a terminal, or no file at all
            columns = 0
    return columns if columns > 0 else 80


class ProgressReporter:
    """Turns progress updates into a redrawn bar (terminal) or periodic log lines.

    Args:
        stream: where to write, standard error by default.
        bar: draw a bar; ``None`` decides by whether ``stream`` is a terminal.
        every: seconds between log lines when there is no bar.

    A bar is cut to one column less than the terminal's width, read at each redraw (the
    window may be resized): a line that wraps cannot be redrawn in place, and each
    redraw would leave another line behind.
    """

    def __init__(
        self, stream: TextIO | None = None, *, bar: bool | None = None, every: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.every = every if not self.bar else 0.1
        self._last = -math.inf
        self._finished = False
        self._drawn = False

    def line(self, p: Progress, columns: int | None = None) -> str:
        """One status line for ``p``; with ``columns``, at most ``columns - 1`` wide.

        To fit, the bar narrows first (it is left out below 8 characters), then the text
        is cut.
        """
        done, total = p.done, p.to_send
        parts = [f"{done}/{total} sent", f"ok {p.ok}", f"failed {p.failed}"]
        if p.reused:
            parts.append(f"reused {p.reused}")
        if p.cost_usd is not None:
            parts.append(usd(p.cost_usd))
        limit = f"c={p.concurrency}" if p.batches is None else f"batches {p.batches}"
        parts += [f"{p.rate:.1f} rows/s", limit, f"ETA {_duration(p.eta)}"]
        text = " | ".join(parts)
        if self.bar:
            width = 24 if columns is None else min(24, columns - 4 - len(text))
            if width >= 8:
                filled = width if total == 0 else int(width * done / total)
                text = f"[{'#' * filled}{'.' * (width - filled)}] {text}"
        return text if columns is None else text[: columns - 1]

    def __call__(self, progress: Progress) -> None:
        """Show ``progress`` if enough time has passed since the last line."""
        now = time.monotonic()
        finished = progress.done >= progress.to_send
        if (now - self._last < self.every and not finished) or (finished and self._finished):
            return
        text = self.line(progress, terminal_columns(self.stream) if self.bar else None)
        self._last, self._finished = now, finished
        if self.bar:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write("aibatch: " + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def summary_text(summary: Summary) -> str:
    """The end-of-run summary as a few readable lines."""
    s = summary
    lat = (
        f"latency p50 {s.latency_p50_ms:.0f} ms, p95 {s.latency_p95_ms:.0f} ms"
        if s.latency_p50_ms is not None and s.latency_p95_ms is not None
        else "no requests sent"
    )
    lines = []
    if s.budget_reached:
        budget = usd(s.max_cost) if s.max_cost is not None else "the"
        lines.append(
            click.style("Budget reached.", fg="yellow") + f" The {budget} budget could not"
            f" cover another request: {s.ok} ok, {s.error} failed, {s.skipped} skipped,"
            f" {s.unsent} unsent -> {s.output}; re-run with a higher --max-cost to send the"
            " unsent rows."
        )
    elif s.interrupted:
        lines.append(
            click.style("Interrupted.", fg="yellow") + " Finished rows are saved in"
            " the checkpoint; run the same command again to resume."
        )
    elif s.batch_pending:
        lines.append(
            click.style("Submitted, not finished.", fg="yellow") + f" {s.batch_pending} rows"
            " are in batches at the provider; run the same command again later to collect"
            " them and write the output."
        )
    else:
        status = click.style(f"{s.ok} ok", fg="green")
        failed = click.style(f"{s.error} failed", fg="red" if s.error else None)
        lines.append(f"{s.rows} rows: {status}, {failed}, {s.skipped} skipped -> {s.output}")
    # An interrupted run's ``sent`` counts the rows it finished, not the rows it meant to
    # send, and its rate counts them alone: the other rows were not done.
    sent = f"finished {s.sent} rows before stopping," if s.interrupted else f"sent {s.sent} rows"
    rate = (s.sent / s.wall_s if s.wall_s > 0 else 0.0) if s.interrupted else s.rows_per_s
    lines.append(
        f"{sent} in {s.requests} requests, reused {s.reused}, duplicates {s.deduped},"
        f" token requests {s.token_requests}"
    )
    lines.append(f"{s.wall_s:.1f} s, {rate:.1f} rows/s, {lat}, concurrency {s.concurrency}")
    if s.prompt_tokens or s.completion_tokens:
        cut = f", {s.truncated} answers cut at the length limit" if s.truncated else ""
        lines.append(f"tokens: {s.prompt_tokens} prompt, {s.completion_tokens} completion{cut}")
    if s.errors_by_type:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.errors_by_type.items()))
        lines.append(f"errors: {kinds}")
    if s.cost_usd is None and s.cost_note:
        lines.append(f"cost: unknown ({s.cost_note.removeprefix('cost unknown: ')})")
    elif s.cost_usd is not None and (s.requests or s.sent):  # (sent: batches collected)
        lines.append(f"cost: {usd(s.cost_usd)} at {s.cost_note}")
    return "\n".join(lines)


def dry_run_text(source: str, found: Preview) -> str:
    """What ``--dry-run`` prints: the rows a run would send, their cost, the first prompts."""
    p, e = found, found.estimate
    where = "" if p.checkpoint_read else " (the Dask engine's checkpoints are not read)"
    output = (
        f"{e.output_tokens} a row (assumed: set --max-tokens or --expected-output-tokens)"
        if e.output_assumed
        else f"{e.output_tokens} a row at most (--max-tokens)"
    )
    lines = [
        f"{source}: {p.rows} rows, {p.skipped} with an empty prompt (skipped); nothing sent.",
        f"A run would send {p.to_send} rows{where}: {p.reused} answered in the checkpoint,"
        f" {p.deduped} duplicates of another row"
        + (f", {p.in_batches} in batches at the provider." if p.in_batches else "."),
        f"Input tokens: {e.input_tokens[0]:,} to {e.input_tokens[1]:,} ({e.counted});"
        f" output tokens: {output}.",
    ]
    if e.cost_usd is None:
        lines.append(f"Cost: unknown ({e.price_note.removeprefix('cost unknown: ')}).")
    else:
        middle = e.estimated_cost_usd or 0.0
        worst = "" if e.worst_case_usd is None else f"; at most {usd(e.worst_case_usd)}"
        lines.append(
            f"Cost: {usd(e.cost_usd[0])} to {usd(e.cost_usd[1])}, about {usd(middle)}{worst},"
            f" at {e.price_note}."
        )
    lines.append("First prompts:")
    return "\n".join(lines + [f"--- row {r}\n{text}" for r, text in p.shown])


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def error_line(exc: BaseException) -> str:
    """An unexpected exception as ``Type: message`` on one line.

    Of a group, the first exception that aibatch did not raise on purpose: the bug.
    """
    leaves = list(_leaves(exc))
    bug = next((e for e in leaves if not isinstance(e, AibatchError)), leaves[0])
    message = " ".join(str(bug).split())[:200]
    return f"{type(bug).__name__}: {message}" if message else type(bug).__name__


def crash_report(exc: BaseException, *, verbose: int = 0) -> str:
    """Save the traceback of a bug in a new private file; say so in one line.

    The file comes from :func:`tempfile.mkstemp`: a name nobody could have planted a link
    at, readable by the user alone (a traceback may quote a prompt or a path). With
    ``verbose >= 2``, or when the file cannot be written, the traceback comes first.
    """
    import tempfile  # (and shutil, bz2, lzma): only for a crash, not at every start-up

    text = "".join(traceback.format_exception(exc))
    try:
        fd, where = tempfile.mkstemp(prefix="aibatch-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"aibatch {__version__}, Python {sys.version.split()[0]}\n{text}")
        saved = f"the traceback is in {where}"
    except OSError as error:
        saved, verbose = f"the traceback could not be saved ({error.strerror})", 2
    line = f"aibatch: internal error: {error_line(exc)}; {saved} (-vv prints it)"
    return text + line if verbose >= 2 else line


def provider_text(name: str, provider: type[AsyncGeneratorProvider]) -> str:
    """A provider's entry in ``aibatch providers``: where, which models, which options."""
    models = ", ".join(getattr(provider, "models", ())) or "any the server serves"
    options = sorted(provider.sampling_options)
    if provider.can_disable_stream:
        options.append("no_stream")
    lines = [
        f"{name}  ({provider.__module__}.{provider.__qualname__})",
        f"  base url: {provider.url}",
        f"  default model: {getattr(provider, 'default_model', '')}; models: {models}",
        f"  options: {', '.join(options) or 'none'}",
    ]
    if provider.api_key_env:
        lines.append(f"  api key: ${provider.api_key_env} (or --api-key-env)")
    return "\n".join(lines)
