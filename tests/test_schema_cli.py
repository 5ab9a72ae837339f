"""--schema end to end: typed columns on each protocol, retries of invalid answers, identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aibatch
from aibatch.io.output import read_metadata
from aibatch.providers.emulator import Faults
from aibatch.providers.emulator_json import value_for
from tests.conftest import emulator_in_thread
from tests.test_openai_cli import fast_retries, invoke, summary_of, write_csv

pytest.importorskip("jsonschema")

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "topics": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment", "stars", "topics"],
    "additionalProperties": False,
}
REVIEWS = ["Great phone, the battery lasts two days.", "Broke after a week.", "Fine, but loud."]


def reviews(tmp_path: Path, schema: dict[str, Any] = REVIEW_SCHEMA) -> tuple[Path, Path]:
    source = write_csv(tmp_path / "reviews.csv", [{"review": r} for r in REVIEWS])
    schema_file = tmp_path / "review.schema.json"
    schema_file.write_text(json.dumps(schema), encoding="utf-8")
    return source, schema_file


@pytest.mark.parametrize(
    ("provider", "extra"),
    [
        ("openai", []),
        ("openai", ["--no-stream"]),
        ("anthropic", []),
        ("anthropic", ["--no-stream"]),
        ("aichatonline", []),
    ],
)
def test_a_schema_run_writes_the_emulators_answer_in_typed_columns(
    tmp_path: Path, provider: str, extra: list[str]
):
    source, schema = reviews(tmp_path)

    result = invoke(
        "run", source, "--prompt-column", "review", "--provider", provider, "--emulate",
        "--schema", schema, "-q", *extra,
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    output = tmp_path / "reviews.responses.parquet"
    table = pq.read_table(output)
    assert table.schema.field("sentiment").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("stars").type == pa.int64()
    assert table.schema.field("topics").type.value_type == pa.string()
    expected = [value_for(REVIEW_SCHEMA, review) for review in REVIEWS]
    frame = table.to_pandas()
    assert str(frame["stars"].dtype) == "int64"
    assert str(frame["sentiment"].dtype) == "category"
    got = frame[["sentiment", "stars", "topics"]].to_dict("records")
    assert [{**g, "sentiment": str(g["sentiment"]), "topics": list(g["topics"])} for g in got] == [
        {**e, "stars": int(e["stars"])} for e in expected
    ]
    assert read_metadata(output)["schema"] == REVIEW_SCHEMA


def test_run_frame_returns_the_typed_columns_beside_the_frame(tmp_path: Path):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"review": REVIEWS})

    result = aibatch.run_frame(
        frame,
        output=str(tmp_path / "out.parquet"),
        provider="openai",
        emulate=True,
        prompt_column="review",
        schema=REVIEW_SCHEMA,
    )

    assert result["stars"].tolist() == [value_for(REVIEW_SCHEMA, r)["stars"] for r in REVIEWS]


def test_invalid_answers_are_retried_until_one_validates(tmp_path: Path):
    source, schema = reviews(tmp_path)
    faults = Faults(invalid_json_rate=0.5, seed=3)
    with emulator_in_thread(protocol="openai", faults=faults) as emu:
        result = invoke(
            "run", source, "--prompt-column", "review", "--provider", "openai",
            "--base-url", emu.base_url, "--schema", schema, "--job", fast_retries(tmp_path),
            "--max-attempts", "20", "-q", "--summary-json", tmp_path / "s.json",
        )  # fmt: skip
        requests = emu.stats.chat_requests

    assert result.exit_code == 0, result.stderr
    assert summary_of(tmp_path / "s.json")["ok"] == len(REVIEWS)
    assert requests > len(REVIEWS)


def test_a_row_that_stays_invalid_is_an_invalid_output_error_with_its_raw_answer(tmp_path: Path):
    source, schema = reviews(tmp_path)
    with emulator_in_thread(protocol="openai", faults=Faults(invalid_json_rate=1.0)) as emu:
        result = invoke(
            "run", source, "--prompt-column", "review", "--provider", "openai",
            "--base-url", emu.base_url, "--schema", schema, "--job", fast_retries(tmp_path),
            "--max-attempts", "2", "-q",
        )  # fmt: skip
        requests = emu.stats.chat_requests

    assert result.exit_code != 0
    rows = pq.read_table(tmp_path / "reviews.responses.parquet").to_pylist()
    assert {(r["status"], r["error_type"], r["attempts"]) for r in rows} == {
        ("error", "InvalidOutput", 2)
    }
    assert all(r["response"] and r["stars"] is None for r in rows)
    assert requests == 2 * len(REVIEWS)


def test_changing_the_schema_sends_the_rows_again(tmp_path: Path):
    source, schema = reviews(tmp_path)
    other = {
        **REVIEW_SCHEMA,
        "properties": {**REVIEW_SCHEMA["properties"], "short": {"type": "boolean"}},
    }
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other), encoding="utf-8")
    with emulator_in_thread(protocol="openai") as emu:

        def run(schema_file: Path) -> int:
            result = invoke(
                "run", source, "--prompt-column", "review", "--provider", "openai",
                "--base-url", emu.base_url, "--schema", schema_file, "-q",
            )  # fmt: skip
            assert result.exit_code == 0, result.stderr
            return emu.stats.chat_requests

        counts = [run(schema), run(schema), run(other_file)]

    assert counts == [3, 3, 6]
    assert "short" in pq.read_schema(tmp_path / "reviews.responses.parquet").names


@pytest.mark.parametrize("name", ["review", "status"])
def test_a_property_named_like_a_column_is_refused_before_anything_is_sent(
    tmp_path: Path, name: str
):
    source, schema = reviews(tmp_path, {"type": "object", "properties": {name: {"type": "string"}}})
    with emulator_in_thread(protocol="openai") as emu:
        result = invoke(
            "run", source, "--prompt-column", "review", "--provider", "openai",
            "--base-url", emu.base_url, "--schema", schema, "-q",
        )  # fmt: skip
        requests = emu.stats.chat_requests

    assert result.exit_code == 2
    assert f"'{name}'" in result.stderr and "rename" in result.stderr
    assert requests == 0
