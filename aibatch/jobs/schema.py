"""Structured output: a JSON Schema in, parsed and validated answers, typed Arrow columns out.

A job's schema (``--schema``) is kept as canonical JSON text (:func:`canonical_schema`),
so it is a plain value of the job: hashed into every request's identity and recorded in
the output metadata. :class:`StructuredOutput` compiles it once and serves the hot path:
:meth:`~StructuredOutput.check` parses and validates each answer (raising
:class:`~aibatch.errors.InvalidOutput`, which is retried), and
:meth:`~StructuredOutput.columns` turns the stored answers into one typed Arrow column
per top-level property when the output is written.

Validation is on the hot path, so it has two stages (both in the ``schema`` extra).
``fastjsonschema`` compiles the schema to Python code once per job and accepts a valid
answer in about a microsecond (``jsonschema`` takes ~20); it covers drafts 4, 6 and 7,
so it is used when the schema names one of them, or names none and uses no keyword or
remote reference that only later drafts (or a network fetch) would honour. An answer it
rejects, and every answer under a 2019-09 or 2020-12 schema, goes to ``jsonschema``, the
reference implementation of every draft: it has the last word on what is invalid and
gives the message and JSON path of the first error. Both are well kept (jsonschema by
the python-jsonschema org; fastjsonschema passes the official JSON-Schema-Test-Suite for
the drafts it supports).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import InvalidOutput, UsageError

log = logging.getLogger(__name__)

__all__ = ["StructuredOutput", "arrow_schema", "canonical_schema", "extract_json"]

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_MAX_OBJECT_STARTS = 64  # braces tried when looking for the first complete object


def canonical_schema(value: object) -> str:
    """A schema as compact JSON text, its properties in the user's order (the columns').

    Args:
        value: a JSON Schema as a mapping, JSON text, a path to a ``.json`` file, or a
            Pydantic model class (anything with ``model_json_schema()``).

    Raises:
        UsageError: unreadable, not JSON, or not an object schema with ``properties``.
    """
    to_schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(to_schema):
        value = to_schema()
    if isinstance(value, (str, Path)):
        text = str(value)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot read schema {value}: {exc.strerror or exc}") from exc
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"schema {str(value)[:80]!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise UsageError(
            "a schema is a JSON Schema object (a file, a dict or a Pydantic model class),"
            f" not {type(value).__name__}"
        )
    properties = value.get("properties")
    if value.get("type", "object") != "object" or not isinstance(properties, Mapping):
        raise UsageError(
            'the schema must describe an object: {"type": "object", "properties": {...}}'
        )
    if not properties:
        raise UsageError("the schema has no properties: there would be no columns")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: no JSON number means infinity
        raise ValueError(f"{text} is out of range")
    return value


# Only JSON: NaN and Infinity (which json.loads takes) slip past minimum and maximum.
_STRICT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_INT64 = (-(2**63), 2**63 - 1)


def _out_of_range(value: Any, path: str = "$") -> str | None:
    """The path of the first integer an int64 column cannot hold, if any."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _out_of_range(item, where)
        if found is not None:
            return found
    return None


def extract_json(text: str) -> Any:
    """The JSON value in an answer: the whole text, a fenced block, or the first object.

    Raises:
        InvalidOutput: no JSON found.
    """
    try:
        return _STRICT.decode(text)
    except ValueError:
        pass
    for match in _FENCE.finditer(text):
        try:
            return _STRICT.decode(match.group(1))
        except ValueError:
            continue
    decoder = _STRICT
    start = text.find("{")
    for _ in range(_MAX_OBJECT_STARTS):
        if start < 0:
            break
        try:
            return decoder.raw_decode(text, start)[0]
        except ValueError:
            start = text.find("{", start + 1)
    raise InvalidOutput("the answer is not JSON (no JSON object in it)", response=text, path="$")


# --- JSON Schema -> Arrow ----------------------------------------------------------

Convert = Callable[[Any], Any]


def _as_json(value: Any) -> Any:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _same(value: Any) -> Any:
    return value


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _Typer:
    """Maps schema nodes to Arrow types and value converters, resolving local ``$ref``."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def resolve(self, node: Any, depth: int = 0) -> Any:
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and depth < 32:
            ref: str = node["$ref"]
            if not ref.startswith("#/"):
                return {}  # a remote reference: untyped
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, Mapping) else None
            node, depth = target, depth + 1
        return node

    def type_of(self, node: Any, depth: int = 0) -> tuple[pa.DataType, Convert]:
        node = self.resolve(node)
        fallback = (pa.string(), _as_json)
        if not isinstance(node, Mapping) or depth > 16:
            return fallback
        for key in ("anyOf", "oneOf"):  # Optional[X] is anyOf [X, null]
            options = node.get(key)
            if isinstance(options, list):
                rest = [o for o in options if self.resolve(o) != {"type": "null"}]
                return self.type_of(rest[0], depth + 1) if len(rest) == 1 else fallback
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        enum = node.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
            return pa.dictionary(pa.int32(), pa.string()), _same
        if kind == "string":
            return pa.string(), _same
        if kind == "integer":
            return pa.int64(), _as_int
        if kind == "number":
            return pa.float64(), _same
        if kind == "boolean":
            return pa.bool_(), _same
        if kind == "array" and "items" in node:
            item, convert = self.type_of(node["items"], depth + 1)
            if convert is _same:
                return pa.list_(item), _same
            return pa.list_(item), lambda v: None if v is None else [convert(x) for x in v]
        if kind == "object" and isinstance(node.get("properties"), Mapping):
            return self.struct(node["properties"], depth + 1)
        return fallback

    def struct(self, properties: Mapping[str, Any], depth: int) -> tuple[pa.DataType, Convert]:
        typed = {name: self.type_of(sub, depth) for name, sub in properties.items()}
        fields = [pa.field(name, kind) for name, (kind, _) in typed.items()]

        def convert(value: Any) -> Any:
            if not isinstance(value, Mapping):
                return None
            return {name: conv(value.get(name)) for name, (_, conv) in typed.items()}

        return pa.struct(fields), convert


def arrow_schema(schema: str | Mapping[str, Any]) -> pa.Schema:
    """The typed columns of ``schema``: one per top-level property, in its order.

    Every column is nullable: rows that are not ``ok`` have no value. A required
    property is never null in an ``ok`` row (the answer was validated).
    """
    return _columns(json.loads(schema) if isinstance(schema, str) else schema)[0]


def _columns(schema: Mapping[str, Any]) -> tuple[pa.Schema, list[Convert]]:
    typer = _Typer(schema)
    fields, converts = [], []
    for name, node in schema["properties"].items():
        kind, convert = typer.type_of(node)
        fields.append(pa.field(name, kind))
        converts.append(convert)
    return pa.schema(fields), converts


# Drafts fastjsonschema implements, by their $schema URI (without "#" and the scheme).
_FAST_DRAFTS = frozenset(f"json-schema.org/draft-{n:02d}/schema" for n in (4, 6, 7))
# Keywords that only drafts 2019-09 and 2020-12 (jsonschema's default) give a meaning.
_LATER_KEYWORDS = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "minContains",
        "maxContains",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
    }
)


_REF_SIBLINGS = frozenset({"$ref", "description", "title", "default", "examples"})


def _fast_eligible(node: Any, root: bool = True) -> bool:
    """Whether fastjsonschema validates ``node`` as jsonschema would (see the module doc).

    Conservative: a property named like a later keyword also makes a schema ineligible.
    """
    if isinstance(node, list):
        return all(_fast_eligible(item, False) for item in node)
    if not isinstance(node, Mapping):
        return True
    if "$schema" in node:
        uri = str(node["$schema"]).split("://", 1)[-1].rstrip("#")
        if not root or uri not in _FAST_DRAFTS:
            return False
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            return False  # remote: fastjsonschema would fetch it
        if set(node) - _REF_SIBLINGS:
            return False  # 2019-09 on applies a $ref's siblings, draft 7 ignores them
    if not _LATER_KEYWORDS.isdisjoint(node):
        return False
    return all(_fast_eligible(value, False) for value in node.values())


def _fast_validator(schema: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """A compiled fastjsonschema check for ``schema``, or None (not installed, not eligible)."""
    if not _fast_eligible(schema):
        return None
    try:
        import fastjsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        validate: Callable[[Any], Any] = fastjsonschema.compile(
            dict(schema), use_default=False, use_formats=False, detailed_exceptions=False
        )
    except Exception:  # a construct it cannot compile: jsonschema alone
        return None
    return validate


class StructuredOutput:
    """A job's schema, compiled once: validates answers and builds typed columns.

    Args:
        schema: canonical JSON text (:func:`canonical_schema`).

    Raises:
        UsageError: ``jsonschema`` is not installed, or the schema is not a valid schema.
    """

    def __init__(self, schema: str) -> None:
        try:
            import jsonschema  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise UsageError(
                "--schema needs the jsonschema package: pip install 'aibatch[schema]'"
            ) from exc
        self.text = schema
        self.schema: dict[str, Any] = json.loads(schema)
        cls = jsonschema.validators.validator_for(self.schema)
        try:
            cls.check_schema(self.schema)
        except jsonschema.SchemaError as exc:
            raise UsageError(f"the schema is not a valid JSON Schema: {exc.message}") from exc
        self._validator = cls(self.schema)
        self._fast = _fast_validator(self.schema)
        self.engine = "fastjsonschema" if self._fast is not None else "jsonschema"
        """What accepts valid answers: ``fastjsonschema`` or ``jsonschema`` (module doc)."""
        self.arrow, self._converts = _columns(self.schema)

    @property
    def names(self) -> list[str]:
        """The typed columns' names: the schema's top-level properties."""
        return list(self.arrow.names)

    def check(self, text: str) -> Any:
        """The answer ``text`` parsed, once it validates.

        Raises:
            InvalidOutput: not JSON, or not valid for the schema (first error and path).
        """
        value = extract_json(text)
        too_big = _out_of_range(value)
        if too_big is not None:
            raise InvalidOutput(
                f"the answer has an integer at {too_big} beyond 64 bits",
                response=text,
                path=too_big,
            )
        if self._fast is not None:
            try:
                self._fast(value)
            except Exception:  # any complaint: the reference decides below
                pass
            else:
                return value
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is not None:
            path = error.json_path
            raise InvalidOutput(
                f"the answer does not match the schema at {path}: {error.message[:300]}",
                response=text,
                path=path,
            )
        return value

    def columns(self, responses: Sequence[str | None], ok: Sequence[bool]) -> list[pa.Array]:
        """One typed array per property, from the stored answers of ``ok`` rows (else null)."""
        values: list[Any] = []
        for text, good in zip(responses, ok, strict=True):
            value = None
            if good and text is not None:
                try:
                    value = extract_json(text)
                except InvalidOutput:
                    value = None  # stored before the schema was checked: not typed
            values.append(value if isinstance(value, Mapping) else None)
        arrays = []
        for field, convert in zip(self.arrow, self._converts, strict=True):
            name = field.name
            column = [None if v is None else convert(v.get(name)) for v in values]
            arrays.append(_typed(column, field))
        return arrays


def _typed(column: list[Any], field: pa.Field) -> pa.Array:
    """``column`` as ``field``'s type; a value the type cannot hold is null, with a warning.

    Answers are checked before they are stored, but a checkpoint may hold answers checked
    under another schema: one odd value must not stop the output from being written.
    """
    try:
        return pa.array(column, field.type)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    kept: list[Any] = []
    for value in column:
        try:
            pa.array([value], field.type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            log.warning("a %s value its type cannot hold is written as null", field.name)
            value = None
        kept.append(value)
    return pa.array(kept, field.type)
