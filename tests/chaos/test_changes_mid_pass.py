"""Inputs changed under a running aibatch, in the middle of a pass.

1. A change the send step notices (a row that is not what the scan read) starts no
   more requests, but the answers of those in flight are stored: the re-run does not
   send those prompts a second time.
2. A file cut short while a pass reads it, so that the pass meets the end of the file
   inside a quoted field, is reported as an input that changed while aibatch was
   running, not as ``malformed CSV: unexpected end of data``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aibatch.jobs.checkpoint import checkpoint_dir
from tests.conftest import emulator_in_thread

from .crashpoints import CrashPoint, child, wait_until
from .test_changing_inputs import (
    CHANGED,
    ROWS,
    SEEDS,
    change_plan,
    csv_bytes,
    original_rows,
    plan_id,
    run_and_change,
)

pytestmark = pytest.mark.slow

NOTICED_WHILE_SENDING = [1, 5, 9]  # reordered, appended, removed: the send step sees them


def test_these_seeds_change_the_file_while_it_sends():
    assert all(change_plan(seed).moment == "sending" for seed in NOTICED_WHILE_SENDING)
    assert set(NOTICED_WHILE_SENDING) <= set(SEEDS)


@pytest.mark.parametrize("seed", NOTICED_WHILE_SENDING, ids=plan_id)
def test_a_change_noticed_while_sending_keeps_the_answer_of_every_request_it_sent(
    tmp_path: Path, seed: int
):
    with emulator_in_thread(latency=0.01) as emu:
        first = run_and_change(change_plan(seed), tmp_path, emu)
        assert first.returncode == 2, first.stderr
        sent = set(emu.stats.prompts)
    lost = sorted(text.split(":")[0] for text in sent - first.kept)
    assert lost == [], "requests sent whose answers were thrown away"


# csv rows the child has read when it pauses: the header's pass takes 1, the scan's
# ROWS + 1; the send pass's 100th row comes after them. Either way the reader holds the
# file's first MiB (about 174 rows) and reads on from disk past it.
CUT_WHILE = {"scanning": 60, "sending": 1 + (ROWS + 1) + 1 + 100}


@pytest.mark.parametrize("moment", sorted(CUT_WHILE))
def test_a_file_cut_short_while_a_pass_reads_it_is_reported_as_changed(tmp_path: Path, moment: str):
    source = tmp_path / "in.csv"
    source.write_bytes(csv_bytes(original_rows()))
    output = tmp_path / "in.responses.parquet"
    job = tmp_path / "job.toml"
    job.write_text('input = "in.csv"\nconcurrency = 16\nbatch_rows = 20\n', encoding="utf-8")
    marker, resume = tmp_path / "paused-at", tmp_path / "resume"
    point = CrashPoint("reading", CUT_WHILE[moment], action="pause")
    with emulator_in_thread(latency=0.01) as emu:
        args = ("run", "--job", job, "--base-url", emu.base_url, "--no-progress")
        with child(args, tmp_path, point, marker, resume) as process:
            wait_until(lambda: marker.exists() and marker.read_text(), process)
            scanning = emu.stats.chat_requests == 0 and not checkpoint_dir(output).exists()
            assert scanning == (moment == "scanning")
            source.write_bytes(csv_bytes(original_rows()[:140]))  # 0.84 MB: under 1 MiB
            resume.touch()
            _, raw = process.communicate(timeout=60)
    stderr = raw.decode()
    assert process.returncode == 2 and CHANGED in stderr, stderr
