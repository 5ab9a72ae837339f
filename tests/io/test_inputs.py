"""Input files as bounded, re-iterable batches; every problem an InputError with a place."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import math
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aibatch.errors import InputChanged, InputError, UsageError
from aibatch.io.inputs import (
    Batch,
    InputSource,
    detect_format,
    frame_source,
    open_input,
    spool_stdin,
)

ONE_MB = 1024 * 1024


def write(path: Path, content: str | bytes) -> str:
    """Write ``content`` exactly (no newline translation) and return the path as a string."""
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def write_parquet(path: Path, table: pa.Table, **kwargs: object) -> str:
    pq.write_table(table, path, **kwargs)
    return str(path)


def read_rows(source: InputSource) -> list[dict[str, object]]:
    return [row for batch in source.batches() for row in batch.data.to_pylist()]


def read_lines(source: InputSource) -> list[int]:
    lines: list[int] = []
    for batch in source.batches():
        assert batch.lines is not None
        lines += batch.lines
    return lines


def input_error(path: str, **kwargs: object) -> InputError:
    """The InputError that opening ``path`` and reading every row raises."""
    with pytest.raises(InputError) as caught:
        read_rows(open_input(path, **kwargs))  # type: ignore[arg-type]
    return caught.value


def csv_of(n: int) -> str:
    return "id,prompt\n" + "".join(f"{i},question {i}\n" for i in range(n))


def compress(data: str | bytes, kind: str) -> bytes:
    """``data`` compressed with gzip, bz2 or zstd."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, kind) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


# batches: bounds, starts and lines


def test_csv_rows_come_in_batches_of_at_most_batch_rows(tmp_path):
    source = open_input(write(tmp_path / "in.csv", csv_of(5)), batch_rows=2)

    batches = list(source.batches())

    assert [b.data.num_rows for b in batches] == [2, 2, 1]
    assert [b.start for b in batches] == [0, 2, 4]
    assert read_rows(source)[4] == {"id": "4", "prompt": "question 4"}


def test_csv_batches_are_all_strings_named_by_the_header(tmp_path):
    source = open_input(write(tmp_path / "in.csv", csv_of(2)))

    (batch,) = source.batches()

    assert source.columns == ["id", "prompt"]
    assert batch.data.schema == pa.schema([("id", pa.string()), ("prompt", pa.string())])
    assert source.schema() == batch.data.schema


def test_each_row_records_the_line_it_starts_on_past_multi_line_quoted_fields(tmp_path):
    text = 'id,prompt\n1,"two\nlines"\n2,plain\n3,"three\nline\nfield"\n4,last\n'
    source = open_input(write(tmp_path / "in.csv", text), batch_rows=3)

    assert read_lines(source) == [2, 4, 5, 8]
    assert [r["prompt"] for r in read_rows(source)] == [
        "two\nlines",
        "plain",
        "three\nline\nfield",
        "last",
    ]


def test_blank_lines_between_rows_are_skipped_and_line_numbers_stay_true(tmp_path):
    source = open_input(write(tmp_path / "in.csv", "prompt\nfirst\n\n\nsecond\n"))

    assert read_rows(source) == [{"prompt": "first"}, {"prompt": "second"}]
    assert read_lines(source) == [2, 5]


def test_crlf_line_endings_leave_no_carriage_return_in_values(tmp_path):
    source = open_input(write(tmp_path / "in.csv", "id,prompt\r\n1,a\r\n2,b\r\n"))

    assert read_rows(source) == [{"id": "1", "prompt": "a"}, {"id": "2", "prompt": "b"}]
    assert read_lines(source) == [2, 3]


def test_a_tsv_file_splits_on_tabs_and_keeps_commas(tmp_path):
    source = open_input(write(tmp_path / "in.tsv", "id\tprompt\n1\tfirst, second\n"))

    assert read_rows(source) == [{"id": "1", "prompt": "first, second"}]


def test_a_delimiter_splits_csv_fields_on_that_character(tmp_path):
    source = open_input(write(tmp_path / "in.csv", "id;prompt\n1;first, second\n"), delimiter=";")

    assert read_rows(source) == [{"id": "1", "prompt": "first, second"}]


@pytest.mark.parametrize("spelling", ["\\t", "tab", "TAB", "\t"])
def test_a_tab_delimiter_may_be_spelled_backslash_t_or_tab(tmp_path, spelling):
    source = open_input(
        write(tmp_path / "in.txt", "id\tprompt\n1\ta,b\n"), input_format="csv", delimiter=spelling
    )

    assert read_rows(source) == [{"id": "1", "prompt": "a,b"}]


@pytest.mark.parametrize("delimiter", [";;", "", "\n", '"'])
def test_a_delimiter_that_is_not_one_usable_character_is_an_input_error(tmp_path, delimiter):
    with pytest.raises(InputError, match="--delimiter takes one character"):
        open_input(write(tmp_path / "in.csv", csv_of(1)), delimiter=delimiter)


def test_a_delimiter_for_jsonl_input_is_an_input_error(tmp_path):
    path = write(tmp_path / "in.jsonl", '{"prompt": "a"}\n')

    with pytest.raises(InputError, match="--delimiter is for CSV and TSV"):
        open_input(path, delimiter=";")


def test_a_tsv_cell_in_quotes_is_that_text_quotes_kept(tmp_path):
    source = open_input(write(tmp_path / "in.tsv", 'id\tprompt\n1\t"To be" or not\n'))

    assert read_rows(source) == [{"id": "1", "prompt": '"To be" or not'}]


def test_a_tsv_line_is_a_row_though_a_quote_in_it_is_never_closed(tmp_path):
    source = open_input(write(tmp_path / "in.tsv", 'prompt\n"open quote\nnext\n'))

    assert read_rows(source) == [{"prompt": '"open quote'}, {"prompt": "next"}]
    assert read_lines(source) == [2, 3]


def test_quoting_csv_lets_a_quoted_tsv_field_hold_tabs_and_line_breaks(tmp_path):
    path = write(tmp_path / "in.tsv", 'id\tprompt\n1\t"a\tb\nc"\n')

    source = open_input(path, quoting="csv")

    assert read_rows(source) == [{"id": "1", "prompt": "a\tb\nc"}]


def test_quoting_none_keeps_the_quotes_of_a_csv(tmp_path):
    source = open_input(write(tmp_path / "in.csv", 'prompt\n"quoted"\n'), quoting="none")

    assert read_rows(source) == [{"prompt": '"quoted"'}]


def test_an_unknown_quoting_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="--quoting takes csv or none"):
        open_input(write(tmp_path / "in.csv", csv_of(1)), quoting="all")


def test_header_names_are_stripped_of_surrounding_spaces(tmp_path):
    source = open_input(write(tmp_path / "in.csv", " id , prompt \n1,a\n"))

    assert source.columns == ["id", "prompt"]


def test_jsonl_rows_come_in_bounded_batches_with_their_line_numbers(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}"}) for i in range(5)]
    text = "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n"
    source = open_input(write(tmp_path / "in.jsonl", text), batch_rows=2)

    batches = list(source.batches())

    assert [b.data.num_rows for b in batches] == [2, 2, 1]
    assert [b.start for b in batches] == [0, 2, 4]
    assert read_lines(source) == [1, 2, 4, 5, 6]
    assert [r["prompt"] for r in read_rows(source)] == ["q0", "q1", "q2", "q3", "q4"]


def test_parquet_rows_come_in_bounded_batches_without_line_numbers(tmp_path):
    table = pa.table({"prompt": [f"q{i}" for i in range(5)]})
    source = open_input(write_parquet(tmp_path / "in.parquet", table), batch_rows=2)

    batches = list(source.batches())

    assert [b.data.num_rows for b in batches] == [2, 2, 1]
    assert [b.start for b in batches] == [0, 2, 4]
    assert all(b.lines is None for b in batches)
    assert batches[1].line_of(1) == (None, 3)


def test_line_of_gives_the_line_and_the_input_row_of_a_batch_row():
    batch = Batch(pa.record_batch({"prompt": ["a", "b"]}), start=10, lines=[12, 15])

    assert batch.line_of(1) == (15, 11)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.csv", csv_of(7)),
        ("in.tsv", csv_of(7).replace(",", "\t")),
        ("in.jsonl", "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(7))),
    ],
)
def test_a_text_source_gives_the_same_rows_every_time_it_is_read(tmp_path, name, content):
    source = open_input(write(tmp_path / name, content), batch_rows=3)

    first = read_rows(source)
    second = read_rows(source)

    assert len(first) == 7
    assert second == first


def test_a_parquet_source_gives_the_same_rows_every_time_it_is_read(tmp_path):
    table = pa.table({"id": list(range(7)), "prompt": [f"q{i}" for i in range(7)]})
    source = open_input(write_parquet(tmp_path / "in.parquet", table), batch_rows=3)

    assert read_rows(source) == read_rows(source) == table.to_pylist()


# compressed input

JSONL_7 = "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(7))


@pytest.mark.parametrize(
    ("name", "kind", "content"),
    [
        ("prompts.csv.gz", "gzip", csv_of(7)),
        ("x.jsonl.zst", "zstd", JSONL_7),
        ("x.tsv.bz2", "bz2", csv_of(7).replace(",", "\t")),
    ],
)
def test_a_compressed_file_reads_as_its_inner_format_with_true_lines(tmp_path, name, kind, content):
    plain = open_input(write(tmp_path / name.rsplit(".", 1)[0], content), batch_rows=3)
    source = open_input(write(tmp_path / name, compress(content, kind)), batch_rows=3)

    assert read_rows(source) == read_rows(plain)
    assert read_lines(source) == read_lines(plain)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bz2"])
def test_a_csv_that_is_really_compressed_is_told_by_its_first_bytes(tmp_path, kind):
    source = open_input(write(tmp_path / "in.csv", compress(csv_of(3), kind)))

    assert [row["prompt"] for row in read_rows(source)] == [
        "question 0",
        "question 1",
        "question 2",
    ]


def test_a_bad_row_in_a_compressed_file_is_named_by_its_line(tmp_path):
    path = write(tmp_path / "in.csv.gz", compress(csv_of(5) + "oops,too,many\n", "gzip"))

    assert input_error(path, batch_rows=2).line == 7


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bz2"])
def test_a_compressed_file_cut_short_is_an_input_error_saying_so(tmp_path, kind):
    data = compress(csv_of(20_000), kind)
    path = write(tmp_path / "in.csv", data[: len(data) // 2])

    with pytest.raises(InputError, match=f"the {kind} data is damaged or cut short"):
        read_rows(open_input(path))


def test_compressed_standard_input_reads_once_spooled(tmp_path, monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(compress(csv_of(2), "gzip")))
    monkeypatch.setattr(sys, "stdin", stdin)

    path = spool_stdin(tmp_path)

    source = open_input(str(path), input_format="csv", name="<stdin>")
    assert [row["id"] for row in read_rows(source)] == ["0", "1"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS")
def test_a_large_zstd_file_is_read_in_constant_memory(tmp_path):
    size, row = 160 * ONE_MB, "x" * (10_000 - 1) + "\n"
    path = tmp_path / "big.csv.zst"
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(b"prompt\n")
        for _ in range(size // ONE_MB):
            out.write((row * (ONE_MB // len(row))).encode())
    source = open_input(str(path), batch_rows=100)
    before = peak = rss_bytes()

    for _ in source.batches():
        peak = max(peak, rss_bytes())

    # A read of the whole stream would hold it twice (bytes, then text): 320 MB.
    assert peak - before < 96 * ONE_MB


# a file that changes while a job reads it

CHANGING = [
    ("in.csv", lambda rows: ("id,prompt\n" + "".join(f"{i},q{i}\n" for i in rows)).encode()),
    (  # stored, not deflated: the same size whatever the order
        "in.csv.gz",
        lambda rows: gzip.compress(
            ("prompt\n" + "".join(f"q{i}\n" for i in rows)).encode(), compresslevel=0, mtime=0
        ),
    ),
    ("in.jsonl", lambda rows: "".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in rows)),
    ("in.parquet", None),
]


def write_rows(path: Path, rows: list[int]) -> None:
    """Write rows numbered ``rows`` in ``path``'s format, in place (the same inode)."""
    make = dict(CHANGING)[path.name]
    if make is None:
        table = pa.table({"prompt": [f"q{i:02d}" for i in rows]})
        with path.open("r+b" if path.exists() else "wb") as handle:
            handle.truncate()
            pq.write_table(table, handle, compression="none")
    else:
        write(path, make(rows))


def rewrite_keeping_size_and_time(path: Path, rows: list[int]) -> None:
    """Rewrite ``path`` in place, then put its modification time back (as cp -p does)."""
    before = path.stat()
    write_rows(path, rows)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_ino) == (before.st_size, before.st_ino)


@pytest.mark.parametrize("name", [name for name, _ in CHANGING])
def test_a_read_after_the_rows_were_reordered_in_place_at_the_same_time_is_refused(tmp_path, name):
    path = tmp_path / name
    write_rows(path, list(range(20)))
    source = open_input(str(path), batch_rows=3)
    read_rows(source)
    rewrite_keeping_size_and_time(path, list(range(19, -1, -1)))

    with pytest.raises(InputChanged, match="changed while aibatch was running") as caught:
        read_rows(source)

    assert caught.value.path == str(path)
    assert "run the same command again" in str(caught.value)


@pytest.mark.parametrize("name", [name for name, _ in CHANGING])
def test_a_read_after_rows_were_appended_is_refused(tmp_path, name):
    path = tmp_path / name
    write_rows(path, list(range(20)))
    source = open_input(str(path), batch_rows=3)
    read_rows(source)
    write_rows(path, list(range(25)))

    with pytest.raises(InputChanged, match="its size went from"):
        read_rows(source)


@pytest.mark.parametrize("name", [name for name, _ in CHANGING])
def test_an_untouched_file_reads_the_same_three_times(tmp_path, name):
    path = tmp_path / name
    write_rows(path, list(range(20)))
    source = open_input(str(path), batch_rows=3)

    reads = [read_rows(source) for _ in range(3)]

    assert reads[0] == reads[1] == reads[2]


def test_a_file_changed_during_the_first_read_is_refused_at_its_end(tmp_path):
    path = tmp_path / "in.csv"
    write_rows(path, list(range(20)))
    source = open_input(str(path), batch_rows=3)
    batches = source.batches()
    next(batches)
    write_rows(path, list(range(30)))

    with pytest.raises(InputChanged):
        list(batches)


def test_check_unchanged_stats_the_file_without_reading_it(tmp_path):
    path = tmp_path / "in.csv"
    write_rows(path, list(range(20)))
    source = open_input(str(path))
    source.check_unchanged()
    write_rows(path, list(range(21)))

    with pytest.raises(InputChanged, match="its size went from"):
        source.check_unchanged()


def test_a_file_replaced_by_another_is_refused_though_its_bytes_are_the_same(tmp_path):
    path = tmp_path / "in.csv"
    write_rows(path, list(range(20)))
    source = open_input(str(path))
    read_rows(source)
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)

    with pytest.raises(InputChanged, match="another file"):
        read_rows(source)


def test_a_file_deleted_after_a_read_is_an_input_changed_error(tmp_path):
    path = tmp_path / "in.jsonl"
    write_rows(path, list(range(3)))
    source = open_input(str(path))
    read_rows(source)
    path.unlink()

    with pytest.raises(InputChanged, match="deleted or moved"):
        read_rows(source)


# limit


def test_limit_keeps_only_the_first_rows_and_their_lines(tmp_path):
    source = open_input(write(tmp_path / "in.csv", csv_of(10)), batch_rows=2, limit=3)

    batches = list(source.batches())

    assert [b.data.num_rows for b in batches] == [2, 1]
    assert [r["id"] for r in read_rows(source)] == ["0", "1", "2"]
    assert read_lines(source) == [2, 3, 4]


def test_limit_larger_than_the_input_keeps_every_row(tmp_path):
    source = open_input(write(tmp_path / "in.csv", csv_of(3)), limit=100)

    assert len(read_rows(source)) == 3


def test_limit_zero_gives_no_rows(tmp_path):
    source = open_input(write(tmp_path / "in.csv", csv_of(3)), limit=0)

    assert read_rows(source) == []


def test_limit_applies_to_parquet_too(tmp_path):
    table = pa.table({"prompt": [f"q{i}" for i in range(10)]})
    source = open_input(write_parquet(tmp_path / "in.parquet", table), batch_rows=4, limit=5)

    assert [r["prompt"] for r in read_rows(source)] == ["q0", "q1", "q2", "q3", "q4"]


def test_limit_does_not_read_a_batch_past_the_limit(tmp_path):
    # Rows 1 and 2 fill the first batch exactly; line 5 (row 4) is ragged.
    path = write(tmp_path / "in.csv", "prompt\nr1\nr2\nr3\nr4,extra\n")
    source = open_input(path, batch_rows=2, limit=2)

    assert read_rows(source) == [{"prompt": "r1"}, {"prompt": "r2"}]


# byte-order mark


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_csv_column_name(tmp_path):
    source = open_input(write(tmp_path / "in.csv", b"\xef\xbb\xbfprompt,id\nhello,1\n"))

    assert source.columns == ["prompt", "id"]
    assert read_rows(source) == [{"prompt": "hello", "id": "1"}]


def test_a_utf8_byte_order_mark_does_not_break_the_first_json_line(tmp_path):
    source = open_input(write(tmp_path / "in.jsonl", b'\xef\xbb\xbf{"prompt": "hello"}\n'))

    assert read_rows(source) == [{"prompt": "hello"}]


@pytest.mark.parametrize(
    ("codec", "bom"),
    [
        ("utf-16-le", b"\xff\xfe"),
        ("utf-16-be", b"\xfe\xff"),
        ("utf-32-le", b"\xff\xfe\x00\x00"),
        ("utf-32-be", b"\x00\x00\xfe\xff"),
    ],
)
def test_a_utf16_or_utf32_file_with_a_byte_order_mark_reads_as_such(tmp_path, codec, bom):
    text = 'prompt,id\n"café\nau lait",1\n😀,2\n'
    source = open_input(write(tmp_path / "in.csv", bom + text.encode(codec)))

    assert read_rows(source) == [
        {"prompt": "café\nau lait", "id": "1"},
        {"prompt": "😀", "id": "2"},
    ]
    assert read_lines(source) == [2, 4]


def test_a_compressed_utf16_jsonl_file_reads(tmp_path):
    data = compress('{"prompt": "naïve"}\n'.encode("utf-16"), "gzip")

    assert read_rows(open_input(write(tmp_path / "in.jsonl.gz", data))) == [{"prompt": "naïve"}]


def test_utf16_without_a_byte_order_mark_is_named_instead_of_suggesting_latin1(tmp_path):
    path = write(tmp_path / "in.csv", "prompt\ncafé\n".encode("utf-16-le"))

    reason = input_error(path).reason

    assert "UTF-16 without a byte-order mark: pass --encoding utf-16-le" in reason
    assert "latin-1" not in reason


def test_an_ascii_utf16_header_without_a_byte_order_mark_is_named_not_taken_as_names(tmp_path):
    path = write(tmp_path / "in.csv", "prompt,id\nhello,1\n".encode("utf-16-be"))

    with pytest.raises(InputError, match="pass --encoding utf-16-be") as caught:
        open_input(path)

    assert caught.value.line == 1


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4F\x02\x00!\x01", "xz-compressed"),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb8\xe4", "zip archive"),
        (compress(compress(csv_of(3), "gzip"), "gzip"), "gzip-compressed twice"),
    ],
    ids=["xz", "xlsx", "gzip-twice"],
)
def test_undecodable_bytes_that_look_compressed_say_so(tmp_path, data, said):
    reason = input_error(write(tmp_path / "in.csv", data)).reason

    assert said in reason
    assert "latin-1" not in reason


# errors: the file itself


def test_a_missing_file_is_an_input_error_naming_it(tmp_path):
    path = str(tmp_path / "missing.csv")

    with pytest.raises(InputError, match="no such file") as caught:
        open_input(path)

    assert caught.value.path == path
    assert isinstance(caught.value, UsageError)


def test_a_directory_is_an_input_error(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()

    with pytest.raises(InputError, match="is a directory") as caught:
        open_input(str(folder))

    assert caught.value.path == str(folder)


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl", "in.parquet"])
def test_an_empty_file_is_an_input_error(tmp_path, name):
    path = write(tmp_path / name, b"")

    with pytest.raises(InputError, match="is empty") as caught:
        open_input(path)

    assert caught.value.line is None


def test_a_csv_header_without_rows_is_an_input_error_when_read(tmp_path):
    source = open_input(write(tmp_path / "in.csv", "id,prompt\n"))

    with pytest.raises(InputError, match="has a header but no rows"):
        read_rows(source)


def test_a_jsonl_file_of_blank_lines_is_an_input_error(tmp_path):
    error = input_error(write(tmp_path / "in.jsonl", "\n  \n\n"))

    assert "no JSON objects" in error.reason


def test_a_parquet_file_without_rows_is_an_input_error(tmp_path):
    table = pa.table({"prompt": pa.array([], pa.string())})

    error = input_error(write_parquet(tmp_path / "in.parquet", table))

    assert "has no rows" in error.reason


def test_a_file_that_is_not_parquet_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_input(write(tmp_path / "in.parquet", csv_of(2)))


def test_an_unknown_extension_is_an_input_error_suggesting_input_format(tmp_path):
    path = write(tmp_path / "in.txt", csv_of(1))

    with pytest.raises(InputError, match="--input-format") as caught:
        open_input(path)

    assert "'.txt'" in str(caught.value)


def test_input_format_overrides_the_extension(tmp_path):
    source = open_input(write(tmp_path / "in.txt", csv_of(2)), input_format="csv")

    assert len(read_rows(source)) == 2


def test_an_unknown_input_format_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown input format 'xlsx'"):
        open_input(write(tmp_path / "in.csv", csv_of(1)), input_format="xlsx")


# errors: the header


def test_a_header_naming_a_column_twice_is_an_input_error_listing_the_names(tmp_path):
    path = write(tmp_path / "in.csv", "id,prompt,id,note,prompt\n1,a,2,b,c\n")

    with pytest.raises(InputError) as caught:
        open_input(path)

    assert caught.value.line == 1
    assert "twice: id, prompt" in caught.value.reason


def test_a_header_column_without_a_name_is_an_input_error_at_its_position(tmp_path):
    path = write(tmp_path / "in.csv", "id, ,prompt\n1,2,3\n")

    with pytest.raises(InputError, match="no name") as caught:
        open_input(path)

    assert (caught.value.line, caught.value.column) == (1, 2)


def test_empty_nameless_columns_at_the_end_of_the_header_are_dropped(tmp_path):
    source = open_input(write(tmp_path / "in.csv", "prompt,id,,,\r\na,1,,,\r\nb,2,, ,\r\n"))

    assert source.columns == ["prompt", "id"]
    assert read_rows(source) == [{"prompt": "a", "id": "1"}, {"prompt": "b", "id": "2"}]


def test_a_value_under_a_nameless_column_is_an_input_error_at_its_line_and_column(tmp_path):
    path = write(tmp_path / "in.csv", "prompt,id,,\na,1,,\nb,2,,stray\n")

    error = input_error(path)

    assert (error.line, error.column) == (3, 4)
    assert "no name" in error.reason


def test_a_blank_first_line_is_not_taken_for_a_header_without_columns(tmp_path):
    path = write(tmp_path / "in.csv", "\nprompt\nhello\n")

    try:
        source = open_input(path)
    except InputError as exc:
        assert exc.line == 1
    else:
        assert source.columns == ["prompt"]


# errors: rows


def test_a_row_with_too_many_fields_is_an_input_error_at_its_line(tmp_path):
    path = write(tmp_path / "in.csv", "id,prompt\n1,a\n2,b,extra\n3,c\n")

    error = input_error(path)

    assert error.line == 3
    assert "expected 2 fields" in error.reason
    assert "found 3" in error.reason


def test_a_row_with_too_few_fields_after_a_multi_line_field_is_placed_on_its_own_line(tmp_path):
    path = write(tmp_path / "in.csv", 'id,prompt\n1,"x\ny\nz"\nlonely\n')

    assert input_error(path).line == 5


def test_a_ragged_row_in_a_later_batch_keeps_its_true_line(tmp_path):
    path = write(tmp_path / "in.csv", csv_of(5) + "oops\n")

    assert input_error(path, batch_rows=2).line == 7


def test_an_unterminated_quote_is_an_input_error_at_the_line_where_its_row_starts(tmp_path):
    path = write(tmp_path / "in.csv", 'id,prompt\n1,"fine"\n2,"never closed\n3,more\n')

    error = input_error(path)

    assert error.line == 3
    assert "malformed CSV" in error.reason


def test_bytes_that_are_not_utf8_give_the_line_and_suggest_encoding(tmp_path):
    path = write(tmp_path / "in.csv", b"prompt\nok\nok\ncaf\xe9\nok\n")

    error = input_error(path)

    assert error.line == 4
    assert "--encoding" in error.reason
    assert "byte 4" in error.reason


def test_bytes_that_are_not_utf8_deep_in_a_large_file_give_their_line(tmp_path):
    # Far past the first read buffer, so the error comes while reading rows.
    body = b"".join(b"row %d\n" % i for i in range(20_000))
    path = write(tmp_path / "in.csv", b"prompt\n" + body + b"\xff\n")

    assert input_error(path, batch_rows=1000).line == 20_002


def test_latin1_encoding_reads_the_file_that_utf8_rejects(tmp_path):
    path = write(tmp_path / "in.csv", b"prompt\nok\ncaf\xe9\n")

    source = open_input(path, encoding="latin-1")

    assert read_rows(source) == [{"prompt": "ok"}, {"prompt": "café"}]


def test_bytes_that_are_not_utf8_in_jsonl_give_the_line(tmp_path):
    path = write(tmp_path / "in.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')

    error = input_error(path)

    assert error.line == 2
    assert "--encoding" in error.reason


def test_an_unknown_encoding_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown encoding"):
        open_input(write(tmp_path / "in.csv", csv_of(1)), encoding="no-such-codec")


def test_an_invalid_json_line_is_an_input_error_at_its_line_and_column(tmp_path):
    path = write(tmp_path / "in.jsonl", '{"prompt": "a"}\n\n{"prompt": "b",}\n')

    error = input_error(path)

    assert (error.line, error.column) == (3, 16)
    assert "invalid JSON" in error.reason


@pytest.mark.parametrize("value", ['["a", "b"]', '"just text"', "42", "null"])
def test_a_json_line_that_is_not_an_object_is_an_input_error(tmp_path, value):
    path = write(tmp_path / "in.jsonl", '{"prompt": "a"}\n' + value + "\n")

    error = input_error(path)

    assert error.line == 2
    assert "JSON object" in error.reason


def test_an_input_error_message_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "in.jsonl", '{"a": }\n')

    message = str(input_error(path))

    assert message.startswith(f"{path}, line 1, column 7: invalid JSON")


@pytest.mark.parametrize(
    "line",
    ['{"prompt": "a", "prompt": "b"}', '{"prompt": "a", "meta": {"k": 1, "k": 2}}'],
    ids=["top-level", "nested"],
)
def test_a_key_twice_in_a_json_object_is_an_input_error_naming_line_and_key(tmp_path, line):
    path = write(tmp_path / "in.jsonl", '{"prompt": "fine"}\n' + line + "\n")

    error = input_error(path)

    assert error.line == 2
    assert "twice" in error.reason
    assert ("'prompt'" if "meta" not in line else "'k'") in error.reason


# JSONL values and columns


def test_jsonl_values_that_are_not_strings_are_kept_as_json_text(tmp_path):
    record = {
        "s": "text",
        "i": 1,
        "f": 1.5,
        "b": True,
        "o": {"k": "é"},
        "l": [1, "x"],
        "z": None,
    }
    source = open_input(write(tmp_path / "in.jsonl", json.dumps(record) + "\n"))

    (row,) = read_rows(source)

    assert row == {
        "s": "text",
        "i": "1",
        "f": "1.5",
        "b": "true",
        "o": '{"k": "é"}',
        "l": '[1, "x"]',
        "z": None,
    }


def test_a_jsonl_key_first_seen_late_becomes_a_column_null_before(tmp_path):
    lines = ['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c", "id": "3"}']
    source = open_input(write(tmp_path / "in.jsonl", "\n".join(lines) + "\n"))

    assert read_rows(source) == [
        {"prompt": "a", "id": None},
        {"prompt": "b", "id": None},
        {"prompt": "c", "id": "3"},
    ]
    assert source.columns == ["prompt", "id"]


def test_after_one_full_read_every_jsonl_batch_has_every_column(tmp_path):
    lines = ['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c", "id": "3"}']
    source = open_input(write(tmp_path / "in.jsonl", "\n".join(lines) + "\n"), batch_rows=1)
    read_rows(source)

    batches = list(source.batches())

    assert [b.data.schema.names for b in batches] == [["prompt", "id"]] * 3
    assert source.schema() == pa.schema([("prompt", pa.string()), ("id", pa.string())])
    assert [r["id"] for r in read_rows(source)] == [None, None, "3"]


# Parquet types


def test_parquet_columns_keep_their_types(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "score": pa.array([0.5, None], pa.float64()),
            "flag": pa.array([True, False]),
            "prompt": pa.array(["a", "b"]),
            "tags": pa.array([["x"], []], pa.list_(pa.string())),
        }
    )
    source = open_input(write_parquet(tmp_path / "in.parquet", table))

    (batch,) = source.batches()

    assert source.schema() == table.schema
    assert batch.data.schema == table.schema
    assert batch.data.to_pylist() == table.to_pylist()


def test_parquet_pandas_metadata_is_dropped_from_schema_and_batches(tmp_path):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"prompt": ["a", "b"]})
    path = tmp_path / "in.parquet"
    frame.to_parquet(path, index=False)
    source = open_input(str(path))

    (batch,) = source.batches()

    assert source.schema().metadata is None
    assert batch.data.schema.metadata is None


# DataFrames


def test_a_frame_column_of_mixed_python_types_is_sent_as_text_with_a_warning(caplog):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"prompt": ["a", 1, 2.5, None, math.nan], "n": [1, 2, 3, 4, 5]})

    with caplog.at_level(logging.WARNING, logger="aibatch.io.inputs"):
        source = frame_source(frame)

    assert read_rows(source) == [
        {"prompt": "a", "n": 1},
        {"prompt": "1", "n": 2},
        {"prompt": "2.5", "n": 3},
        {"prompt": None, "n": 4},
        {"prompt": None, "n": 5},
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "column prompt holds values of several types: sent as text"
    ]


def test_a_frame_column_of_ints_beside_floats_sends_each_value_as_it_prints():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"prompt": pandas.Series([1, 2.5], dtype=object)})

    assert [row["prompt"] for row in read_rows(frame_source(frame))] == ["1", "2.5"]


def test_a_frame_column_of_decimals_keeps_each_decimals_own_digits():
    pandas = pytest.importorskip("pandas")
    from decimal import Decimal

    frame = pandas.DataFrame({"prompt": [Decimal("1.10"), Decimal("2")]})

    assert [row["prompt"] for row in read_rows(frame_source(frame))] == ["1.10", "2"]


def test_a_frame_column_that_cannot_be_sent_is_an_input_error_naming_it():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"prompt": ["a"], "z": [1 + 2j]})

    with pytest.raises(InputError, match="cannot be sent") as caught:
        frame_source(frame)

    assert caught.value.column == "z"
    assert "\n" not in str(caught.value)


def test_a_frame_naming_a_column_twice_is_an_input_error():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame([["a", "b"]], columns=["prompt", "prompt"])

    with pytest.raises(InputError, match="names a column twice: prompt"):
        frame_source(frame)


# Values that must survive exactly


def test_a_tsv_cell_that_looks_csv_quoted_warns_once_per_column(tmp_path, caplog):
    path = write(tmp_path / "in.tsv", 'prompt\tn\n"He said ""hi"""\t1\n"again"\t2\n')

    with caplog.at_level(logging.WARNING, logger="aibatch.io.text"):
        rows = read_rows(open_input(path))

    assert rows[0]["prompt"] == '"He said ""hi"""'
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "--quoting csv" in warnings[0] and "line 2, column 1" in warnings[0]


def test_a_jsonl_read_that_limit_stops_early_knows_its_columns(tmp_path):
    path = write(tmp_path / "in.jsonl", "".join(f'{{"prompt": "p{i}"}}\n' for i in range(30)))
    source = open_input(path, limit=2, batch_rows=1)

    list(source.batches())

    assert source.columns == ["prompt"]


def test_a_jsonl_file_of_empty_objects_says_so(tmp_path):
    path = write(tmp_path / "in.jsonl", "{}\n{}\n")

    with pytest.raises(InputError, match="only empty objects"):
        list(open_input(path).batches())


def test_a_one_megabyte_csv_field_round_trips(tmp_path):
    big = "x" * ONE_MB + ',"quoted"\n' + "y" * 100
    text = 'id,prompt\n1,"' + big.replace('"', '""') + '"\n2,small\n'
    source = open_input(write(tmp_path / "in.csv", text))

    rows = read_rows(source)

    assert rows[0]["prompt"] == big
    assert rows[1] == {"id": "2", "prompt": "small"}


def test_a_one_megabyte_jsonl_field_round_trips(tmp_path):
    big = "é" * ONE_MB
    source = open_input(write(tmp_path / "in.jsonl", json.dumps({"prompt": big}) + "\n"))

    assert read_rows(source) == [{"prompt": big}]


def test_nul_and_newlines_in_a_csv_field_round_trip(tmp_path):
    value = "a\x00b\nc\r\nd"
    text = 'id,prompt\n1,"' + value + '"\n2,next\n'
    source = open_input(write(tmp_path / "in.csv", text))

    rows = read_rows(source)

    assert rows[0]["prompt"] == value
    assert rows[1]["prompt"] == "next"


def test_nul_and_newlines_in_a_jsonl_field_round_trip(tmp_path):
    value = "a\x00b\nc\r\nd"
    source = open_input(write(tmp_path / "in.jsonl", json.dumps({"prompt": value}) + "\n"))

    assert read_rows(source) == [{"prompt": value}]


def test_nul_and_newlines_in_a_parquet_field_round_trip(tmp_path):
    value = "a\x00b\nc\r\nd"
    table = pa.table({"prompt": [value]})
    source = open_input(write_parquet(tmp_path / "in.parquet", table))

    assert read_rows(source) == [{"prompt": value}]


# detect_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.CSV", "csv"),
        ("a.tsv", "tsv"),
        ("a.tab", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("dir.d/a.b.csv", "csv"),
        ("prompts.csv.gz", "csv"),
        ("x.jsonl.zst", "jsonl"),
        ("x.TSV.BZ2", "tsv"),
    ],
)
def test_detect_format_reads_the_extension(name, fmt):
    assert detect_format(name) == fmt


@pytest.mark.parametrize(("name", "shown"), [("a.xlsx", "'.xlsx'"), ("a", "no extension")])
def test_detect_format_rejects_an_unknown_extension_naming_it(name, shown):
    with pytest.raises(InputError) as caught:
        detect_format(name)

    assert shown in str(caught.value)
    assert caught.value.path == name


# the name errors use


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.csv", "prompt\nok\nnot,ok\n"),
        ("in.csv", b"prompt\ncaf\xe9\n"),
        ("in.jsonl", '{"prompt": }\n'),
        ("in.csv", "prompt\n"),
    ],
    ids=["ragged", "not-utf8", "bad-json", "no-rows"],
)
def test_a_row_error_names_the_input_by_its_display_name(tmp_path, name, content):
    path = write(tmp_path / name, content)

    error = input_error(path, name="<stdin>")

    assert error.path == "<stdin>"
    assert str(error).startswith("<stdin>")


@pytest.mark.parametrize(
    ("name", "content", "options"),
    [
        ("in.csv", b"", {}),
        ("in.csv", "prompt\nhi\n", {"encoding": "no-such-codec"}),
        ("in.parquet", "prompt\nhi\n", {}),
    ],
    ids=["empty", "unknown-encoding", "not-parquet"],
)
def test_an_error_on_opening_names_the_input_by_its_display_name(tmp_path, name, content, options):
    path = write(tmp_path / name, content)

    with pytest.raises(InputError) as caught:
        open_input(path, name="<stdin>", **options)

    assert caught.value.path == "<stdin>"
