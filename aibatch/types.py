"""Frozen value types that flow through aibatch: messages, requests, results."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        """Return the message as the ``{"role", "content"}`` dict providers send."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """What one row asks of a provider.

    Attributes:
        messages: the conversation, system message first when there is one.
        model: the model name as the user gave it.
        options: provider options that change the answer (sorted pairs), part of the
            request's identity.
        schema: the JSON Schema the answer must follow, as JSON text (``--schema``).
        json_mode: how an OpenAI-compatible server is asked for JSON: ``schema``
            (``json_schema``) or ``object`` (``json_object``).
    """

    messages: tuple[Message, ...]
    model: str
    options: tuple[tuple[str, object], ...] = ()
    schema: str | None = None
    json_mode: str = "schema"

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        """The messages as a list of dicts."""
        return [m.to_dict() for m in self.messages]


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A provider's answer to one request.

    Attributes:
        text: the answer, never empty.
        ttfb_ms: milliseconds from sending to the first text chunk.
        http_status: the HTTP status of the answer.
        garbage_lines: lines of the stream that could not be decoded.
        prompt_tokens: tokens of the request, where the provider reports them.
        completion_tokens: tokens of the answer, where the provider reports them.
        finish_reason: why the answer ended (``stop``, ``length``...), where reported.
    """

    text: str
    ttfb_ms: float | None = None
    http_status: int | None = 200
    garbage_lines: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class RowStatus(enum.StrEnum):
    """How a row ended."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"
    UNSENT = "unsent"  # the budget (--max-cost) ran out first: a re-run sends it


@dataclass(slots=True, kw_only=True)
class RowResult:
    """The outcome of one sent request, as the checkpoint stores it."""

    row: int
    row_key: int
    request_hash: int
    sent_prompt: str
    status: RowStatus
    response: str | None = None
    error_type: str | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cost_usd: float | None = None
