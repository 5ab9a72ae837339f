"""Inputs that change under a running ``aibatch run``, at seeded moments.

A real child process runs a 1.2 MB CSV against an emulator in a thread of the test
process. At a seeded moment the test rewrites the input: the same rows in another order
(size and modification time put back), rows appended, rows removed, or another file
renamed over it. The moments are synchronised on what the run shows, never on sleeps:
the child pauses at a crash point while it scans the input (no checkpoint yet, nothing
sent), once every row is stored and the output is about to be written, or just after the
output was renamed into place; while it sends, the test waits for the emulator's request
counter to reach a seeded number. The file is larger than aibatch's read buffer, so a
pass under way reads the changed bytes from disk.

Expected: a change before the output was committed stops the run with exit 2 and one
line saying the input changed; a change after it leaves the committed run alone (exit 0).
Never is a prompt beside another prompt's answer in an output. The re-run then pairs
every row of the file as it is now with its own answer, sends each prompt once at most,
and sends none whose answer the first run stored.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Emulator, answer_for
from tests.conftest import emulator_in_thread

from .checks import (
    assert_every_row_accounted,
    invoke,
    part_files,
    read_part,
    stored_rows,
    tally,
)
from .crashpoints import CrashPoint, child, wait_until

pytestmark = pytest.mark.slow

ROWS = 200
# Fixed-width rows of 6 kB: the file outgrows aibatch's 1 MiB read buffer, and a pass
# that reads the old head and the new tail still splits them at row boundaries.
FILLER = 6000
MOMENTS = ("scanning", "sending", "stored", "committed")
CHANGES = ("reordered", "appended", "removed", "replaced")
SEEDS = range(len(MOMENTS) * len(CHANGES))
CHANGED = "changed while aibatch was running"


def prompt(number: int, kind: str = "Question") -> str:
    head = f"{kind} {number:05d}: what is {number} + {number}, roughly?"
    return (head + " " + "lorem ipsum, dolor " * FILLER)[:FILLER]


def csv_bytes(rows: list[tuple[str, str]], *, header: bool = True) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if header:
        writer.writerow(["id", "prompt"])
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


@dataclass(frozen=True, slots=True)
class ChangePlan:
    """Seed ``seed``'s change of the input, and when it lands."""

    seed: int
    moment: str
    change: str
    point: CrashPoint | None  # where the child pauses; None: while it sends
    after_requests: int
    rows: list[tuple[str, str]]  # the file's rows after the change


def change_plan(seed: int) -> ChangePlan:
    """Moment and change cycle with the seed; how much changes, and where, is drawn."""
    rng = random.Random(seed)
    moment = MOMENTS[seed % len(MOMENTS)]
    change = CHANGES[seed // len(MOMENTS) % len(CHANGES)]
    point = {
        # csv rows read so far, header included: early in the scan, the tail still unread.
        "scanning": CrashPoint("reading", rng.randint(3, 40), action="pause"),
        "sending": None,
        "stored": CrashPoint("output-open", 1, "after", action="pause"),
        "committed": CrashPoint("output-replace", 1, "after", action="pause"),
    }[moment]
    rows = [(f"r{i:05d}", prompt(i)) for i in range(ROWS)]
    if change == "reordered":
        while rows == original_rows():
            rng.shuffle(rows)
    elif change == "appended":
        rows += [(f"r{i:05d}", prompt(i)) for i in range(ROWS, ROWS + rng.randint(1, 20))]
    elif change == "removed":
        for index in sorted(rng.sample(range(ROWS), rng.randint(1, 20)), reverse=True):
            del rows[index]
    else:
        for index in rng.sample(range(ROWS), rng.randint(1, 10)):
            rows[index] = (rows[index][0], prompt(index, "Changed!"))
    return ChangePlan(seed, moment, change, point, rng.randint(1, 40), rows)


def original_rows() -> list[tuple[str, str]]:
    return [(f"r{i:05d}", prompt(i)) for i in range(ROWS)]


def plan_id(seed: int) -> str:
    plan = change_plan(seed)
    return f"seed{seed}-{plan.change}-while-{plan.moment}"


def apply_change(plan: ChangePlan, source: Path) -> None:
    """Change ``source`` the way ``plan`` says, as a user or another program would."""
    before = source.stat()
    if plan.change == "appended":
        with source.open("ab") as handle:
            handle.write(csv_bytes(plan.rows[ROWS:], header=False))
    elif plan.change == "replaced":
        fresh = source.with_name("fresh.csv")
        fresh.write_bytes(csv_bytes(plan.rows))
        os.replace(fresh, source)
    else:
        rewrite_in_place(source, csv_bytes(plan.rows))
    if plan.change == "reordered":
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = source.stat()
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        ), "the reordered file must look untouched to stat"


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the file's bytes from the start, then cut what is left over.

    A pass reading meanwhile never meets the end of the file inside a row: the rows are
    all alike, and the file only shrinks once the new rows are whole. (Truncating first,
    as ``write_bytes`` does, leaves a moment when a pass can meet the end of the file
    inside a quoted field: a case of its own, which only a pause hits every time.)
    """
    with path.open("r+b") as handle:
        handle.write(data)
        handle.truncate()


def assert_in_moment(plan: ChangePlan, output: Path, emu: Emulator) -> None:
    """Evidence that the paused child is where the plan wants it."""
    if plan.moment == "scanning":
        assert emu.stats.chat_requests == 0 and not checkpoint_dir(output).exists()
    elif plan.moment == "stored":
        assert sorted(stored_rows(output)) == list(range(ROWS)) and not output.exists()
    elif plan.moment == "committed":
        assert output.exists()


def assert_no_foreign_answer(output: Path) -> None:
    """If the output exists, each row's answer is its own prompt's."""
    if not output.exists():
        return
    rows = pq.read_table(output, columns=["prompt", "sent_prompt", "response"]).to_pylist()
    foreign = [
        number
        for number, row in enumerate(rows)
        if (row["sent_prompt"], row["response"]) != (row["prompt"], answer_for(row["prompt"]))
    ]
    assert foreign == [], "rows holding another row's request and answer"


def test_the_change_plan_covers_every_change_at_every_moment():
    combos = Counter((change_plan(s).change, change_plan(s).moment) for s in SEEDS)
    assert set(combos) == {(c, m) for c in CHANGES for m in MOMENTS}


@dataclass(frozen=True, slots=True)
class FirstRun:
    """How the run the input changed under ended, and what it left."""

    returncode: int
    stderr: str
    args: tuple[object, ...]
    output: Path
    kept: frozenset[str]  # prompts whose answers it stored in the checkpoint


def run_and_change(plan: ChangePlan, folder: Path, emu: Emulator) -> FirstRun:
    """Run ``aibatch`` as a child on a fresh input, changing it at the plan's moment."""
    source = folder / "in.csv"
    source.write_bytes(csv_bytes(original_rows()))
    output = folder / "in.responses.parquet"
    job = folder / "job.toml"
    # Batches of 20 rows: the send step reads the file as it goes, not all at once.
    job.write_text('input = "in.csv"\nconcurrency = 16\nbatch_rows = 20\n', encoding="utf-8")
    marker, resume = folder / "paused-at", folder / "resume"
    args = ("run", "--job", job, "--base-url", emu.base_url, "--no-progress")
    with child(args, folder, plan.point, marker, resume) as process:
        if plan.point is None:
            wait_until(lambda: emu.stats.chat_requests >= plan.after_requests, process)
            apply_change(plan, source)
            assert emu.stats.chat_requests < ROWS, "the change landed after sending"
        else:
            wait_until(lambda: marker.exists() and marker.read_text(), process)
            assert_in_moment(plan, output, emu)
            apply_change(plan, source)
            resume.touch()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode != -signal.SIGKILL, "the child was killed"
    return FirstRun(
        process.returncode, stderr.decode(), args, output, frozenset(stored_answers(output))
    )


def stored_answers(output: Path) -> list[str]:
    """The prompts the checkpoint holds an answer for."""
    return [
        row["sent_prompt"]
        for part in part_files(output)
        for row in read_part(part).select(["sent_prompt", "status"]).to_pylist()
        if row["status"] == "ok"
    ]


@pytest.mark.parametrize("seed", SEEDS, ids=plan_id)
def test_an_input_changed_at_a_seeded_moment_never_pairs_a_row_with_another_rows_answer(
    tmp_path: Path, seed: int
):
    plan = change_plan(seed)
    with emulator_in_thread(latency=0.01) as emu:
        first = run_and_change(plan, tmp_path, emu)
        if plan.moment == "committed":
            assert first.returncode == 0, first.stderr
        else:
            assert first.returncode == 2, first.stderr
            assert first.stderr.startswith("aibatch: error: "), first.stderr
            assert first.stderr.count("\n") == 1 and CHANGED in first.stderr, first.stderr
        assert_no_foreign_answer(first.output)

        before = Counter(emu.stats.prompts)
        rerun = invoke(*first.args)
        assert rerun.exit_code == 0, rerun.stderr
        resent = Counter(emu.stats.prompts) - before
    prompts = [text for _, text in plan.rows]
    assert_every_row_accounted(first.output, prompts)
    assert set(resent) <= set(prompts) and set(resent.values()) <= {1}
    again = sorted(prompts.index(text) for text in first.kept & set(resent))
    assert again == [], "rows answered before the change were sent again"
    tally(input_changes=1, rows_checked=len(prompts))
