"""Progress lines and the summary text."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios
import time

import pytest

from aibatch.console import ProgressReporter, error_line, summary_text
from aibatch.errors import Unauthorized
from aibatch.runner.engine import Progress
from aibatch.runner.summary import Summary


def test_a_terminal_gets_a_redrawn_bar_with_counts_rate_and_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
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


BUSY = Progress(
    rows=10_000_000,
    to_send=9_000_000,
    done=1_234_567,
    ok=1_234_000,
    failed=567,
    reused=1_000_000,
    concurrency=1024,
)


def read_terminal(master: int) -> str:
    """What the program wrote to the terminal so far (bounded by count and time)."""
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and select.select([master], [], [], 0.2)[0]:
        data += os.read(master, 65536)
    return data.decode()


def test_the_bar_on_an_80_column_terminal_fits_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with os.fdopen(slave, "w", encoding="utf-8") as terminal:
            reporter = ProgressReporter(terminal)  # a terminal: a bar, redrawn in place
            reporter(BUSY)
            drawn = read_terminal(master)
    finally:
        os.close(master)
    assert drawn.startswith("\r\x1b[2K")
    assert 40 < len(drawn.removeprefix("\r\x1b[2K")) < 80


def test_an_interrupted_summary_counts_the_rows_finished_not_the_rows_planned() -> None:
    stopped = Summary(input="in.csv", rows=40, sent=14, requests=16, wall_s=2.0, interrupted=True)

    text = summary_text(stopped)

    assert "finished 14 rows before stopping, in 16 requests" in text and "sent 14" not in text


def test_a_bug_inside_a_group_is_named_before_the_errors_raised_on_purpose() -> None:
    try:
        _ = len([]) + "rows"  # type: ignore[operator]
    except TypeError as bug:
        group = ExceptionGroup("run", [Unauthorized("HTTP 401"), ExceptionGroup("io", [bug])])

    assert error_line(group) == "TypeError: unsupported operand type(s) for +: 'int' and 'str'"
