"""Where the output may go: never over a device, a folder, or under another format's name."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import aibatch
from aibatch.errors import UsageError
from aibatch.io.output import check_output


@pytest.mark.parametrize("name", ["answers.csv", "answers.jsonl", "answers.JSON", "a.tsv.gz"])
def test_an_output_named_for_another_format_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="aibatch writes Parquet"):
        check_output(tmp_path / name, [])


def test_an_existing_output_that_is_a_device_is_refused() -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        check_output(Path("/dev/null"), [])


def test_an_existing_output_that_is_a_pipe_is_refused(tmp_path: Path) -> None:
    pipe = tmp_path / "out.parquet"
    os.mkfifo(pipe)

    with pytest.raises(UsageError, match="not a regular file"):
        check_output(pipe, [])


def test_a_symlink_output_resolves_to_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "real" / "answers.parquet")

    assert check_output(link, []) == tmp_path / "real" / "answers.parquet"


def test_a_run_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "answers.parquet"
    link = tmp_path / "link.parquet"
    link.symlink_to(target)

    aibatch.run_file(source, link, emulate=True)

    assert link.is_symlink()
    assert pq.read_table(target).column("status").to_pylist() == ["ok"]
    assert (tmp_path / "real" / ".answers.parquet.aibatch").is_dir()


def test_a_run_with_a_device_output_leaves_the_device_alone(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")

    with pytest.raises(UsageError, match="not a regular file"):
        aibatch.run_file(source, "/dev/null", emulate=True)

    assert Path("/dev/null").is_char_device()


def test_opening_an_output_removes_its_own_stale_temp_files_and_no_others(tmp_path: Path) -> None:
    import pyarrow as pa

    from aibatch.io.output import OutputWriter

    own = tmp_path / ".out.parquet.4242.tmp"
    other = tmp_path / ".out.parquet.x.parquet.4242.tmp"  # another output's, in flight
    own.write_bytes(b"left by a crash")
    other.write_bytes(b"being written")

    with OutputWriter(tmp_path / "out.parquet", pa.schema([("a", pa.int64())])):
        pass

    assert not own.exists()
    assert other.read_bytes() == b"being written"


def test_only_columns_of_few_values_are_dictionary_encoded(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\n" + "".join(f"question {i}\n" for i in range(50)), encoding="utf-8")
    output = tmp_path / "out.parquet"

    aibatch.run_file(source, output, emulate=True)

    group = pq.ParquetFile(output).metadata.row_group(0)
    encodings = {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)
    }
    assert "RLE_DICTIONARY" in encodings["status"]
    assert "RLE_DICTIONARY" not in encodings["response"]
    assert "RLE_DICTIONARY" not in encodings["latency_ms"]
