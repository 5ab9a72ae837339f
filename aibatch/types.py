"""Frozen value types that flow through aibatch: messages, requests, results."""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An image sent with a message (``--image-column``).

    Attributes:
        sha256: hex digest of the image's bytes; for a URL, of the URL's text. What the
            request identity holds: the image, not where it was read from.
        media_type: ``image/png``, ``image/jpeg``, ``image/gif`` or ``image/webp``;
            ``None`` for a URL.
        size: bytes, for an image that is not a URL.
        url: an ``http(s)`` URL, passed to the provider as it is.
        data: the bytes, read only when the request is sent (``None`` while scanning).
    """

    sha256: str
    media_type: str | None = None
    size: int | None = None
    url: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A short description for ``sent_prompt``: never the bytes."""
        if self.url is not None:
            return f"[image: {self.url}]"
        return f"[image: {self.media_type}, {self.size:,} bytes, sha256 {self.sha256[:8]}]"

    def data_url(self) -> str:
        """The image as its URL, or a ``data:`` URL of its bytes."""
        if self.url is not None:
            return self.url
        if self.data is None:
            raise ValueError(f"image {self.sha256[:8]} was not read (scan-only request)")
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message, with the images sent with it (user messages)."""

    role: str
    content: str
    images: tuple[Image, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the message as the ``{"role", "content"}`` dict providers send.

        With images, ``content`` is a list of OpenAI-style parts: the text, then an
        ``{"type": "image_url", "image_url": {"url": ...}}`` part per image (a ``data:``
        URL for bytes); providers with another format convert them.
        """
        if not self.images:
            return {"role": self.role, "content": self.content}
        parts: list[dict[str, Any]] = []
        if self.content:
            parts.append({"type": "text", "text": self.content})
        parts += [{"type": "image_url", "image_url": {"url": i.data_url()}} for i in self.images]
        return {"role": self.role, "content": parts}

    def shown_dict(self) -> dict[str, Any]:
        """The message as ``sent_prompt`` records it: the text, and a line per image."""
        if not self.images:
            return {"role": self.role, "content": self.content}
        lines = [self.content] if self.content else []
        lines += [image.describe() for image in self.images]
        return {"role": self.role, "content": "\n".join(lines)}


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
    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as a list of dicts."""
        return [m.to_dict() for m in self.messages]

    @property
    def shown_dicts(self) -> list[dict[str, Any]]:
        """The messages as ``sent_prompt`` records them: images described, not included."""
        return [m.shown_dict() for m in self.messages]

    @property
    def has_images(self) -> bool:
        """Whether any message carries an image."""
        return any(m.images for m in self.messages)


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
