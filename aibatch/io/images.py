"""Image cells (``--image-column``) to :class:`~aibatch.types.Image` values.

A cell holds a local path (relative to the input file's folder), an ``http(s)`` URL, a
``data:`` URL, or the image's bytes (a Parquet binary column). The scan reads each image
to hash it and tell its media type from its first bytes, then drops the bytes; the send
step reads it again (``load=True``), and the request hash shows whether it changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path
from urllib.parse import unquote_to_bytes

from ..types import Image

__all__ = ["media_type", "read_image"]

_CHUNK = 1 << 20
# The services take images of a few MB (OpenAI 20 MB, Anthropic 5 MB a request):
# anything larger is refused before it is read.
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def media_type(head: bytes) -> str | None:
    """The media type its first 12 bytes show: PNG, JPEG, GIF or WebP, else ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def read_image(cell: object, folder: Path, *, load: bool = False) -> Image | None:
    """The image a cell names, or ``None`` for an empty cell.

    Args:
        cell: the cell's value (text or bytes).
        folder: where relative paths start (the input file's folder).
        load: keep the bytes (to send); else only hash them.

    Raises:
        ValueError: a missing or unreadable file, a bad ``data:`` URL, or bytes that are
            not a PNG, JPEG, GIF or WebP image (the message says which).
    """
    if cell is None or cell == "" or cell == b"":
        return None
    if isinstance(cell, bytes | bytearray | memoryview):
        return _from_bytes(bytes(cell), "the cell's bytes", load)
    if not isinstance(cell, str):
        raise ValueError(f"{type(cell).__name__} is not an image path, URL or bytes")
    text = cell.strip()
    if text.lower().startswith(("http://", "https://")):
        return Image(sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), url=text)
    if text.lower().startswith("data:"):
        return _from_bytes(_data_url_bytes(text), "the data: URL", load)
    return _from_file(folder / text, text, load)


def _from_bytes(data: bytes, what: str, load: bool) -> Image:
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(
            f"{what} has {len(data):,} bytes; the most an image may have is {MAX_IMAGE_BYTES:,}"
        )
    kind = media_type(data[:12])
    if kind is None:
        raise ValueError(f"{what} is not a PNG, JPEG, GIF or WebP image")
    return Image(
        sha256=hashlib.sha256(data).hexdigest(),
        media_type=kind,
        size=len(data),
        data=data if load else None,
    )


def _from_file(path: Path, shown: str, load: bool) -> Image:
    try:
        info = os.stat(path)  # before opening: opening a pipe would wait for a writer
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"image file {shown!r} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ValueError(
                f"image file {shown!r} has {info.st_size:,} bytes; the most an image may"
                f" have is {MAX_IMAGE_BYTES:,}"
            )
        with path.open("rb") as file:
            head = file.read(12)
            kind = media_type(head)
            if kind is None:  # said before reading the rest
                raise ValueError(f"image file {shown!r} is not a PNG, JPEG, GIF or WebP image")
            if load:
                return _from_bytes(head + file.read(), f"image file {shown!r}", load=True)
            digest = hashlib.sha256(head)
            size = len(head)
            while chunk := file.read(_CHUNK):  # hashed in pieces: no image kept whole
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise ValueError(f"no image file {shown!r}") from None
    except OSError as exc:
        raise ValueError(f"cannot read image file {shown!r}: {exc.strerror or exc}") from None
    return Image(sha256=digest.hexdigest(), media_type=kind, size=size)


def _data_url_bytes(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise ValueError("the data: URL has no ',' before its data")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the data: URL's base64 data is not valid base64") from None
    return unquote_to_bytes(payload)
