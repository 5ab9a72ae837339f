"""The checkpoint: durable parts, resume plans, dedupe, torn parts, and the run lock."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aibatch.errors import CheckpointError, OutputError
from aibatch.jobs.checkpoint import (
    DUPLICATE,
    RECORD_SCHEMA,
    SEND,
    SKIP,
    Checkpoint,
    Plan,
    PromptHasher,
    checkpoint_dir,
    positional_row_keys,
    request_hash,
    row_key,
    row_keys,
)
from aibatch.types import ChatRequest, Message, RowResult, RowStatus

SERVICE = "aichatonline"
MODEL = "test-model"
STARTED = 1_700_000_000.25
SUBPROCESS_TIMEOUT = 60

# Tries to open the checkpoint folder argv[1] and says what happened.
TRY_TO_OPEN = """
import sys
from pathlib import Path
from aibatch.errors import CheckpointError
from aibatch.jobs.checkpoint import Checkpoint
try:
    with Checkpoint(Path(sys.argv[1])):
        print("opened")
except CheckpointError as exc:
    print("CheckpointError:", exc)
"""

# Opens the checkpoint folder argv[1], says so, and holds it until stdin closes.
HOLD_OPEN = """
import sys
from pathlib import Path
from aibatch.jobs.checkpoint import Checkpoint
with Checkpoint(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""

Rows = list[tuple[str, str | None]]
"""One run's rows as (row id, prompt); a None prompt is a skipped row."""


def ask(prompt: str, model: str = MODEL) -> ChatRequest:
    return ChatRequest(messages=(Message("user", prompt),), model=model)


def keyed(rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row keys, request hashes and the skipped mask, computed as the engine does."""
    keys, hashes, skipped = [], [], []
    for row_id, prompt in rows:
        if prompt is None:
            keys.append(0)
            hashes.append(0)
            skipped.append(True)
        else:
            h = request_hash(ask(prompt), SERVICE)
            keys.append(row_key(row_id, h))
            hashes.append(h)
            skipped.append(False)
    return np.array(keys, np.uint64), np.array(hashes, np.uint64), np.array(skipped, bool)


def finished(
    row: int,
    row_id: str,
    prompt: str,
    *,
    ok: bool = True,
    response: str | None = None,
) -> RowResult:
    h = request_hash(ask(prompt), SERVICE)
    return RowResult(
        row=row,
        row_key=row_key(row_id, h),
        request_hash=h,
        sent_prompt=prompt,
        status=RowStatus.OK if ok else RowStatus.ERROR,
        response=(response or f"answer to {prompt}") if ok else None,
        error_type=None if ok else "TransientError",
        error=None if ok else "503 from the service",
        http_status=200 if ok else 503,
        attempts=1 if ok else 5,
        latency_ms=12.5,
        ttfb_ms=3.0,
        started_at=STARTED,
        finished_at=STARTED + 1.5,
    )


def plan_for(checkpoint: Checkpoint, rows: Rows, **options: bool) -> Plan:
    return checkpoint.plan(*keyed(rows), **options)


def column(table: pa.Table, name: str) -> list[object]:
    return table.column(name).to_pylist()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return checkpoint_dir(tmp_path / "out.parquet")


def store(folder: Path, *parts: list[RowResult]) -> None:
    """One earlier run that stored ``parts``, one write_part each."""
    with Checkpoint(folder) as checkpoint:
        for part in parts:
            checkpoint.write_part(part)


def part_files(folder: Path) -> list[str]:
    """The parts folder's file names, checksums left out (``00000001.arrow``)."""
    return sorted(re.sub(r"-[0-9a-f]{32}", "", p.name) for p in (folder / "parts").iterdir())


def part_path(folder: Path, number: int) -> Path:
    (path,) = (folder / "parts").glob(f"{number:08d}-*.arrow")
    return path


# the folder


def test_the_checkpoint_folder_is_a_hidden_folder_beside_the_output():
    assert checkpoint_dir(Path("out/x.parquet")) == Path("out/.x.parquet.aibatch")


def test_a_new_checkpoint_stores_nothing_and_plans_to_send_every_row(folder):
    rows: Rows = [("0", "q0"), ("1", "q1")]

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, rows)

    assert checkpoint.stored_rows == 0
    assert plan.loc.tolist() == [SEND, SEND]
    assert (plan.to_send, plan.reused, plan.deduped, plan.skipped) == (2, 0, 0, 0)
    assert not plan.complete()


# resume


def test_ok_rows_stored_by_one_run_are_reused_by_the_next(folder):
    store(folder, [finished(0, "0", "q0"), finished(1, "1", "q1")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1"), ("2", "q2")])
        table = checkpoint.take(plan.loc[:2])

    assert checkpoint.stored_rows == 2
    assert plan.loc[2] == SEND
    assert (plan.to_send, plan.reused) == (1, 2)
    assert column(table, "response") == ["answer to q0", "answer to q1"]


def test_a_stored_row_comes_back_with_every_field(folder):
    store(folder, [finished(0, "0", "q0"), finished(1, "1", "q1", ok=False)])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")], retry_failed=False)
        table = checkpoint.take(plan.loc)

    assert table.schema == RECORD_SCHEMA
    ok, failed = table.to_pylist()
    assert ok["sent_prompt"] == "q0"
    assert (ok["status"], ok["http_status"], ok["attempts"]) == ("ok", 200, 1)
    assert (ok["latency_ms"], ok["ttfb_ms"]) == (12.5, 3.0)
    assert ok["started_at"] == datetime.fromtimestamp(STARTED, UTC)
    assert ok["finished_at"] == datetime.fromtimestamp(STARTED + 1.5, UTC)
    assert (failed["status"], failed["response"]) == ("error", None)
    assert (failed["error_type"], failed["error"]) == ("TransientError", "503 from the service")


def test_failed_rows_are_sent_again(folder):
    store(folder, [finished(0, "0", "q0"), finished(1, "1", "q1", ok=False)])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")])

    assert plan.loc[1] == SEND
    assert (plan.to_send, plan.reused) == (1, 1)


def test_failed_rows_are_kept_when_retry_failed_is_off(folder):
    store(folder, [finished(0, "0", "q0", ok=False)])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")], retry_failed=False)
        table = checkpoint.take(plan.loc)

    assert (plan.to_send, plan.reused) == (0, 1)
    assert column(table, "status") == ["error"]


def test_a_newer_ok_record_wins_over_an_older_failed_one(folder):
    store(folder, [finished(0, "0", "q0", ok=False)], [finished(0, "0", "q0")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")], retry_failed=False)
        table = checkpoint.take(plan.loc)

    assert checkpoint.stored_rows == 2
    assert column(table, "status") == ["ok"]


def test_an_ok_record_is_kept_over_a_newer_failed_one(folder):
    store(folder, [finished(0, "0", "q0")], [finished(0, "0", "q0", ok=False)])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")], retry_failed=False)
        table = checkpoint.take(plan.loc)

    assert column(table, "status") == ["ok"]


def test_of_two_ok_records_the_newer_wins(folder):
    store(
        folder,
        [finished(0, "0", "q0", response="old")],
        [finished(0, "0", "q0", response="new")],
    )

    with Checkpoint(folder) as checkpoint:
        table = checkpoint.take(plan_for(checkpoint, [("0", "q0")]).loc)

    assert column(table, "response") == ["new"]


def test_a_row_whose_prompt_changed_is_sent_again(folder):
    store(folder, [finished(0, "0", "old question")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "new question")])

    assert plan.loc.tolist() == [SEND]


def test_stored_rows_count_every_part(folder):
    store(folder, [finished(0, "0", "q0")], [finished(1, "1", "q1"), finished(2, "2", "q2")])

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 3


def test_rows_written_in_this_run_can_be_taken_at_once(folder):
    with Checkpoint(folder) as checkpoint:
        locs = checkpoint.write_part([finished(0, "0", "q0"), finished(1, "1", "q1")])
        table = checkpoint.take(locs[::-1])

    assert column(table, "response") == ["answer to q1", "answer to q0"]


# dedupe


def test_a_request_answered_in_an_earlier_run_is_reused_for_another_id(folder):
    store(folder, [finished(0, "a", "same question")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("b", "same question"), ("c", "same question")])
        table = checkpoint.take(plan.loc)

    assert (plan.to_send, plan.reused, plan.deduped) == (0, 2, 0)
    assert column(table, "response") == ["answer to same question"] * 2


def test_dedupe_off_sends_a_request_answered_for_another_id(folder):
    store(folder, [finished(0, "a", "same question")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("b", "same question")], dedupe=False)

    assert plan.loc.tolist() == [SEND]


def test_a_failed_answer_is_never_shared_with_another_id(folder):
    store(folder, [finished(0, "a", "same question", ok=False)])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("b", "same question")], retry_failed=False)

    assert plan.loc.tolist() == [SEND]


def test_identical_requests_in_one_run_point_at_the_first_row(folder):
    rows: Rows = [("0", "q2"), ("1", "q1"), ("2", "q1"), ("3", "q2"), ("4", "q1")]

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, rows)

    assert plan.loc.tolist() == [SEND, SEND, DUPLICATE - 1, DUPLICATE - 0, DUPLICATE - 1]
    assert (plan.to_send, plan.deduped, plan.reused) == (2, 3, 0)
    assert not plan.complete()


def test_resolve_points_duplicates_at_the_stored_answer_of_their_first_row(folder):
    rows: Rows = [("0", "q0"), ("1", "q1"), ("2", "q0"), ("3", "q0")]

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, rows)
        plan.loc[[0, 1]] = checkpoint.write_part([finished(0, "0", "q0"), finished(1, "1", "q1")])
        plan.resolve()
        table = checkpoint.take(plan.loc)

    assert plan.complete()
    assert plan.loc[2] == plan.loc[3] == plan.loc[0]
    assert column(table, "response") == ["answer to q0", "answer to q1"] + ["answer to q0"] * 2


def test_resolve_leaves_a_duplicate_of_an_unsent_row_unsent(folder):
    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q0")])
        plan.resolve()

    assert plan.loc.tolist() == [SEND, SEND]


def test_dedupe_off_sends_identical_requests_of_one_run_each(folder):
    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q"), ("1", "q")], dedupe=False)

    assert plan.loc.tolist() == [SEND, SEND]
    assert plan.deduped == 0


def test_a_row_whose_answer_was_shared_in_the_last_run_shares_it_again(folder):
    # The last run sent row 0 and wrote row 2 as its duplicate: only row 0 was stored.
    store(folder, [finished(0, "0", "q0"), finished(1, "1", "q1")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1"), ("2", "q0")])

    assert plan.loc[2] == plan.loc[0] >= 0
    assert (plan.to_send, plan.reused, plan.deduped) == (0, 3, 0)


def test_rows_stored_at_other_positions_are_found_by_their_key(folder):
    store(folder, [finished(0, "a", "qa"), finished(1, "b", "qb")], [finished(2, "c", "qc")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("c", "qc"), ("x", "qx"), ("a", "qa"), ("b", "qb")])
        table = checkpoint.take(plan.loc)

    assert plan.loc[1] == SEND
    assert column(table, "response") == ["answer to qc", None, "answer to qa", "answer to qb"]


def test_a_row_moved_since_its_failure_is_sent_again_and_its_ok_answer_kept(folder):
    store(folder, [finished(0, "a", "qa", ok=False)], [finished(3, "b", "qb")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("b", "qb"), ("a", "qa")])

    assert plan.loc[1] == SEND
    assert checkpoint.take(plan.loc[:1]).column("response").to_pylist() == ["answer to qb"]


def test_a_plan_holds_one_stored_part_at_a_time(folder):
    answer = "x" * 20_000
    parts = [[finished(i, str(i), f"q{i}", response=answer)] for i in range(40)]
    store(folder, *parts)
    rows: Rows = [(str(i), f"q{i}") for i in range(40)]
    keys = keyed(rows)

    tracemalloc.start()
    try:
        with Checkpoint(folder) as checkpoint:
            plan = checkpoint.plan(*keys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert plan.reused == 40
    assert peak < 10 * len(answer)  # the 40 parts hold 40 times the answer


# skipped rows


def test_skipped_rows_are_planned_as_skip_and_never_deduped(folder):
    store(folder, [finished(0, "0", "q0")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", None), ("1", "q1"), ("2", None), ("3", None)])

    assert plan.loc.tolist() == [SKIP, SEND, SKIP, SKIP]
    assert (plan.skipped, plan.deduped, plan.reused, plan.to_send) == (3, 0, 0, 1)


def test_take_returns_rows_in_the_order_asked_with_skip_as_skipped_rows(folder):
    store(
        folder,
        [finished(0, "0", "q0"), finished(1, "1", "q1"), finished(2, "2", "q2")],
        [finished(3, "3", "q3"), finished(4, "4", "q4")],
    )

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [(str(i), f"q{i}") for i in range(5)])
        locs = np.array(
            [plan.loc[4], SKIP, plan.loc[0], plan.loc[3], SKIP, plan.loc[0], plan.loc[2]]
        )
        table = checkpoint.take(locs)

    assert table.schema == RECORD_SCHEMA
    assert column(table, "sent_prompt") == ["q4", None, "q0", "q3", None, "q0", "q2"]
    assert column(table, "status") == ["ok", "skipped", "ok", "ok", "skipped", "ok", "ok"]
    assert column(table, "attempts") == [1, 0, 1, 1, 0, 1, 1]
    assert column(table, "response")[1] is None


def test_take_of_only_skipped_rows_gives_skipped_rows(folder):
    with Checkpoint(folder) as checkpoint:
        table = checkpoint.take(np.array([SKIP, SKIP]))

    assert column(table, "status") == ["skipped", "skipped"]


def test_take_of_no_rows_is_an_empty_table_of_the_record_schema(folder):
    with Checkpoint(folder) as checkpoint:
        table = checkpoint.take(np.empty(0, np.int64))

    assert table.num_rows == 0
    assert table.schema == RECORD_SCHEMA


# damaged parts


def test_a_leftover_temporary_part_is_removed_on_open(folder):
    store(folder, [finished(0, "0", "q0")])
    (folder / "parts" / "00000002.arrow.tmp").write_bytes(b"half a part")

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")])

    assert part_files(folder) == ["00000001.arrow"]
    assert checkpoint.stored_rows == 1
    assert plan.reused == 1


def test_a_truncated_part_is_set_aside_and_its_rows_sent_again(folder):
    store(folder, [finished(0, "0", "q0")], [finished(1, "1", "q1")])
    torn = part_path(folder, 2)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")])
        new_locs = checkpoint.write_part([finished(1, "1", "q1")])

    assert checkpoint.stored_rows == 1
    assert plan.loc[1] == SEND
    assert plan.reused == 1
    # The next part is numbered past the damaged one, which stays for inspection.
    assert checkpoint.take(new_locs).column("response").to_pylist() == ["answer to q1"]
    assert part_files(folder) == [
        "00000001.arrow",
        "00000002.arrow.damaged",
        "00000003.arrow",
    ]


@pytest.mark.parametrize("content", [b"", b"not an arrow file at all"])
def test_a_part_that_is_not_arrow_is_set_aside(folder, content):
    store(folder, [finished(0, "0", "q0")])
    (folder / "parts" / "00000002.arrow").write_bytes(content)

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 1

    assert part_files(folder) == ["00000001.arrow", "00000002.arrow.damaged"]


def test_a_part_with_other_columns_is_set_aside(folder):
    store(folder, [finished(0, "0", "q0")])
    stranger = pa.table({"x": [1, 2]})
    with (
        pa.OSFile(str(folder / "parts" / "00000002.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, stranger.schema) as writer,
    ):
        writer.write_table(stranger)

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 1

    assert "00000002.arrow.damaged" in part_files(folder)


def test_a_part_whose_bytes_rotted_in_the_middle_is_set_aside_naming_it(folder, caplog):
    store(folder, [finished(0, "0", "q0")], [finished(1, "1", "q1")])
    rotten = part_path(folder, 2)
    data = bytearray(rotten.read_bytes())
    # The answer's text sits in the middle; Arrow's structure around it stays valid.
    at = data.index(b"answer to q1")
    data[at : at + 6] = b"\xff\xfeXXXX"
    rotten.write_bytes(bytes(data))

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")])

    assert plan.loc[1] == SEND
    assert part_files(folder) == ["00000001.arrow", "00000002.arrow.damaged"]
    assert rotten.name in caplog.text
    assert "damaged" in caplog.text


def test_a_part_of_valid_arrow_with_other_column_types_and_a_right_checksum_is_set_aside(
    folder,
):
    store(folder, [finished(0, "0", "q0")])
    good = pa.ipc.open_file(part_path(folder, 1).read_bytes()).read_all()
    wrong = good.set_column(
        good.schema.get_field_index("attempts"),
        "attempts",
        pc.cast(good.column("attempts"), pa.string()),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, wrong.schema) as writer:
        writer.write_table(wrong)
    data = sink.getvalue().to_pybytes()
    checksum = hashlib.blake2b(data, digest_size=16).hexdigest()
    (folder / "parts" / f"00000002-{checksum}.arrow").write_bytes(data)

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 1

    assert "00000002.arrow.damaged" in part_files(folder)


def test_a_part_from_before_checksums_with_invalid_utf8_is_set_aside(folder):
    store(folder, [finished(0, "0", "q0")])
    data = bytearray(part_path(folder, 1).read_bytes())
    at = data.index(b"answer to q0")
    data[at] = 0xFF
    part_path(folder, 1).unlink()
    (folder / "parts" / "00000001.arrow").write_bytes(bytes(data))

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")])

    assert plan.loc[0] == SEND
    assert part_files(folder) == ["00000001.arrow.damaged"]


def test_a_part_from_before_checksums_that_is_sound_is_still_reused(folder):
    store(folder, [finished(0, "0", "q0")])
    legacy = part_path(folder, 1).rename(folder / "parts" / "00000001.arrow")

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")])
        stored = checkpoint.take(plan.loc)

    assert legacy.exists()
    assert stored.column("response").to_pylist() == ["answer to q0"]


def test_a_part_damaged_after_the_run_read_it_stops_the_write_with_a_checkpoint_error(folder):
    store(folder, [finished(0, "0", "q0")])

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0")])
        path = part_path(folder, 1)
        data = bytearray(path.read_bytes())
        data[data.index(b"answer to q0")] = ord("X")
        path.write_bytes(bytes(data))

        with pytest.raises(CheckpointError, match="damaged while this run used it"):
            checkpoint.take(plan.loc)


def test_two_parts_that_carry_one_number_each_keep_their_own_rows(folder):
    # Parts copied in from two other checkpoints can carry the same number.
    other = folder.parent / "other"
    store(folder, [finished(0, "0", "q0")])
    store(other, [finished(1, "1", "q1")])
    copied = part_path(other, 1)
    copied.rename(folder / "parts" / copied.name)

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")])
        stored = checkpoint.take(plan.loc)

    assert plan.reused == 2
    assert stored.column("response").to_pylist() == ["answer to q0", "answer to q1"]


def test_files_that_are_not_parts_are_left_alone(folder):
    store(folder, [finished(0, "0", "q0")])
    (folder / "parts" / "notes.txt").write_text("mine")
    (folder / "parts" / "old.arrow").write_text("mine too")

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 1

    assert part_files(folder) == ["00000001.arrow", "notes.txt", "old.arrow"]


# restart


def test_restart_discards_every_stored_part(folder):
    store(folder, [finished(0, "0", "q0")], [finished(1, "1", "q1")])

    with Checkpoint(folder, restart=True) as checkpoint:
        plan = plan_for(checkpoint, [("0", "q0"), ("1", "q1")])
        locs = checkpoint.write_part([finished(0, "0", "q0")])

    assert checkpoint.stored_rows == 0
    assert plan.loc.tolist() == [SEND, SEND]
    assert checkpoint.take(locs).column("response").to_pylist() == ["answer to q0"]
    assert part_files(folder) == ["00000001.arrow"]


# the lock


def test_a_second_checkpoint_on_an_open_folder_raises_naming_the_holder(folder):
    with Checkpoint(folder), pytest.raises(CheckpointError) as caught, Checkpoint(folder):
        pass

    message = str(caught.value)
    assert f"pid {os.getpid()}" in message
    assert str(folder / "lock") in message


def test_a_refused_second_checkpoint_leaves_the_first_holding_the_lock(folder):
    with Checkpoint(folder):
        for _ in range(2):
            with pytest.raises(CheckpointError), Checkpoint(folder):
                pass


def test_the_lock_is_released_when_the_checkpoint_closes(folder):
    store(folder, [finished(0, "0", "q0")])

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 1


@pytest.mark.slow
def test_another_process_cannot_open_a_checkpoint_this_one_holds(folder):
    with Checkpoint(folder):
        child = subprocess.run(
            [sys.executable, "-c", TRY_TO_OPEN, str(folder)],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=True,
        )

    assert child.stdout.startswith("CheckpointError: another aibatch run")


@pytest.mark.slow
def test_a_killed_holder_releases_the_lock(folder):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(CheckpointError, match=f"pid {holder.pid}"), Checkpoint(folder):
            pass
    finally:
        holder.kill()
        holder.communicate(timeout=SUBPROCESS_TIMEOUT)

    with Checkpoint(folder) as checkpoint:
        assert checkpoint.stored_rows == 0


# hashes


def test_request_hash_and_row_key_do_not_change_between_versions():
    # Stored checkpoints depend on these values: a change re-sends every stored row.
    request = ChatRequest(
        messages=(Message("system", "Be brief."), Message("user", "Hello")), model="gpt-4o-mini"
    )

    h = request_hash(request, "aichatonline")

    assert h == 7175842264823462069
    assert row_key("42", h) == 10249994248989067586


def test_equal_requests_hash_equal_and_fit_in_64_bits():
    first = request_hash(ask("same"), SERVICE)
    second = request_hash(ask("same"), SERVICE)

    assert first == second
    assert 0 <= first < 2**64
    assert 0 <= row_key("1", first) < 2**64
    assert row_key("1", first) == row_key("1", second)


@pytest.mark.parametrize(
    ("other", "service"),
    [
        (ask("q", model="other-model"), SERVICE),
        (ask("q "), SERVICE),
        (ChatRequest(messages=(Message("system", "q"),), model=MODEL), SERVICE),
        (ChatRequest(messages=(Message("system", ""), Message("user", "q")), model=MODEL), SERVICE),
        (ChatRequest(messages=(Message("user", "q"),), model=MODEL, options=(("t", 1),)), SERVICE),
        (ask("q"), "aichatonline+emulator"),
    ],
    ids=["model", "content", "role", "messages", "options", "service"],
)
def test_request_hash_differs_when_any_part_of_the_request_differs(other, service):
    assert request_hash(other, service) != request_hash(ask("q"), SERVICE)


def test_request_hash_does_not_confuse_where_one_message_ends_and_the_next_begins():
    split_early = ChatRequest(messages=(Message("user", "a"), Message("user", "bc")), model=MODEL)
    split_late = ChatRequest(messages=(Message("user", "ab"), Message("user", "c")), model=MODEL)

    assert request_hash(split_early, SERVICE) != request_hash(split_late, SERVICE)


def test_row_key_differs_by_id_and_by_request():
    h = request_hash(ask("q"), SERVICE)
    other = request_hash(ask("r"), SERVICE)

    assert row_key("1", h) != row_key("2", h)
    assert row_key("1", h) != row_key("1", other)
    assert row_key("1", h) != row_key("11", h)


def test_request_hash_accepts_text_with_lone_surrogates():
    assert request_hash(ask("bad \udc80 byte"), SERVICE) != request_hash(ask("bad"), SERVICE)


PROMPTS = [
    "Hello",
    "",
    " ",
    "naïve café, 東京, emoji 🎉 and a combining é",
    'line one\nline two\ttab, "quotes", {braces}',
    "bad \udc80 byte",
    "x" * 5000,
]


@pytest.mark.parametrize(
    "like",
    [
        ask(""),
        ChatRequest(messages=(Message("system", "Be brief."), Message("user", "")), model=MODEL),
        ChatRequest(
            messages=(Message("system", "Réponds en français 🇫🇷"), Message("user", "")),
            model="other-model",
            options=(("max_tokens", 50), ("temperature", 0.2)),
        ),
        ChatRequest(
            messages=(Message("user", ""),),
            model=MODEL,
            schema='{"type": "object"}',
            json_mode="object",
        ),
    ],
    ids=["plain", "system", "options", "schema"],
)
def test_prompt_hashes_equal_the_hashes_of_whole_requests(like):
    whole = [
        request_hash(
            ChatRequest(**{**_fields(like), "messages": (*like.messages[:-1], Message("user", p))}),
            SERVICE,
        )
        for p in PROMPTS
    ]

    fast = PromptHasher(like, SERVICE).hashes([*PROMPTS, None])

    assert fast.tolist() == [*whole, 0]


def _fields(request: ChatRequest) -> dict[str, object]:
    return {
        name: getattr(request, name)
        for name in ("messages", "model", "options", "schema", "json_mode")
    }


def test_row_keys_of_ids_equal_row_key_of_each():
    ids = ["0", "42", "id with spaces", "ünïcødé", "", "a:b:c"]
    hashes = np.array([request_hash(ask(i), SERVICE) for i in ids], np.uint64)

    assert row_keys(ids, hashes).tolist() == [
        row_key(i, int(h)) for i, h in zip(ids, hashes, strict=True)
    ]


def test_positional_row_keys_equal_row_key_of_each_position_across_digit_counts():
    first = 95
    hashes = np.arange(2**64 - 20, 2**64, dtype=np.uint64)

    keys = positional_row_keys(first, hashes)

    assert keys.tolist() == [row_key(str(first + i), int(h)) for i, h in enumerate(hashes)]


# write failures


def test_a_part_that_cannot_be_written_is_an_output_error_saying_how_to_resume(folder):
    with Checkpoint(folder) as checkpoint:
        # The parts folder becomes a plain file, so no part can be created in it.
        shutil.rmtree(checkpoint.parts_dir)
        checkpoint.parts_dir.write_bytes(b"")

        with pytest.raises(OutputError) as caught:
            checkpoint.write_part([finished(0, "0", "q0")])

    message = str(caught.value)
    assert re.search(r"parts/00000001-[0-9a-f]{32}\.arrow", message)
    assert "re-run the same command" in message


def test_a_checkpoint_folder_that_cannot_be_made_is_an_output_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with (
        pytest.raises(OutputError, match="cannot create checkpoint folder"),
        Checkpoint(checkpoint_dir(blocker / "out.parquet")),
    ):
        pass


# plans against a plain statement of the rules, on random checkpoints


def record(row: int, row_id: str, prompt: str, ok: bool, tag: str) -> RowResult:
    """A stored row whose answer (or error) is ``tag``, to tell which one a plan took."""
    result = finished(row, row_id, prompt, ok=ok, response=tag)
    if not ok:
        result.error = tag
    return result


def expected_plan(
    rows: Rows, stored: list[tuple[str, str, bool, str]], *, dedupe: bool, retry_failed: bool
) -> list[object]:
    """What each row should get, stated plainly: a stored tag, a set of fit tags, SKIP,
    ("dup", row) or SEND. ``stored`` is (id, prompt, ok, tag), oldest first."""
    out: list[object] = []
    waiting: dict[str, int] = {}
    for index, (row_id, prompt) in enumerate(rows):
        if prompt is None:
            out.append(SKIP)
            continue
        own = [s for s in stored if (s[0], s[1]) == (row_id, prompt)]
        ok = [s for s in own if s[2]]
        if ok or (own and not retry_failed):
            out.append((ok or own)[-1][3])  # ok before failed, then the newest
            continue
        same = {s[3] for s in stored if s[1] == prompt and s[2]}
        if dedupe and same:
            out.append(same)  # any ok answer to the same request will do
        elif dedupe and prompt in waiting:
            out.append(("dup", waiting[prompt]))
        else:
            waiting.setdefault(prompt, index)
            out.append(SEND)
    return out


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dedupe", [True, False])
@pytest.mark.parametrize("retry_failed", [True, False])
def test_random_plans_follow_the_rules(tmp_path, seed, dedupe, retry_failed):
    draw = random.Random(seed)
    prompts = [f"q{i}" for i in range(12)]
    ids = [f"id{i}" for i in range(40)]
    rows: Rows = [
        (row_id, None if draw.random() < 0.1 else draw.choice(prompts))
        for row_id in draw.sample(ids, 30)
    ]
    stored: list[tuple[str, str, bool, str]] = []
    folder = checkpoint_dir(tmp_path / f"out-{seed}.parquet")
    with Checkpoint(folder) as checkpoint:
        for run in range(draw.randint(1, 3)):
            part = []
            for _ in range(draw.randint(0, 25)):
                at = draw.randrange(40)
                row_id, prompt = rows[at] if at < len(rows) else (draw.choice(ids), None)
                if prompt is None or draw.random() < 0.3:  # a row stored elsewhere
                    row_id, prompt = draw.choice(ids), draw.choice(prompts)
                    at = draw.randrange(40)
                ok = draw.random() < 0.7
                tag = f"run{run}-{len(part)}"
                part.append(record(at, row_id, prompt, ok, tag))
                stored.append((row_id, prompt, ok, tag))
            if part:
                checkpoint.write_part(part)

    with Checkpoint(folder) as checkpoint:
        plan = plan_for(checkpoint, rows, dedupe=dedupe, retry_failed=retry_failed)
        taken = checkpoint.take(np.maximum(plan.loc, SEND)).to_pylist()

    want = expected_plan(rows, stored, dedupe=dedupe, retry_failed=retry_failed)
    got: list[object] = []
    for index, (loc, want_one) in enumerate(zip(plan.loc.tolist(), want, strict=True)):
        tag = taken[index]["response"] or taken[index]["error"]
        if loc <= DUPLICATE:
            got.append(("dup", DUPLICATE - loc))
        elif loc < 0:
            got.append(loc)
        else:
            got.append(tag if isinstance(want_one, (str, set)) else ("stored", tag))
    wrong = [
        (i, g, w)
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        if not (g in w if isinstance(w, set) else g == w)
    ]
    assert not wrong
