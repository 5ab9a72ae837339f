"""Progress lines and the summary text."""

from __future__ import annotations

import io

from aibatch.console import ProgressReporter, summary_text
from aibatch.runner.engine import Progress
from aibatch.runner.summary import Summary


def test_a_terminal_gets_a_redrawn_bar_with_counts_rate_and_eta() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(stream, bar=True)
    reporter(Progress(rows=10, to_send=10, done=5, ok=4, failed=1, concurrency=8))
    text = stream.getvalue()
    assert text.startswith("\r\x1b[2K[############............] 5/10 sent")
    assert "ok 4 | failed 1" in text and "c=8" in text and "ETA" in text
    reporter.close()
    assert stream.getvalue().endswith("\n")


def test_without_a_terminal_lines_come_every_few_seconds_and_the_last_once() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(stream, bar=False, every=3600)
    reporter(Progress(to_send=10, done=1))
    reporter(Progress(to_send=10, done=2))  # within the interval: not shown
    reporter(Progress(to_send=10, done=10, ok=10))
    reporter(Progress(to_send=10, done=10, ok=10))  # the same final line: not repeated
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("aibatch: 1/10 sent")
    assert lines[1].startswith("aibatch: 10/10 sent | ok 10")


def test_the_summary_names_counts_output_and_how_to_resume() -> None:
    done = Summary(
        input="in.csv",
        output="out.parquet",
        rows=3,
        ok=2,
        error=1,
        sent=3,
        requests=4,
        token_requests=1,
        wall_s=2.0,
        latency_p50_ms=10,
        latency_p95_ms=20,
        errors_by_type={"PermanentError": 1},
    )
    text = summary_text(done)
    assert "3 rows" in text and "-> out.parquet" in text and "PermanentError 1" in text
    assert "1.5 rows/s" in text and "token requests 1" in text
    stopped = summary_text(Summary(input="in.csv", interrupted=True))
    assert "run the same command again to resume" in stopped
