"""Image cells: media types from magic bytes, identity by content, errors that name the fix."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from aibatch.io.images import MAX_IMAGE_BYTES, media_type, read_image
from aibatch.providers.anthropic import image_block
from aibatch.types import Image, Message

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xdb" + bytes(8), "image/jpeg"),
        (b"GIF89a" + bytes(6), "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n" + bytes(3), None),
    ],
)
def test_the_media_type_comes_from_the_first_bytes(head: bytes, expected: str | None):
    assert media_type(head[:12]) == expected


def test_a_file_a_data_url_and_bytes_of_one_image_hash_alike(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(PNG)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()

    images = [read_image(cell, tmp_path) for cell in ("a.png", data_url, PNG)]

    assert {i.sha256 for i in images if i} == {hashlib.sha256(PNG).hexdigest()}


def test_the_scan_keeps_no_bytes_and_the_send_step_does(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(PNG)

    scanned, loaded = (read_image("a.png", tmp_path, load=load) for load in (False, True))

    assert scanned is not None and loaded is not None
    assert (scanned.data, loaded.data, scanned.size) == (None, PNG, len(PNG))


@pytest.mark.parametrize("cell", [None, "", b""])
def test_an_empty_cell_is_no_image(cell: object, tmp_path: Path):
    assert read_image(cell, tmp_path) is None


def test_a_bad_base64_data_url_is_refused():
    with pytest.raises(ValueError, match="not valid base64"):
        read_image("data:image/png;base64,%%%", Path())


def test_an_image_message_is_sent_as_openai_parts_and_anthropic_blocks():
    image = Image(sha256="0" * 64, media_type="image/png", size=len(PNG), data=PNG)
    url = Image(sha256="1" * 64, url="https://example.org/cat.png")

    parts = Message("user", "What is it?", (image, url)).to_dict()["content"]

    encoded = base64.b64encode(PNG).decode()
    assert parts[1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{encoded}"},
    }
    assert [image_block(p) for p in parts] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": encoded}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.png"}},
    ]


def test_a_pipe_named_as_an_image_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    os.mkfifo(tmp_path / "a.png")

    with pytest.raises(ValueError, match="not a regular file"):
        read_image("a.png", tmp_path)


def test_an_image_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path):
    with (tmp_path / "big.png").open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no bytes written

    with pytest.raises(ValueError, match="the most an image may have"):
        read_image("big.png", tmp_path)


def test_a_large_file_that_is_not_an_image_is_refused_from_its_first_bytes(tmp_path: Path):
    (tmp_path / "notes.png").write_bytes(b"plain text, not an image\n" * 1000)

    with pytest.raises(ValueError, match="is not a PNG, JPEG, GIF or WebP image"):
        read_image("notes.png", tmp_path)
