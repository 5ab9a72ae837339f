"""What every chaos test checks: one output row per input row, each with its own answer.

Also the inputs the tests share, reading checkpoints back, and the tally of what the
suite did to aibatch (set ``AIBATCH_CHAOS_TALLY=path`` to collect the figures quoted in
the README's reliability section).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from aibatch.cli import main
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Emulator, answer_for

# Emulator outcomes that are injected faults (the rest are "ok" and protocol refusals).
FAULT_OUTCOMES = ("server_error", "rate_limited", "cut", "garbage", "stalled", "unauthorized")


def invoke(*args: object, input: str | None = None) -> Result:
    """Run the CLI in-process; an exception it did not handle fails the test (a traceback)."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def write_prompts(folder: Path, rows: int, name: str = "in.csv") -> tuple[Path, list[str]]:
    """A CSV of ``rows`` distinct prompts with commas, quotes and an id column."""
    prompts = [f'Question {i}: what is {i} + {i}, "roughly"?' for i in range(rows)]
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt"])
        writer.writerows([f"r{i}", prompt] for i, prompt in enumerate(prompts))
    return path, prompts


def part_files(output: Path) -> list[Path]:
    """The complete checkpoint parts of ``output`` (a crash can leave only ``.tmp`` files)."""
    folder = checkpoint_dir(output) / "parts"
    return sorted(folder.glob("*.arrow")) if folder.exists() else []


def read_part(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as handle:
        return pa.ipc.open_file(handle).read_all()


def stored_rows(output: Path) -> list[int]:
    """Row numbers in the checkpoint, one entry per stored record (every part must read)."""
    rows: list[int] = []
    for part in part_files(output):
        rows += read_part(part).column("row").to_pylist()
    return rows


def assert_every_row_accounted(
    output: Path, prompts: list[str], *, all_ok: bool = True
) -> list[dict[str, Any]]:
    """No row lost or duplicated, every answer its own prompt's, every failure explained."""
    table = pq.read_table(output)
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(prompts))), "rows lost or duplicated"
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        if r["status"] == "ok":
            assert r["response"] == answer_for(r["prompt"]), f"row {r['row']}: foreign answer"
            assert r["sent_prompt"] == r["prompt"]
            assert r["error"] is None and r["attempts"] >= 1
        else:
            assert r["status"] == "error", r
            assert r["error_type"] and r["error"], f"row {r['row']} failed without a reason"
            assert r["response"] is None
    if all_ok:
        failed = [(r["row"], r["error_type"], r["error"]) for r in rows if r["status"] != "ok"]
        assert not failed, failed[:5]
    return rows


def assert_only_own_prompts_reached(emu: Emulator, prompts: list[str]) -> None:
    """The emulator never saw a prompt that is not one of the input's."""
    assert set(emu.stats.prompts) <= set(prompts)


def assert_tokens_follow_expiries(*emulators: Emulator, max_uses: int | None = None) -> None:
    """Token requests: one, plus one per expiry; never one per prompt."""
    tokens = sum(e.stats.token_requests for e in emulators)
    rejected = sum(e.stats.outcomes["unauthorized"] for e in emulators)
    assert tokens <= rejected + 1, (tokens, rejected)
    if max_uses is not None:
        uses = sum(e.stats.chat_requests for e in emulators) - rejected
        assert tokens <= uses // max_uses + 2, (tokens, uses, max_uses)


def injected(emu: Emulator) -> int:
    """Faults the emulator injected, stalls included (a stalled request gets no outcome)."""
    outcomes = emu.stats.outcomes
    answered = sum(outcomes.values())
    stalled = emu.stats.chat_requests - answered
    return sum(outcomes[name] for name in FAULT_OUTCOMES) + max(stalled, 0)


def tally(**counts: int) -> None:
    """Add to the suite's figures, when ``AIBATCH_CHAOS_TALLY`` names a file to keep them."""
    path = os.environ.get("AIBATCH_CHAOS_TALLY")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(counts) + "\n")


def read_tally(path: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        total.update(json.loads(line))
    return total
