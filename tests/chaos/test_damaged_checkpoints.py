"""Checkpoint parts damaged at seeded places, between a partial run and the re-run.

Five runs with a growing ``--limit`` leave a checkpoint of several parts. The test then
damages seeded parts: bytes overwritten at seeded offsets, the file cut short, a valid
Arrow file of another schema put in its place (under a name whose checksum matches it,
or an old-style name without one), or two parts' names swapped. Expected: the re-run
exits 0, warns naming each damaged part and sets it aside, sends again exactly the rows
the damaged parts held (and those never stored), and every row's answer is its own
prompt's. Parts that only traded their numbers, each keeping its own checksum, are not
damaged: nothing of theirs is sent again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import emulator_in_thread

from .checks import assert_every_row_accounted, invoke, part_files, read_part, tally
from .crashpoints import child

ROWS = 240
LIMITS = (40, 80, 120, 160, 200)  # one partial run each: a part each, at least
DAMAGES = ("bytes", "truncated", "foreign-schema", "names-swapped", "numbers-swapped")
SEEDS = range(2 * len(DAMAGES))


@dataclass(frozen=True, slots=True)
class Damage:
    """What seed ``seed`` does to the checkpoint's parts."""

    seed: int
    kind: str

    def apply(self, parts: list[Path]) -> set[Path]:
        """Damage some of ``parts``; return the ones that are now damaged."""
        rng = random.Random(self.seed)
        chosen = rng.sample(parts, 2 if self.kind.endswith("swapped") else rng.randint(1, 3))
        if self.kind == "bytes":
            for part in chosen:
                data = bytearray(part.read_bytes())
                for offset in rng.sample(range(len(data)), rng.randint(1, 4)):
                    data[offset] ^= rng.randint(1, 255)  # never the byte it was
                part.write_bytes(bytes(data))
            return set(chosen)
        if self.kind == "truncated":
            for part in chosen:
                os.truncate(part, rng.randrange(part.stat().st_size))
            return set(chosen)
        if self.kind == "foreign-schema":
            return {foreign_part(part, rng) for part in chosen}
        first, second = chosen
        if self.kind == "names-swapped":
            swap(first, second)
            return {first, second}
        # Numbers swapped, each file keeping its own checksum: nothing is damaged.
        (n1, c1), (n2, c2) = first.name.split("-"), second.name.split("-")
        staged = first.with_name("staged")
        first.rename(staged)
        second.rename(second.with_name(f"{n1}-{c2}"))
        staged.rename(first.with_name(f"{n2}-{c1}"))
        return set()


def swap(first: Path, second: Path) -> None:
    staged = first.with_name("staged")
    first.rename(staged)
    second.rename(first)
    staged.rename(second)


def foreign_part(part: Path, rng: random.Random) -> Path:
    """Put a valid Arrow file of another schema in ``part``'s place; return its path."""
    table = read_part(part)
    foreign = rng.choice(
        [
            table.drop_columns(["request_hash"]),  # a column short
            table.set_column(2, "row", table.column("row").cast(pa.string())),  # a type wrong
            pa.table({"row": table.column("row"), "response": ["forged"] * table.num_rows}),
        ]
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, foreign.schema) as writer:
        writer.write_table(foreign)
    data = sink.getvalue().to_pybytes()
    number = part.name[:8]
    if rng.random() < 0.5:  # a name whose checksum matches: only the schema tells
        checksum = hashlib.blake2b(data, digest_size=16).hexdigest()
        name = f"{number}-{checksum}.arrow"
    else:  # an old-style name, without a checksum
        name = f"{number}.arrow"
    part.unlink()
    target = part.with_name(name)
    target.write_bytes(data)
    return target


def damage_of(seed: int) -> Damage:
    return Damage(seed, DAMAGES[seed % len(DAMAGES)])


def damage_id(seed: int) -> str:
    return f"seed{seed}-{damage_of(seed).kind}"


def partial_checkpoint(folder: Path, base_url: str) -> tuple[Path, list[str], tuple[object, ...]]:
    """An input of ``ROWS`` prompts and a checkpoint of the first ``LIMITS[-1]`` of them."""
    prompts = [f"Question {i}: what is {i} + {i}, roughly?" for i in range(ROWS)]
    source = folder / "in.csv"
    source.write_text("prompt\n" + "".join(f'"{p}"\n' for p in prompts), encoding="utf-8")
    args: tuple[object, ...] = ("run", source, "--base-url", base_url, "--no-progress", "-c", 8)
    for limit in LIMITS:
        result = invoke(*args, "--limit", limit)
        assert result.exit_code == 0, result.stderr
    return folder / "in.responses.parquet", prompts, args


def test_the_damage_plan_covers_every_kind_of_damage_twice():
    kinds = Counter(damage_of(seed).kind for seed in SEEDS)
    assert set(kinds) == set(DAMAGES) and min(kinds.values()) == 2


@pytest.mark.parametrize("seed", SEEDS, ids=damage_id)
def test_a_rerun_over_damaged_parts_sends_exactly_their_rows_again_each_with_its_own_answer(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
):
    damage = damage_of(seed)
    with emulator_in_thread() as emu:
        output, prompts, args = partial_checkpoint(tmp_path, emu.base_url)
        parts = part_files(output)
        assert len(parts) >= len(LIMITS)
        rows_in = {part.name[:8]: read_part(part).column("row").to_pylist() for part in parts}
        damaged = damage.apply(parts)
        before = Counter(emu.stats.prompts)
        caplog.clear()
        rerun = invoke(*args)
        assert rerun.exit_code == 0, rerun.stderr
        resent = Counter(emu.stats.prompts) - before
    assert_every_row_accounted(output, prompts)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "aibatch.jobs.checkpoint" and record.levelno == logging.WARNING
    ]
    named = sorted(part.name for part in damaged for text in warnings if str(part) in text)
    assert (len(warnings), named) == (len(damaged), sorted(p.name for p in damaged))
    assert all(part.with_name(part.name + ".damaged").exists() for part in damaged)
    lost = sorted(row for part in damaged for row in rows_in[part.name[:8]])
    expected = [*lost, *range(LIMITS[-1], ROWS)]
    assert sorted(prompts.index(p) for p in resent) == expected
    assert set(resent.values()) == {1}
    tally(parts_damaged=len(damaged), damaged_rows_resent=len(lost), rows_checked=ROWS)


@pytest.mark.slow
def test_a_damaged_part_is_named_on_the_reruns_stderr(tmp_path: Path):
    with emulator_in_thread() as emu:
        output, _, args = partial_checkpoint(tmp_path, emu.base_url)
        part = part_files(output)[0]
        os.truncate(part, part.stat().st_size // 2)
        with child(args, tmp_path, None) as process:
            _, raw = process.communicate(timeout=60)
    stderr = raw.decode()
    assert process.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and str(part) in warnings[0] and "sent again" in warnings[0]
