"""The emulator's structured answers: JSON derived from the prompt and the schema.

Deterministic, so tests can predict every value: each value is drawn from a digest of
the prompt and the value's path in the answer. The ``invalid_json`` fault answers with
malformed or non-conforming JSON instead (alternately, by the same digest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["invalid_json_for", "json_answer_for", "value_for"]

_MAX_DEPTH = 8


def _draw(prompt: str, path: str) -> int:
    digest = hashlib.sha256(f"{path}\x00{prompt}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    for _ in range(32):
        if not (isinstance(node, Mapping) and isinstance(node.get("$ref"), str)):
            break
        ref: str = node["$ref"]
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return node


def value_for(
    node: Any, prompt: str, path: str = "$", root: Mapping[str, Any] | None = None
) -> Any:
    """The value the emulator answers for schema ``node`` at ``path``, given ``prompt``."""
    root = root if root is not None else (node if isinstance(node, Mapping) else {})
    node = _resolve(node, root)
    if not isinstance(node, Mapping) or path.count(".") + path.count("[") > _MAX_DEPTH:
        return None
    draw = _draw(prompt, path)
    for key in ("anyOf", "oneOf", "allOf"):
        options = node.get(key)
        if isinstance(options, list) and options:
            real = [o for o in options if _resolve(o, root) != {"type": "null"}] or options
            return value_for(real[0], prompt, path, root)
    if isinstance(node.get("enum"), list) and node["enum"]:
        return node["enum"][draw % len(node["enum"])]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in node):
        properties = node.get("properties") or {}
        return {
            name: value_for(sub, prompt, f"{path}.{name}", root) for name, sub in properties.items()
        }
    if kind == "array":
        low = int(node.get("minItems", 2))
        count = max(low, min(2, int(node.get("maxItems", 2))))
        items = node.get("items", {"type": "string"})
        return [value_for(items, prompt, f"{path}[{i}]", root) for i in range(count)]
    if kind in ("integer", "number"):
        low = int(node.get("minimum", 0))
        high = int(node.get("maximum", low + 99))
        number = low + draw % max(high - low + 1, 1)
        return number if kind == "integer" else float(number)
    if kind == "boolean":
        return draw % 2 == 0
    if kind == "null":
        return None
    name = path.rsplit(".", 1)[-1].split("[", 1)[0]
    return f"{name}-{draw % 1_000_000:06d}"  # strings and the untyped


def json_answer_for(prompt: str, schema: str) -> str:
    """The emulator's valid JSON answer to ``prompt`` for ``schema`` (JSON text)."""
    return json.dumps(value_for(json.loads(schema), prompt), ensure_ascii=False)


def invalid_json_for(prompt: str, schema: str | None) -> str:
    """A bad answer: malformed JSON, or JSON that does not follow ``schema``."""
    if schema is None or _draw(prompt, "invalid") % 2 == 0:
        return '{"answer": "cut sh'
    properties = json.loads(schema).get("properties") or {}
    return json.dumps({name: [{"wrong": True}] for name in properties} or {"wrong": [1]})
