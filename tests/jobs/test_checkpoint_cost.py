"""The checkpoint's cost column, its unsent rows and its read-only mode for dry runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from aibatch.jobs.checkpoint import SEND, SKIP, Checkpoint, records_table
from aibatch.types import RowResult, RowStatus


def result(row: int, **fields: object) -> RowResult:
    return RowResult(
        row=row,
        row_key=1000 + row,
        request_hash=2000 + row,
        sent_prompt=f"p{row}",
        status=RowStatus.OK,
        response=f"a{row}",
        **fields,  # type: ignore[arg-type]
    )


def plan_one(checkpoint: Checkpoint, row: int) -> np.ndarray:
    plan = checkpoint.plan(
        np.array([1000 + row], np.uint64), np.array([2000 + row], np.uint64), np.zeros(1, bool)
    )
    return plan.loc


def test_a_row_comes_back_with_its_cost(tmp_path: Path):
    with Checkpoint(tmp_path / "ck") as checkpoint:
        checkpoint.write_part([result(0, cost_usd=0.25)])
    with Checkpoint(tmp_path / "ck") as checkpoint:
        (cost,) = checkpoint.take(plan_one(checkpoint, 0)).column("cost_usd").to_pylist()

    assert cost == 0.25


def test_a_part_written_before_costs_existed_reads_its_cost_as_null(tmp_path: Path):
    old = records_table([result(0)]).drop_columns(["cost_usd"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    data = sink.getvalue().to_pybytes()
    parts = tmp_path / "ck" / "parts"
    parts.mkdir(parents=True)
    (parts / f"00000001-{hashlib.blake2b(data, digest_size=16).hexdigest()}.arrow").write_bytes(
        data
    )

    with Checkpoint(tmp_path / "ck") as checkpoint:
        row = checkpoint.take(plan_one(checkpoint, 0)).to_pylist()[0]

    assert (row["status"], row["response"], row["cost_usd"]) == ("ok", "a0", None)


def test_rows_left_to_send_come_out_unsent_and_empty_prompts_skipped(tmp_path: Path):
    with Checkpoint(tmp_path / "ck") as checkpoint:
        locs = checkpoint.write_part([result(0)])
        taken = checkpoint.take(np.array([SEND, locs[0], SKIP, SEND], np.int64))

    assert taken.column("status").to_pylist() == ["unsent", "ok", "skipped", "unsent"]


def test_a_read_only_checkpoint_makes_no_folder(tmp_path: Path):
    with Checkpoint(tmp_path / "ck", read_only=True) as checkpoint:
        loc = plan_one(checkpoint, 0)

    assert loc.tolist() == [SEND] and not (tmp_path / "ck").exists()
