"""JSON Schema -> Arrow types, and answers parsed and validated against a schema."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from aibatch.errors import InvalidOutput, UsageError
from aibatch.jobs.schema import StructuredOutput, arrow_schema, canonical_schema, extract_json
from aibatch.jobs.spec import JobSpec, load_job

pytest.importorskip("jsonschema")


def one_property(node: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": node}}


# The README's type table: each schema construct and the Arrow type of its column.
TYPES: list[tuple[dict[str, Any], pa.DataType]] = [
    ({"type": "string"}, pa.string()),
    ({"type": "integer"}, pa.int64()),
    ({"type": "number"}, pa.float64()),
    ({"type": "boolean"}, pa.bool_()),
    ({"type": "string", "enum": ["a", "b"]}, pa.dictionary(pa.int32(), pa.string())),
    ({"type": "array", "items": {"type": "integer"}}, pa.list_(pa.int64())),
    (
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}},
        pa.struct([("a", pa.string()), ("b", pa.float64())]),
    ),
    ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, pa.int64()),
    ({"type": ["string", "null"]}, pa.string()),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, pa.string()),  # JSON text
    ({"type": "object"}, pa.string()),  # no properties: JSON text
]


@pytest.mark.parametrize(
    ("node", "expected"), TYPES, ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else str(v)
)
def test_each_schema_construct_maps_to_its_arrow_type(node: dict[str, Any], expected: pa.DataType):
    assert arrow_schema(one_property(node)).field("x").type == expected


def test_columns_keep_the_schemas_property_order():
    schema = canonical_schema(
        {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "integer"}}}
    )

    assert arrow_schema(schema).names == ["z", "a"]


def test_an_untypable_value_is_kept_as_json_text():
    structured = StructuredOutput(
        canonical_schema(one_property({"oneOf": [{"type": "string"}, {"type": "integer"}]}))
    )

    (column,) = structured.columns(['{"x": 3}', '{"x": "three"}'], [True, True])

    assert column.to_pylist() == ["3", '"three"']


def test_an_answer_in_a_fenced_block_after_prose_is_found():
    assert extract_json('Sure!\n```json\n{"a": 1}\n```\nAnything else?') == {"a": 1}


def test_an_answer_that_does_not_validate_names_the_path_and_keeps_the_answer():
    structured = StructuredOutput(canonical_schema(one_property({"type": "integer"})))

    with pytest.raises(InvalidOutput) as caught:
        structured.check('{"x": "seven"}')

    assert (caught.value.path, caught.value.response) == ("$.x", '{"x": "seven"}')
    assert "'seven' is not of type 'integer'" in str(caught.value)


def test_a_schema_of_draft_7_or_without_a_draft_is_checked_by_compiled_code():
    pytest.importorskip("fastjsonschema")
    schema = one_property({"type": "integer", "minimum": 1})

    assert StructuredOutput(canonical_schema(schema)).engine == "fastjsonschema"


def test_a_2020_12_schema_is_checked_by_jsonschema_the_reference():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **one_property({"type": "array", "prefixItems": [{"type": "integer"}]}),
    }

    assert StructuredOutput(canonical_schema(schema)).engine == "jsonschema"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_json_cannot_hold_is_invalid_output(number: str):
    structured = StructuredOutput(
        canonical_schema(one_property({"type": "number", "minimum": 1, "maximum": 5}))
    )

    with pytest.raises(InvalidOutput):
        structured.check(f'{{"x": {number}}}')


def test_an_integer_beyond_64_bits_is_invalid_output_naming_its_path():
    structured = StructuredOutput(canonical_schema(one_property({"type": "integer"})))

    with pytest.raises(InvalidOutput) as caught:
        structured.check('{"x": 123456789012345678901234567890}')

    assert caught.value.path == "$.x"


def test_a_stored_answer_its_column_cannot_hold_is_written_as_null_not_a_crash():
    structured = StructuredOutput(canonical_schema(one_property({"type": "integer"})))
    answers = ['{"x": 1}', '{"x": 123456789012345678901234567890}']

    (column,) = structured.columns(answers, [True, True])

    assert column.to_pylist() == [1, None]


def test_an_answer_that_is_not_json_is_invalid_output():
    structured = StructuredOutput(canonical_schema(one_property({"type": "integer"})))

    with pytest.raises(InvalidOutput, match="not JSON"):
        structured.check('{"x": 1')


def test_a_schema_that_is_not_an_object_schema_is_refused():
    with pytest.raises(UsageError, match="must describe an object"):
        JobSpec(input="in.csv", schema={"type": "string"})


def test_a_pydantic_model_class_is_taken_as_its_json_schema():
    pydantic = pytest.importorskip("pydantic")
    model = pydantic.create_model("Review", stars=(int, ...), summary=(str, ...))

    spec = JobSpec(input="in.csv", schema=model)

    assert spec.schema is not None
    assert arrow_schema(spec.schema).names == ["stars", "summary"]


def test_a_job_file_schema_path_is_read_relative_to_the_job_file(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "review.json").write_text(json.dumps(one_property({"type": "boolean"})))
    (folder / "job.toml").write_text('input = "in.csv"\nschema = "review.json"\n')

    spec = JobSpec(**load_job(folder / "job.toml"))

    assert spec.schema == canonical_schema(one_property({"type": "boolean"}))


def test_a_job_file_schema_may_be_an_inline_table(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        'input = "in.csv"\n[schema]\ntype = "object"\n[schema.properties.x]\ntype = "number"\n'
    )

    spec = JobSpec(**load_job(job))

    assert spec.schema == canonical_schema(one_property({"type": "number"}))
