"""What the emulator says about the images of a request, on either protocol.

An answer to a request with images ends with ``[2 images: sha256 1a2b3c4d 5e6f7a8b]``:
the sha256 of each image's bytes (of its URL's text for a URL image), so that a test can
tell which images arrived. OpenAI ``image_url`` parts and Anthropic ``image`` blocks (a
``base64`` or ``url`` source) count; an image the emulator cannot decode shows as
``unreadable``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["image_note"]


def image_note(messages: Sequence[Any]) -> str:
    """`` [N images: sha256 ...]`` for the images of ``messages``, or ``""`` for none."""
    digests = [
        _digest(part)
        for message in messages
        if isinstance(message, Mapping) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, Mapping) and part.get("type") in ("image_url", "image")
    ]
    if not digests:
        return ""
    noun = "image" if len(digests) == 1 else "images"
    return f" [{len(digests)} {noun}: sha256 {' '.join(digests)}]"


def _digest(part: Mapping[str, Any]) -> str:
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else None
        if not isinstance(url, str):
            return "unreadable"
        header, comma, data = url.partition(",")
        if url.startswith("data:") and comma:
            return _base64_digest(data) if header.endswith(";base64") else "unreadable"
        return _short(url.encode("utf-8"))
    source = part.get("source")
    if not isinstance(source, Mapping):
        return "unreadable"
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return _base64_digest(source["data"])
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return _short(source["url"].encode("utf-8"))
    return "unreadable"


def _base64_digest(data: str) -> str:
    try:
        return _short(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return "unreadable"


def _short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]
