"""The genai-prices answers kept on disk (aibatch.jobs.price_cache): never a wrong price."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices.types import (
    ClauseEquals,
    ConditionalPrice,
    ModelInfo,
    ModelPrice,
    StartDateConstraint,
    TimeOfDateConstraint,
)

from aibatch.jobs.cost import Price, PriceLookup, Rate, look_up_price
from aibatch.jobs.price_cache import (
    CACHE_ENV,
    FILE_NAME,
    MAX_ENTRIES,
    PriceCache,
    checksum,
    lasting,
)

# one price; tiers (more for long prompts); not priced by tokens; not in the table
MODELS = [
    "gpt-4o-mini",
    "claude-haiku-4-5",
    "gemini-2.5-pro",
    "gemini-1.5-pro",
    "@cf/baai/bge-base-en-v1.5",
    "no-such-model-anywhere",
]

LOOK_UP = (
    "import json, sys\n"
    "from aibatch.jobs.cost import look_up_price\n"
    "lookup = look_up_price('gpt-4o-mini')\n"
    "print(json.dumps(['genai_prices' in sys.modules, lookup.note]))\n"
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def uncached(model: str) -> PriceLookup:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, "off")
        return look_up_price(model)


def table_answer(model: str) -> Price | str:
    """What the table says of ``model``, as the cache keeps it."""
    lookup = uncached(model)
    return lookup.price if lookup.price is not None else lookup.note.removeprefix("cost unknown: ")


def read_file(folder: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads((folder / FILE_NAME).read_bytes())
    return content


def kept_models(folder: Path) -> list[str]:
    """The models of the cache file, oldest first."""
    return [model for model, _ in read_file(folder)["payload"]["entries"]]


def entry_of(payload: dict[str, Any], model: str) -> dict[str, Any]:
    found: dict[str, Any] = dict(payload["entries"])[model]
    return found


def rewrite(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the kept payload and sign it again, as a valid file would be."""
    content = read_file(folder)
    change(content["payload"])
    content["sha256"] = checksum(content["payload"])
    (folder / FILE_NAME).write_text(json.dumps(content))


def look_up_in_subprocess(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """``look_up_price('gpt-4o-mini')`` in a new interpreter: genai_prices imported? the note."""
    done = subprocess.run(
        [sys.executable, "-c", LOOK_UP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported, note = json.loads(done.stdout)
    return imported, note


@pytest.mark.slow
def test_a_second_run_prices_a_model_without_importing_genai_prices(cache_dir: Path):
    first = look_up_in_subprocess()
    second = look_up_in_subprocess()

    assert (first[0], second) == (True, (False, first[1]))


@pytest.mark.slow
def test_a_reinstalled_table_is_read_again(cache_dir: Path, tmp_path: Path):
    site = tmp_path / "site"
    package = site / "genai_prices"
    shutil.copytree(
        Path(genai_prices.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    look_up_in_subprocess(env)  # keeps the copy's answer
    kept = look_up_in_subprocess(env)
    table = package / "data.py"
    os.utime(table, ns=(table.stat().st_atime_ns, table.stat().st_mtime_ns + 1_000))
    after = look_up_in_subprocess(env)

    assert (kept[0], after[0]) == (False, True)


@pytest.mark.parametrize("model", MODELS)
def test_a_kept_answer_is_the_table_answer_field_for_field(cache_dir: Path, model: str):
    look_up_price(model)  # keeps it

    kept = PriceCache.open().get(model)

    assert repr(kept) == repr(table_answer(model))


@pytest.mark.parametrize("model", MODELS)
def test_a_price_read_from_the_cache_is_described_as_the_table_one(cache_dir: Path, model: str):
    look_up_price(model)

    assert repr(look_up_price(model)) == repr(uncached(model))


def test_every_field_of_a_price_is_kept(cache_dir: Path):
    price = Price(
        input=Rate(0.1, ((1_000, 0.2), (200_000, 0.30000000000000004))),
        output=Rate(1e-7, ((200_000, 12.5),)),
        per_request=0.005,
        source="a table: provider model",
    )
    PriceCache.open().put("m", price)

    assert repr(PriceCache.open().get("m")) == repr(price)


def test_a_model_whose_price_changes_with_time_is_not_kept(cache_dir: Path):
    look_up_price("gpt-4o-mini")
    look_up_price("deepseek-chat")  # cheaper at night

    assert kept_models(cache_dir) == ["gpt-4o-mini"]


def model_info(prices: ModelPrice | list[ConditionalPrice]) -> ModelInfo:
    return ModelInfo(id="m", match=ClauseEquals(equals="m"), prices=prices)


ONE_PRICE = ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(2))
LATER_PRICE = ModelPrice(input_mtok=Decimal(3), output_mtok=Decimal(4))


@pytest.mark.parametrize(
    ("prices", "lasts"),
    [
        pytest.param(ONE_PRICE, True, id="one price"),
        pytest.param(
            [
                ConditionalPrice(prices=ONE_PRICE),
                ConditionalPrice(StartDateConstraint(date(2100, 1, 1)), prices=LATER_PRICE),
            ],
            False,
            id="a new price from a date",
        ),
        pytest.param(
            [
                ConditionalPrice(prices=ONE_PRICE),
                ConditionalPrice(
                    TimeOfDateConstraint(time(16, 30), time(0, 30)), prices=LATER_PRICE
                ),
            ],
            False,
            id="off-peak hours",
        ),
        pytest.param([ConditionalPrice(prices=ONE_PRICE)], False, id="a list of one"),
    ],
)
def test_only_a_model_with_one_price_is_kept(
    prices: ModelPrice | list[ConditionalPrice], lasts: bool
):
    assert lasting(model_info(prices)) is lasts


def set_base(payload: dict[str, Any], value: object) -> None:
    entry_of(payload, "gpt-4o-mini")["input"]["base"] = value


def wrong_price_unsigned(folder: Path) -> None:
    content = read_file(folder)
    set_base(content["payload"], 0.0)
    (folder / FILE_NAME).write_text(json.dumps(content))


def world_writable(folder: Path) -> None:
    rewrite(folder, lambda payload: set_base(payload, 0.0))
    (folder / FILE_NAME).chmod(0o666)


def owned_by_another_user(folder: Path) -> None:
    rewrite(folder, lambda payload: set_base(payload, 0.0))
    os.chown(folder / FILE_NAME, os.getuid() + 4242, -1)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "random bytes": lambda folder: (folder / FILE_NAME).write_bytes(
        random.Random(7).randbytes(300)
    ),
    "truncated JSON": lambda folder: (folder / FILE_NAME).write_bytes(
        (folder / FILE_NAME).read_bytes()[:-40]
    ),
    "not an object": lambda folder: (folder / FILE_NAME).write_text("[1, 2, 3]"),
    "checksum mismatch": wrong_price_unsigned,
    "a rate as a string": lambda folder: rewrite(folder, lambda payload: set_base(payload, "0")),
    "a fee as an integer": lambda folder: rewrite(
        folder, lambda payload: entry_of(payload, "gpt-4o-mini").update(per_request=1)
    ),
    "a tier starting at true": lambda folder: rewrite(
        folder,
        lambda payload: entry_of(payload, "gpt-4o-mini")["input"].update(tiers=[[True, 0.0]]),
    ),
    "an unknown field": lambda folder: rewrite(
        folder, lambda payload: entry_of(payload, "gpt-4o-mini").update(share=0.5)
    ),
    "a model kept twice": lambda folder: rewrite(
        folder,
        lambda payload: payload["entries"].append(["gpt-4o-mini", {"none": "a wrong answer"}]),
    ),
    "not a number": lambda folder: (folder / FILE_NAME).write_text(
        (folder / FILE_NAME).read_text().replace("0.15", "NaN")
    ),
    "writable by everyone": world_writable,
    "owned by another user": owned_by_another_user,
}


def damaged_cases() -> list[Any]:
    return [
        pytest.param(
            damage,
            id=name,
            marks=pytest.mark.skipif(
                name == "owned by another user" and os.getuid() != 0,
                reason="only root gives a file away",
            ),
        )
        for name, damage in DAMAGES.items()
    ]


@pytest.mark.parametrize("damage", damaged_cases())
def test_a_damaged_cache_file_gives_the_table_answer(
    cache_dir: Path, damage: Callable[[Path], None]
):
    look_up_price("gpt-4o-mini")
    damage(cache_dir)

    assert repr(look_up_price("gpt-4o-mini")) == repr(uncached("gpt-4o-mini"))


@pytest.mark.parametrize("damage", damaged_cases())
def test_a_damaged_cache_file_is_written_anew(cache_dir: Path, damage: Callable[[Path], None]):
    look_up_price("gpt-4o-mini")
    damage(cache_dir)
    look_up_price("claude-haiku-4-5")

    assert repr(PriceCache.open().get("claude-haiku-4-5")) == repr(table_answer("claude-haiku-4-5"))


def another_install(payload: dict[str, Any]) -> None:
    payload["table"]["files"][0][2] += 1  # data.py modified a nanosecond later
    set_base(payload, 0.0)
    payload["entries"].append(["older-model", {"none": "from the old table"}])


def test_a_cache_file_of_another_install_is_ignored(cache_dir: Path):
    look_up_price("gpt-4o-mini")
    rewrite(cache_dir, another_install)

    assert repr(look_up_price("gpt-4o-mini")) == repr(uncached("gpt-4o-mini"))


def test_a_cache_file_of_another_install_is_replaced_whole(cache_dir: Path):
    look_up_price("gpt-4o-mini")
    expected_table = read_file(cache_dir)["payload"]["table"]
    rewrite(cache_dir, another_install)
    look_up_price("gpt-4o-mini")

    table = read_file(cache_dir)["payload"]["table"]
    assert (table, kept_models(cache_dir)) == (expected_table, ["gpt-4o-mini"])


def test_the_cache_keeps_the_newest_answers_up_to_its_bound(cache_dir: Path):
    look_up_price("gpt-4o-mini")
    rewrite(
        cache_dir,
        lambda payload: payload.update(
            entries=[[f"model-{i}", {"none": f"why {i}"}] for i in range(MAX_ENTRIES)]
        ),
    )
    look_up_price("claude-haiku-4-5")

    entries = kept_models(cache_dir)
    assert (len(entries), entries[0], entries[-1]) == (MAX_ENTRIES, "model-1", "claude-haiku-4-5")


def test_a_table_replaced_in_the_process_bypasses_the_cache_file(cache_dir: Path):
    look_up_price("gpt-4o-mini")
    rewrite(cache_dir, lambda payload: set_base(payload, 0.0))
    bundled = data_snapshot.get_snapshot()
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=bundled.providers, from_auto_update=True)
    )
    try:
        lookup = look_up_price("gpt-4o-mini")
    finally:
        data_snapshot.set_custom_snapshot(None)

    assert repr(lookup) == repr(uncached("gpt-4o-mini"))


def test_an_unwritable_cache_folder_still_gives_the_table_answer_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(not_a_folder / "cache"))  # even root cannot make it
    with caplog.at_level(logging.DEBUG):
        lookup = look_up_price("gpt-4o-mini")

    loud = [record for record in caplog.records if record.levelno > logging.DEBUG]
    assert (repr(lookup), loud) == (repr(uncached("gpt-4o-mini")), [])


@pytest.mark.parametrize("setting", ["", "off", "OFF"])
def test_the_cache_turned_off_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
):
    monkeypatch.chdir(tmp_path)  # nor a folder named "off" here
    monkeypatch.setenv(CACHE_ENV, setting)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    look_up_price("gpt-4o-mini")

    assert list(tmp_path.iterdir()) == []


def test_without_aibatch_cache_dir_the_cache_is_in_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    look_up_price("gpt-4o-mini")

    assert (tmp_path / "xdg" / "aibatch" / FILE_NAME).is_file()


def test_without_a_cache_setting_the_cache_is_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    look_up_price("gpt-4o-mini")

    assert (tmp_path / ".cache" / "aibatch" / FILE_NAME).is_file()
