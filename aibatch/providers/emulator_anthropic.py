"""The emulator's Anthropic Messages protocol: requests read, answers and errors shaped.

:class:`~aibatch.providers.emulator.Emulator` serves it at ``POST /v1/messages`` when
started with ``protocol="anthropic"``; this module holds what is particular to the
protocol, as plain functions and values. The answer is the emulator's usual
(``answer_for`` of the conversation flattened by ``format_prompt``, the ``system`` field
first), cut by ``stop_sequences`` and ``max_tokens`` (one token a word) with the stop
reason the real service gives; the official ``anthropic`` SDK reads it, streamed and not.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .emulator_images import image_note
from .emulator_json import json_answer_for
from .helpers import format_prompt

__all__ = [
    "MESSAGES_PATH",
    "MessagesAnswer",
    "error_body",
    "key_of",
    "rate_limit_headers",
    "read_request",
]

MESSAGES_PATH = "/v1/messages"
# The error type the service names with each status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ROLES = ("user", "assistant")


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of an error answer with ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def rate_limit_headers(wait: float) -> dict[str, str]:
    """The headers of a 429 besides ``retry-after``: the request limit, spent until then."""
    reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=wait)
    return {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset.isoformat(timespec="milliseconds"),
    }


def key_of(headers: Any) -> str | None:
    """The API key a request carries: ``x-api-key``, or ``Authorization: Bearer``."""
    key: str | None = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


@dataclass(slots=True)
class MessagesAnswer:
    """One answer to serve, with what the Messages protocol reports about it."""

    text: str
    model: str
    input_tokens: int
    stream: bool = True
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    id: str = field(default_factory=lambda: f"msg_{secrets.token_hex(12)}")
    tool: str | None = None  # the forced tool: the answer is its input (JSON text)
    structured: bool = False  # asked for JSON: the invalid_json fault applies
    schema: str | None = None

    def _block(self, *, done: bool) -> dict[str, Any]:
        if self.tool is None:
            return {"type": "text", "text": self.text if done else ""}
        value: Any = {}
        if done:
            try:
                value = json.loads(self.text)
            except ValueError:
                value = {"unparsed": self.text}
        return {"type": "tool_use", "id": f"toolu_{self.id[4:]}", "name": self.tool, "input": value}

    def _delta(self, piece: str) -> dict[str, str]:
        if self.tool is None:
            return {"type": "text_delta", "text": piece}
        return {"type": "input_json_delta", "partial_json": piece}

    def content_type(self) -> str:
        """The answer's ``Content-Type``."""
        return "text/event-stream" if self.stream else "application/json"

    def usage(self) -> dict[str, int]:
        """Token counts: one a word of the prompt and of the answer."""
        return {"input_tokens": self.input_tokens, "output_tokens": len(self.text.split())}

    def message(self, content: list[dict[str, Any]], *, done: bool) -> dict[str, Any]:
        """The message object: whole (``done``), or as ``message_start`` opens it."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason if done else None,
            "stop_sequence": self.stop_sequence if done else None,
            "usage": self.usage()
            if done
            else {"input_tokens": self.input_tokens, "output_tokens": 1},
        }

    def whole(self) -> bytes:
        """The body of a whole (not streamed) answer."""
        return json.dumps(self.message([self._block(done=True)], done=True)).encode()

    def events(self, pieces: Sequence[str], *, fail_midway: bool = False) -> list[bytes]:
        """The stream: one Server-Sent Event per item, text in ``pieces``.

        ``fail_midway``: after half the text, an ``error`` event (``overloaded_error``)
        ends the stream, as the service does when it fails mid-answer.
        """
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": self._delta(p),
                },
            )
            for p in pieces
        ]
        events = [
            _event(
                "message_start", {"type": "message_start", "message": self.message([], done=False)}
            ),
            _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": self._block(done=False),
                },
            ),
            _event("ping", {"type": "ping"}),
        ]
        if fail_midway:
            error = error_body(529, "Overloaded (injected mid-stream)")
            return [*events, *deltas[: max(1, len(deltas) // 2)], _event("error", error)]
        return [
            *events,
            *deltas,
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": {"output_tokens": len(self.text.split())},
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(body: dict[str, Any]) -> str | None:
    """What is wrong with a request body, as the service words it; ``None`` if nothing."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (an integer of at least 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required (a non-empty list)"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return (
                f"messages.{i}.role: Input should be 'user' or 'assistant'"
                " (a system prompt goes in the top-level system field)"
            )
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: Input should be a string or a list of text blocks"
    for name, low, high in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is not None and not (_is_number(value) and low <= value <= high):
            return f"{name}: Input should be between {low:g} and {high:g}"
    top_k = body.get("top_k")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        return "top_k: Input should be an integer of at least 0"
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences: Input should be a list of strings"
    return None


def read_request(
    body: dict[str, Any] | None, answer_for: Callable[[str], str]
) -> tuple[str, MessagesAnswer] | str:
    """The prompt of a request body and the answer to serve, or what is wrong with it.

    Args:
        body: the request's JSON object (``None``: not one).
        answer_for: the emulator's answer to a prompt (``str -> str``).
    """
    if body is None:
        return "the body must be a JSON object"
    wrong = _check(body)
    if wrong is not None:
        return wrong
    system = body.get("system")
    conversation = ([{"role": "system", "content": system}] if system else []) + body["messages"]
    prompt = format_prompt(conversation)
    answer = MessagesAnswer(
        answer_for(prompt) + image_note(body["messages"]),
        model=body["model"],
        input_tokens=len(prompt.split()),
        stream=bool(body.get("stream")),
    )
    if _tool_answer(answer, prompt, body):
        return prompt, answer
    stops = [s for s in body.get("stop_sequences") or () if s and s in answer.text]
    if stops:
        first = min(stops, key=answer.text.index)
        answer.text = answer.text[: answer.text.index(first)]
        answer.stop_reason, answer.stop_sequence = "stop_sequence", first
    words = answer.text.split()
    if body["max_tokens"] < len(words):
        answer.text = " ".join(words[: body["max_tokens"]])
        answer.stop_reason, answer.stop_sequence = "max_tokens", None
    return prompt, answer


def _tool_answer(answer: MessagesAnswer, prompt: str, body: dict[str, Any]) -> bool:
    """Answer with the forced tool's input when ``tool_choice`` names one of ``tools``."""
    choice = body.get("tool_choice")
    if not (isinstance(choice, dict) and choice.get("type") == "tool"):
        return False
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    tool = next((t for t in tools if t.get("name") == choice.get("name")), None)
    if tool is None or not isinstance(tool.get("input_schema"), dict):
        return False
    answer.tool, answer.structured = tool["name"], True
    answer.schema = json.dumps(tool["input_schema"])
    answer.text = json_answer_for(prompt, answer.schema)
    answer.stop_reason = "tool_use"
    return True
