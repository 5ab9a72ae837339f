"""Pure helpers with the semantics of gpt4free's: ``format_prompt`` and ``get_random_string``."""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SCHEMA_INSTRUCTION", "format_prompt", "get_random_string", "to_text", "with_schema"]

#: what a plain-text provider is told after the prompt when the job has a schema
SCHEMA_INSTRUCTION = (
    "\n\nAnswer with only a JSON object that follows this JSON Schema, in a ```json fenced block:\n"
)

_ALPHABET = string.ascii_lowercase + string.digits
_SYSTEM_ROLES = frozenset({"system", "developer"})


def to_text(value: object) -> str:
    """Turn message content into text.

    ``None`` becomes ``""``; a dict its ``"text"`` (else ``""``); a list of parts the
    concatenation of the text of its parts whose ``type`` is ``"text"`` (the default);
    anything else ``str(value)``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, Mapping):
        text = value.get("text")
        return "" if text is None else to_text(text)
    if isinstance(value, list):
        return "".join(
            to_text(part)
            for part in value
            if not isinstance(part, Mapping) or part.get("type", "text") == "text"
        )
    return str(value)


def format_prompt(
    messages: Sequence[Mapping[str, Any]],
    add_special_tokens: bool = False,
    do_continue: bool = False,
    include_system: bool = True,
) -> str:
    r"""Flatten a conversation into the one prompt string AiChatOnline takes.

    Args:
        messages: ``{"role", "content"}`` mappings.
        add_special_tokens: always use the role-prefixed form, even for one message.
        do_continue: leave off the trailing ``"\nAssistant:"``.
        include_system: keep system and developer messages.

    Returns:
        A single message's content unchanged, or ``"Role: content"`` lines joined with
        newlines (blank contents skipped) followed by ``"\nAssistant:"``.
    """
    if not add_special_tokens and len(messages) <= 1:
        return to_text(messages[0].get("content")) if messages else ""
    lines = []
    for message in messages:
        role = str(message.get("role", ""))
        if not include_system and role in _SYSTEM_ROLES:
            continue
        content = to_text(message.get("content"))
        if content.strip():
            lines.append(f"{role.capitalize()}: {content}")
    formatted = "\n".join(lines)
    return formatted if do_continue else f"{formatted}\nAssistant:"


def get_random_string(length: int = 10) -> str:
    """Return ``length`` characters drawn uniformly from ``a-z0-9``.

    One uniform draw below ``36 ** length`` written in base 36 is the same as drawing
    each character uniformly, and several times cheaper than a draw per character.
    """
    number = random.randrange(36**length)
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def with_schema(messages: list[dict[str, str]], schema: str) -> list[dict[str, str]]:
    """``messages`` with :data:`SCHEMA_INSTRUCTION` and ``schema`` after the last user turn.

    For providers that take plain text only: the schema travels in the prompt.
    """
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            out[i] = {**out[i], "content": out[i]["content"] + SCHEMA_INSTRUCTION + schema}
            return out
    return [*out, {"role": "user", "content": SCHEMA_INSTRUCTION.lstrip() + schema}]
