"""--image-column end to end: images reach the emulator on both protocols, by content."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aibatch.providers.emulator import Emulator
from tests.test_anthropic_cli import anthropic_emulator
from tests.test_openai_cli import invoke, openai_emulator, rows_of, run_openai, write_csv

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(32))
URL = "http://127.0.0.1:9/cat.png"  # a closed port: fetching it would fail the row


def short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def image_csv(tmp_path: Path, cells: list[str], name: str = "in.csv") -> Path:
    rows = [{"prompt": f"Describe picture {i}.", "picture": c} for i, c in enumerate(cells)]
    return write_csv(tmp_path / name, rows)


def run_with(emu: Emulator, provider: str, source: Path, *args: object):
    return invoke(
        "run", source, "--provider", provider, "--base-url", emu.base_url, "-q", *args
    )  # fmt: skip


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_local_image_reaches_the_emulator_and_sent_prompt_describes_it(
    tmp_path: Path, provider: str
):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(PNG)
    source = image_csv(tmp_path, ["pics/a.png"])  # relative to the input's folder
    server = openai_emulator if provider == "openai" else anthropic_emulator

    with server() as emu:
        result = run_with(emu, provider, source, "--image-column", "picture")

    assert result.exit_code == 0, result.stderr
    [row] = rows_of(tmp_path / "in.responses.parquet")
    assert row["response"].endswith(f" [1 image: sha256 {short(PNG)}]")
    described = f"[image: image/png, {len(PNG):,} bytes, sha256 {short(PNG)}]"
    assert described in row["sent_prompt"]
    assert base64.b64encode(PNG).decode()[:16] not in row["sent_prompt"]


def test_two_image_columns_send_a_jpeg_and_a_data_url_on_the_anthropic_protocol(
    tmp_path: Path,
):
    (tmp_path / "b.jpg").write_bytes(JPEG)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    source = write_csv(
        tmp_path / "in.csv", [{"prompt": "Compare.", "one": "b.jpg", "two": data_url}]
    )

    with anthropic_emulator() as emu:
        result = run_with(
            emu, "anthropic", source, "--image-column", "one", "--image-column", "two"
        )

    assert result.exit_code == 0, result.stderr
    [row] = rows_of(tmp_path / "in.responses.parquet")
    assert row["response"].endswith(f" [2 images: sha256 {short(JPEG)} {short(PNG)}]")
    assert "image/jpeg" in row["sent_prompt"]


def test_parquet_binary_cells_are_sent_as_images(tmp_path: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"prompt": ["What is it?"], "picture": pa.array([PNG], pa.binary())}), source
    )

    with openai_emulator() as emu:
        result = run_with(emu, "openai", source, "--image-column", "picture")

    assert result.exit_code == 0, result.stderr
    [row] = rows_of(tmp_path / "in.responses.parquet")
    assert row["response"].endswith(f" [1 image: sha256 {short(PNG)}]")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_http_url_is_passed_on_as_it_is_never_fetched(tmp_path: Path, provider: str):
    source = image_csv(tmp_path, [URL])
    server = openai_emulator if provider == "openai" else anthropic_emulator

    with server() as emu:
        result = run_with(emu, provider, source, "--image-column", "picture")

    assert result.exit_code == 0, result.stderr
    [row] = rows_of(tmp_path / "in.responses.parquet")
    assert row["response"].endswith(f" [1 image: sha256 {short(URL.encode())}]")
    assert f"[image: {URL}]" in row["sent_prompt"]


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("missing.png", "no image file 'missing.png'"), ("notes.txt", "is not a PNG, JPEG")],
)
def test_a_missing_or_unknown_image_exits_2_naming_the_row_before_sending(
    tmp_path: Path, cell: str, expected: str
):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "notes.txt").write_text("not an image")
    source = image_csv(tmp_path, ["a.png", cell])

    with openai_emulator() as emu:
        result = run_with(emu, "openai", source, "--image-column", "picture")
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert "row 1" in result.stderr and "picture" in result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sent == 0


def test_the_aichatonline_provider_refuses_image_columns(tmp_path: Path, live_emulator: Emulator):
    (tmp_path / "a.png").write_bytes(PNG)
    source = image_csv(tmp_path, ["a.png"])

    result = invoke(
        "run", source, "--base-url", live_emulator.base_url, "--image-column", "picture"
    )  # fmt: skip

    assert result.exit_code == 2
    assert "takes no images" in result.stderr
    assert live_emulator.stats.chat_requests == 0


def test_a_rerun_resends_a_row_whose_image_bytes_changed_but_not_a_moved_image(
    tmp_path: Path,
):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(PNG + name.encode())
    source = image_csv(tmp_path, ["a.png", "b.png"])

    with openai_emulator() as emu:
        first = run_openai(source, emu.base_url, "--image-column", "picture", "-q")
        after_first = emu.stats.chat_requests
        (tmp_path / "a.png").write_bytes(JPEG)  # same path, other bytes
        (tmp_path / "b.png").rename(tmp_path / "moved.png")  # other path, same bytes
        image_csv(tmp_path, ["a.png", "moved.png"])
        second = run_openai(source, emu.base_url, "--image-column", "picture", "-q")
        resent = emu.stats.chat_requests - after_first

    assert (first.exit_code, second.exit_code) == (0, 0), second.stderr
    assert (after_first, resent) == (2, 1)
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert rows[0]["response"].endswith(f"sha256 {short(JPEG)}]")
    assert json.loads(rows[1]["sent_prompt"])[0]["content"].endswith(
        f"sha256 {short(PNG + b'b.png')}]"
    )


def test_more_image_rows_than_requests_in_flight_each_get_their_own_image(tmp_path: Path):
    pictures = []
    for i in range(7):
        data = PNG + bytes([i])
        (tmp_path / f"p{i}.png").write_bytes(data)
        pictures.append(data)
    source = image_csv(tmp_path, [f"p{i}.png" for i in range(7)])

    with openai_emulator() as emu:
        result = run_with(emu, "openai", source, "--image-column", "picture", "-c", 2)

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["response"].rsplit("sha256 ", 1)[1] for r in rows] == [
        f"{short(data)}]" for data in pictures
    ]
