"""Bad input, generated: CSV, JSONL and Parquet files with whatever hypothesis draws.

Random unicode, quotes, embedded newlines and NULs, 1 MB fields, line breaks and spaces
in column names, mixed and binary types, blank lines, byte-order marks, JSON of any
shape. Each generator is told up front which input to make, so each test expects one
outcome only:

- a *good* input (every defect left out) must round-trip: every prompt, and every other
  column, byte for byte into the output, each answer its own prompt's, identical
  prompts sent once;
- an input with *one named defect* (a column named twice, a ragged row, a lone
  surrogate, bytes that are not UTF-8, ...) must be refused before anything is sent:
  exit 2 and one line ``aibatch: error: ...``, no output file.

Never a traceback: ``CliRunner(catch_exceptions=False)`` lets any exception aibatch did
not handle fail the test. Hand-made inputs at the end pin the cases that were once bugs.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aibatch.io.output import OUTPUT_SCHEMA
from aibatch.providers.emulator import Emulator, answer_for
from tests.conftest import emulator_in_thread

from .checks import invoke, tally

RESULT_COLUMNS = sorted(OUTPUT_SCHEMA.names)
MB = 1_000_000
NOT_PROMPT = "not the prompt"  # longer than any drawn name: never clashes with one
SETTINGS = {
    "deadline": None,
    "derandomize": True,  # the same examples in CI every time
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
GOOD = settings(max_examples=30, **SETTINGS)
BAD = settings(max_examples=4, **SETTINGS)


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    """One fault-free emulator for every example of the module."""
    with emulator_in_thread() as emu:
        yield emu


@dataclass
class Good:
    """A good input's columns as the output must hold them, and the options to run it."""

    columns: dict[str, list[Any]]
    options: list[str] = field(default_factory=list)


def sent_text(value: Any) -> str | None:
    """The prompt a cell becomes: text as is, bytes decoded, other scalars as their text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def output_of(source: Path) -> Path:
    return source.with_name(f"{source.stem}.responses.parquet")


def assert_round_trips(server: Emulator, source: Path, good: Good) -> None:
    """Exit 0; the input's columns byte for byte; each answer its own prompt's."""
    chats = server.stats.chat_requests
    result = invoke("run", source, "--base-url", server.base_url, "-q", *good.options)
    assert result.exit_code == 0, result.stderr[-2000:]
    table = pq.read_table(output_of(source))
    for name, values in good.columns.items():
        assert table.column(name).to_pylist() == values, name
    sent = [sent_text(p) for p in good.columns["prompt"]]
    results = table.select(["sent_prompt", "response", "status"]).to_pylist()
    for row, text in zip(results, sent, strict=True):
        if not text or text.isspace():
            assert row == {"sent_prompt": None, "response": None, "status": "skipped"}
        else:
            assert row == {"sent_prompt": text, "response": answer_for(text), "status": "ok"}
    to_send = {text for text in sent if text and not text.isspace()}
    assert server.stats.chat_requests - chats == len(to_send), "identical prompts go once"
    tally(bad_inputs_tried=1)


def assert_refused(server: Emulator, source: Path, options: list[str]) -> str:
    """Exit 2 with one line ``aibatch: error: ...``; nothing sent, no output. The line."""
    before = (server.stats.chat_requests, server.stats.token_requests)
    result = invoke("run", source, "--base-url", server.base_url, "-q", *options)
    assert (result.exit_code, result.stdout) == (2, ""), result.stderr[-500:]
    assert result.stderr.startswith("aibatch: error: "), result.stderr[:500]
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert (server.stats.chat_requests, server.stats.token_requests) == before
    assert not output_of(source).exists()
    tally(bad_inputs_tried=1)
    return result.stderr


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="aibatch-chaos-")


# Pieces that break naive parsers, and whole cells made of them.
TRICKY = st.sampled_from(
    ['"', "'", ",", "\n", "\r", "\r\n", "\x00", "\t", " ", "\\", "\ufeff", "\u2028", "é", "😀"]
)
CELL = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(TRICKY, st.text(max_size=3)), max_size=8).map("".join),
)
# A column name: line breaks, quotes and spaces included. Not a byte-order mark (at the
# start of a file it is not part of the first name) nor NUL (a header of NULs reads as
# UTF-16 without its mark, and is refused as such).
NAME = st.text(
    st.characters(codec="utf-8", exclude_characters="\ufeff\x00"), min_size=1, max_size=8
)


@st.composite
def long_text(draw: st.DrawFn, *, cheap: bool) -> str:
    """About 1 MB. ``cheap``: stays under the emulator's 1 MiB request body once JSON-encoded."""
    seed = draw(
        st.text(
            alphabet="abc ,.;" if cheap else st.characters(codec="utf-8"), min_size=1, max_size=6
        )
    )
    text = (seed * (MB // len(seed) + 1))[:MB]
    extras = draw(st.lists(TRICKY, max_size=5))
    return text + "".join(extras)


@st.composite
def good_names(draw: st.DrawFn, *, stripped: bool, ids: bool = False) -> list[str]:
    """Column names, ``prompt`` among them, none a result column's, none twice.

    ``stripped``: names as CSV reads them, without surrounding spaces, none blank.
    ``ids``: an ``id`` column among them.
    """

    def key(name: str) -> str:
        return name.strip() if stripped else name

    others = draw(
        st.lists(st.sampled_from(["id", "note"]) | NAME, max_size=3, unique_by=key).map(
            lambda names: [
                n
                for n in names
                if key(n) not in ("prompt", *RESULT_COLUMNS) and (key(n) or not stripped)
            ]
        )
    )
    if ids and "id" not in map(key, others):
        others.append("id")
    return draw(st.permutations(["prompt", *others]))


def column_of(names: list[str], wanted: str) -> int:
    return [name.strip() for name in names].index(wanted)


# CSV

CSV_DEFECTS = [
    "a column named twice",
    "a column with no name",
    "a result column's name",
    "no prompt column",
    "a ragged row",
    "an unterminated quote",
    "text after a closing quote",
    "bytes that are not UTF-8",
    "a header but no rows",
    "a repeated id",
    "a row without an id",
]
CSV_ID_DEFECTS = ("a repeated id", "a row without an id")


@st.composite
def csv_files(draw: st.DrawFn, defect: str | None) -> tuple[bytes, Good | None, list[str]]:
    """A CSV file with ``defect`` (one of :data:`CSV_DEFECTS`), or good with ``None``.

    Returns the bytes, what a good file's output holds (``None`` with a defect), and the
    options to run it with.
    """
    header = draw(good_names(stripped=True, ids=defect in CSV_ID_DEFECTS))
    names = [name.strip() for name in header]
    header = [f" {n}\t" if n == "prompt" and draw(st.booleans()) else n for n in header]
    width = len(header)
    rows = [
        draw(st.lists(CELL, min_size=width, max_size=width))
        for _ in range(0 if defect == "a header but no rows" else draw(st.integers(1, 5)))
    ]
    if rows and draw(st.integers(0, 4)) == 0:  # a 1 MB cell
        column = draw(st.integers(0, width - 1))
        rows[draw(st.integers(0, len(rows) - 1))][column] = draw(
            long_text(cheap=names[column] == "prompt")
        )
    use_ids = defect in CSV_ID_DEFECTS or ("id" in names and draw(st.booleans()))
    if use_ids:
        for number, row in enumerate(rows):
            row[names.index("id")] = f"id-{number}"
    if defect == "a repeated id":
        rows.append([*rows[0]])
    elif defect == "a row without an id":
        rows[draw(st.integers(0, len(rows) - 1))][names.index("id")] = ""
    elif defect in ("a column named twice", "a column with no name", "a result column's name"):
        extra = {
            "a column named twice": st.sampled_from([*header, " prompt "]),
            "a column with no name": st.sampled_from(["", "  ", "\t"]),
            "a result column's name": st.sampled_from(RESULT_COLUMNS),
        }[defect]
        # Not last: a nameless last column is dropped while it is empty (Excel's prompt,,).
        at = draw(st.integers(0, width - 1 if defect == "a column with no name" else width))
        header.insert(at, draw(extra))
        for row in rows:
            row.insert(at, draw(CELL))
    elif defect == "no prompt column":
        header[column_of(header, "prompt")] = NOT_PROMPT
    elif defect == "a ragged row":
        row = draw(st.sampled_from(rows))
        length = draw(st.sampled_from([n for n in range(1, width + 3) if n != width]))
        row[:] = (row + draw(st.lists(CELL, min_size=2, max_size=2)))[:length]
    text = io.StringIO(newline="")
    writer = csv.writer(text, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(header)
    blank_lines = draw(st.booleans())
    for row in rows:
        if blank_lines:
            text.write("\r\n")  # blank lines between records are not rows
        writer.writerow(row)
    if defect == "an unterminated quote":
        text.write('"no closing quote' + "," * (width - 1) + "\n")
    elif defect == "text after a closing quote":
        text.write('"closed"then more' + "," * (width - 1) + "\n")
    data = text.getvalue().encode("utf-8")
    if defect == "bytes that are not UTF-8":
        data += b"caf\xe9" + b"," * (width - 1) + b"\n"
    if draw(st.booleans()):
        data = "\ufeff".encode() + data  # a byte-order mark is not part of the first name
    options = ["--id-column", "id"] if use_ids else []
    if defect is not None:
        return data, None, options
    return data, Good({n: [r[i] for r in rows] for i, n in enumerate(names)}, options), options


@GOOD
@given(case=csv_files(None))
def test_a_good_csv_round_trips_every_prompt_and_column(
    server: Emulator, case: tuple[bytes, Good | None, list[str]]
):
    data, good, _ = case
    assert good is not None
    event("has a 1 MB field" if len(data) > MB else "small fields")
    with scratch() as folder:
        source = Path(folder) / "in.csv"
        source.write_bytes(data)
        assert_round_trips(server, source, good)


@pytest.mark.parametrize("defect", CSV_DEFECTS)
@BAD
@given(data=st.data())
def test_a_csv_with_one_defect_is_refused_with_one_line_before_sending(
    server: Emulator, defect: str, data: st.DataObject
):
    content, _, options = data.draw(csv_files(defect))
    with scratch() as folder:
        source = Path(folder) / "in.csv"
        source.write_bytes(content)
        assert_refused(server, source, options)


# JSONL

JSONL_DEFECTS = [
    "a line that is not JSON",
    "a line that is not an object",
    "a raw control character in a string",
    "a key twice in one object",
    "a lone surrogate",
    "a result column's name",
    "no prompt key",
    "only blank lines",
    "bytes that are not UTF-8",
    "a repeated id",
    "a record without an id",
]
JSONL_ID_DEFECTS = ("a repeated id", "a record without an id")


@st.composite
def json_values(draw: st.DrawFn) -> Any:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        CELL,
    )
    return draw(
        st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CELL, inner, max_size=3),
            max_leaves=4,
        )
    )


def json_text(value: Any) -> str | None:
    """How a JSONL value lands in a column: strings as they are, the rest as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@st.composite
def jsonl_files(draw: st.DrawFn, defect: str | None) -> tuple[bytes, Good | None, list[str]]:
    """A JSONL file with ``defect`` (one of :data:`JSONL_DEFECTS`), or good with ``None``."""
    keys = draw(good_names(stripped=False, ids=defect in JSONL_ID_DEFECTS))
    records: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 5))):
        records.append({key: draw(json_values()) for key in keys if draw(st.integers(0, 5))})
    if not any("prompt" in record for record in records):
        records[0]["prompt"] = draw(CELL)
    if draw(st.integers(0, 4)) == 0:
        records[-1]["prompt"] = draw(long_text(cheap=True))
    use_ids = defect in JSONL_ID_DEFECTS or ("id" in keys and draw(st.booleans()))
    if use_ids:
        for number, record in enumerate(records):
            record["id"] = f"id-{number}"
    if defect == "a repeated id":
        records.append(dict(records[0]))
    elif defect == "a record without an id":
        draw(st.sampled_from(records))["id"] = draw(st.sampled_from([None, ""]))
    elif defect == "a result column's name":
        draw(st.sampled_from(records))[draw(st.sampled_from(RESULT_COLUMNS))] = draw(CELL)
    elif defect == "no prompt key":
        for record in records:
            record.pop("prompt", None)
    lines = [json.dumps(record, ensure_ascii=draw(st.booleans())) for record in records]
    bad_line = {
        "a line that is not JSON": st.sampled_from(
            ['{"prompt": "no closing brace"', '{"prompt": }', "{prompt: 1}", '{"a": 1} {"b": 2}']
        ),
        "a line that is not an object": st.sampled_from(["[1]", '"x"', "3", "null"]),
        "a raw control character in a string": st.sampled_from(
            ['{"prompt": "raw\x00nul"}', '{"prompt": "a\ttab"}', '{"note": "a\nbreak"}']
        ),
        "a key twice in one object": st.sampled_from(
            [
                '{"prompt": "a", "prompt": "b"}',
                '{"prompt": "a", "note": {"k": 1, "k": 2}}',
            ]
        ),
        "a lone surrogate": st.sampled_from(
            ['{"prompt": "half a pair: \\ud800"}', '{"prompt": "x", "\\udc00": "key"}']
        ),
    }.get(defect or "")
    if bad_line is not None:
        lines.insert(draw(st.integers(0, len(lines))), draw(bad_line))
    if defect == "only blank lines":
        lines = [""]
    for _ in range(draw(st.integers(0, 2))):  # blank lines are skipped
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "   ", "\t"])))
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if defect == "bytes that are not UTF-8":
        data += b'{"prompt": "caf\xe9"}\n'
    options = ["--id-column", "id"] if use_ids else []
    if defect is not None:
        return data, None, options
    columns = list(dict.fromkeys(key for record in records for key in record))
    good = Good({n: [json_text(record.get(n)) for record in records] for n in columns}, options)
    return data, good, options


@GOOD
@given(case=jsonl_files(None))
def test_a_good_jsonl_round_trips_every_prompt_and_column(
    server: Emulator, case: tuple[bytes, Good | None, list[str]]
):
    data, good, _ = case
    assert good is not None
    event("has a 1 MB field" if len(data) > MB else "small fields")
    with scratch() as folder:
        source = Path(folder) / "in.jsonl"
        source.write_bytes(data)
        assert_round_trips(server, source, good)


@pytest.mark.parametrize("defect", JSONL_DEFECTS)
@BAD
@given(data=st.data())
def test_a_jsonl_with_one_defect_is_refused_with_one_line_before_sending(
    server: Emulator, defect: str, data: st.DataObject
):
    content, _, options = data.draw(jsonl_files(defect))
    with scratch() as folder:
        source = Path(folder) / "in.jsonl"
        source.write_bytes(content)
        assert_refused(server, source, options)


# Parquet

PARQUET_DEFECTS = [
    "a column named twice",
    "a result column's name",
    "no prompt column",
    "no rows",
    "text that is not UTF-8",
    "a binary prompt that is not UTF-8",
]
SCALAR_TYPES = [
    "string",
    "large_string",
    "dictionary",
    "binary",
    "large_binary",
    "int64",
    "float64",
    "bool",
    "null",
]


def typed_column(draw: st.DrawFn, rows: int, *, prompt: bool) -> pa.Array:
    """A column of ``rows`` values of one drawn Arrow type, nulls included.

    A prompt column's binary values are UTF-8 text; another column's are any bytes.
    """
    kind = draw(st.sampled_from(SCALAR_TYPES + ([] if prompt else ["list", "struct"])))

    def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
        return st.lists(st.none() | values, min_size=rows, max_size=rows)

    if kind in ("string", "large_string", "dictionary"):
        values = draw(maybe(CELL))
        if values and draw(st.integers(0, 4)) == 0:
            values[draw(st.integers(0, rows - 1))] = draw(long_text(cheap=prompt))
        array = pa.array(values, pa.large_string() if kind == "large_string" else pa.string())
        return array.dictionary_encode() if kind == "dictionary" else array
    if kind in ("binary", "large_binary"):
        blobs = CELL.map(str.encode) if prompt else st.binary(max_size=12)
        return pa.array(draw(maybe(blobs)), getattr(pa, kind)())
    if kind == "int64":
        return pa.array(draw(maybe(st.integers(-(2**63), 2**63 - 1))), pa.int64())
    if kind == "float64":
        return pa.array(draw(maybe(st.floats(allow_nan=False))), pa.float64())
    if kind == "bool":
        return pa.array(draw(maybe(st.booleans())), pa.bool_())
    if kind == "list":
        return pa.array(draw(maybe(st.lists(st.integers(0, 9), max_size=3))), pa.list_(pa.int64()))
    if kind == "struct":
        values = draw(maybe(st.fixed_dictionaries({"a": st.integers(0, 9), "b": CELL})))
        return pa.array(values, pa.struct([("a", pa.int64()), ("b", pa.string())]))
    return pa.nulls(rows)


@st.composite
def parquet_tables(draw: st.DrawFn, defect: str | None) -> tuple[pa.Table, Good | None]:
    """A table with ``defect`` (one of :data:`PARQUET_DEFECTS`), or good with ``None``."""
    names = draw(good_names(stripped=False))
    rows = 0 if defect == "no rows" else draw(st.integers(1, 5))
    arrays = [typed_column(draw, rows, prompt=name == "prompt") for name in names]
    if defect in ("a column named twice", "a result column's name"):
        extra = draw(st.sampled_from(names if defect == "a column named twice" else RESULT_COLUMNS))
        names.append(extra)
        arrays.append(typed_column(draw, rows, prompt=False))
    elif defect == "no prompt column":
        names[names.index("prompt")] = NOT_PROMPT
    elif defect in ("text that is not UTF-8", "a binary prompt that is not UTF-8"):
        cells: list[bytes | None] = [b"fine"] * rows
        cells[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([b"\xff\xfe", b"caf\xe9"]))
        if defect == "a binary prompt that is not UTF-8":
            arrays[names.index("prompt")] = pa.array(cells, pa.binary())
        else:
            at = draw(st.sampled_from([names.index("prompt"), len(names)]))
            if at == len(names):
                names.append(NOT_PROMPT)
                arrays.append(pa.array([b""] * rows, pa.binary()))
            arrays[at] = pa.array(cells, pa.binary()).view(pa.string())
    table = pa.Table.from_arrays(arrays, names=names)
    if defect is not None:
        return table, None
    return table, Good({name: table.column(name).to_pylist() for name in names})


@GOOD
@given(case=parquet_tables(None))
def test_a_good_parquet_round_trips_every_prompt_and_column(
    server: Emulator, case: tuple[pa.Table, Good | None]
):
    table, good = case
    assert good is not None
    event("has a 1 MB field" if table.nbytes > MB else "small fields")
    with scratch() as folder:
        source = Path(folder) / "in.parquet"
        pq.write_table(table, source)
        assert_round_trips(server, source, good)


@pytest.mark.parametrize("defect", PARQUET_DEFECTS)
@BAD
@given(data=st.data())
def test_a_parquet_with_one_defect_is_refused_with_one_line_before_sending(
    server: Emulator, defect: str, data: st.DataObject
):
    table, _ = data.draw(parquet_tables(defect))
    with scratch() as folder:
        source = Path(folder) / "in.parquet"
        pq.write_table(table, source)
        assert_refused(server, source, [])


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_an_empty_file_is_refused_with_one_line_before_sending(server: Emulator, suffix: str):
    with scratch() as folder:
        source = Path(folder) / f"in.{suffix}"
        source.write_bytes(b"")
        assert_refused(server, source, [])


# Hand-made: inputs that were once bugs, each with the one outcome it must have.


def test_a_lone_surrogate_escape_in_jsonl_is_refused_naming_its_line(
    server: Emulator, tmp_path: Path
):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "half a pair: \\ud800"}\n')
    assert "line 2, column 'prompt'" in assert_refused(server, source, [])


def test_invalid_utf8_in_a_parquet_string_column_is_refused_naming_its_row(
    server: Emulator, tmp_path: Path
):
    source = tmp_path / "in.parquet"
    bad = pa.array([b"fine", b"\xff\xfe not text"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"prompt": bad}), source)
    assert "column 'prompt': row 1:" in assert_refused(server, source, [])


def test_a_binary_prompt_column_of_utf8_text_is_sent_as_its_text(server: Emulator, tmp_path: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"prompt": pa.array([b"hello", "h\u00e9".encode()], pa.binary())}), source
    )
    assert_round_trips(server, source, Good({"prompt": [b"hello", "h\u00e9".encode()]}))


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_column_name_with_a_line_break_and_no_prompt_column_is_refused_on_one_line(
    server: Emulator, tmp_path: Path, suffix: str
):
    source = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        source.write_text('"two\nlines",other\na,b\n', encoding="utf-8")
    else:
        source.write_text('{"two\\nlines": "a"}\n', encoding="utf-8")
    assert_refused(server, source, [])


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_column_name_with_a_line_break_beside_the_prompt_round_trips(
    server: Emulator, tmp_path: Path, suffix: str
):
    source = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        source.write_text('"two\nlines",prompt\na,b\n', encoding="utf-8")
    else:
        source.write_text('{"two\\nlines": "a", "prompt": "b"}\n', encoding="utf-8")
    assert_round_trips(server, source, Good({"two\nlines": ["a"], "prompt": ["b"]}))
