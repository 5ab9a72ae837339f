"""``--provider anthropic`` end to end through the CLI, against the emulator on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from aibatch.io.output import read_metadata
from aibatch.providers.emulator import Emulator, Faults, answer_for
from tests.conftest import emulator_in_thread
from tests.test_openai_cli import (
    fast_retries,
    invoke,
    prompts_csv,
    questions,
    rows_of,
    summary_of,
    write_csv,
)

KEY = "sk-ant-cli-secret-0b7d3e9f15a2c846"
OUTPUT = "in.responses.parquet"


@contextlib.contextmanager
def anthropic_emulator(**options: Any) -> Iterator[Emulator]:
    with emulator_in_thread(protocol="anthropic", **options) as emu:
        yield emu


def run_anthropic(
    source: object, base_url: str, *args: object, env: dict[str, str | None] | None = None
) -> Any:
    """``aibatch run SOURCE --provider anthropic --base-url BASE_URL ARGS...``."""
    return invoke("run", source, "--provider", "anthropic", "--base-url", base_url, *args, env=env)


# runs


def test_provider_anthropic_with_emulate_answers_every_row(tmp_path: Path):
    source = prompts_csv(tmp_path, [*questions(5), ""])

    result = invoke(
        "run", source, "--provider", "anthropic", "--emulate", "--summary-json", tmp_path / "s.json"
    )

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / OUTPUT)
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["skipped"]
    for row in rows[:5]:
        assert row["response"] == answer_for(row["prompt"])
        assert json.loads(row["sent_prompt"]) == {
            "messages": [{"role": "user", "content": row["prompt"]}]
        }
        assert (row["provider"], row["model"], row["finish_reason"]) == (
            "anthropic",
            "claude-haiku-4-5",
            "stop",
        )
        assert row["prompt_tokens"] == len(row["prompt"].split())
        assert row["completion_tokens"] == len(row["response"].split())
    summary = summary_of(tmp_path / "s.json")
    assert (summary["ok"], summary["skipped"], summary["provider"]) == (5, 1, "anthropic")


def test_the_default_max_tokens_is_recorded_in_the_output_metadata(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    result = invoke("run", source, "--provider", "anthropic", "--emulate", "-q")

    assert result.exit_code == 0, result.stderr
    assert read_metadata(tmp_path / OUTPUT)["request_defaults"] == {"max_tokens": 1024}


def test_max_tokens_given_cuts_answers_to_length_and_records_no_default(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    result = invoke(
        "run", source, "--provider", "anthropic", "--emulate", "--max-tokens", 2,
        "--summary-json", tmp_path / "s.json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / OUTPUT)
    assert {r["finish_reason"] for r in rows} == {"length"}
    assert all(len(r["response"].split()) == 2 for r in rows)
    assert summary_of(tmp_path / "s.json")["truncated"] == 3
    assert "request_defaults" not in read_metadata(tmp_path / OUTPUT)


def test_a_stop_sequence_ends_the_answer_and_its_raw_reason_is_kept(tmp_path: Path):
    source = prompts_csv(tmp_path, ["Where to stop?"])

    result = invoke("run", source, "--provider", "anthropic", "--emulate", "--stop", "said", "-q")

    assert result.exit_code == 0, result.stderr
    (row,) = rows_of(tmp_path / OUTPUT)
    assert row["response"] == answer_for("Where to stop?").split("said")[0]
    assert row["finish_reason"] == "stop_sequence"


def test_the_system_message_goes_in_the_system_field_and_roles_are_kept(tmp_path: Path):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
    ]
    source = write_csv(tmp_path / "in.csv", [{"messages": json.dumps(conversation)}])

    with anthropic_emulator() as emu:
        result = run_anthropic(
            source, emu.base_url, "--messages-column", "messages", "--system", "Be brief.", "-q"
        )
        prompts = dict(emu.stats.prompts)

    assert result.exit_code == 0, result.stderr
    (row,) = rows_of(tmp_path / OUTPUT)
    flattened = "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: How are you?\nAssistant:"
    assert prompts == {flattened: 1}
    assert row["response"] == answer_for(flattened)
    assert json.loads(row["sent_prompt"]) == {"system": "Be brief.", "messages": conversation}


def test_no_stream_gives_the_same_answers(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with anthropic_emulator() as emu:
        result = run_anthropic(source, emu.base_url, "--no-stream", "-q")

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / OUTPUT)
    assert [r["response"] for r in rows] == [answer_for(q) for q in questions(3)]
    assert {r["finish_reason"] for r in rows} == {"stop"}


def test_seed_is_refused_with_exit_2_and_nothing_sent(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    with anthropic_emulator() as emu:
        result = run_anthropic(source, emu.base_url, "--seed", 7)
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert "the anthropic provider does not take --seed" in result.stderr
    assert sent == 0


def test_a_temperature_above_1_is_refused_with_exit_2_and_nothing_sent(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    with anthropic_emulator() as emu:
        result = run_anthropic(source, emu.base_url, "--temperature", 1.5)
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("the anthropic provider takes --temperature from 0 to 1, not 1.5")
    )
    assert sent == 0


def test_top_k_is_taken_by_anthropic(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    with anthropic_emulator() as emu:
        result = run_anthropic(source, emu.base_url, "--top-k", 40, "--temperature", 0.5, "-q")

    assert result.exit_code == 0, result.stderr


def test_top_k_is_refused_by_openai(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    result = invoke("run", source, "--provider", "openai", "--emulate", "--top-k", 40)

    assert result.exit_code == 2
    assert "the openai provider does not take --top-k" in result.stderr


# errors


def test_overloads_error_events_and_429s_are_retried_until_every_row_is_ok(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(40))
    faults = Faults(
        overload_rate=0.2, error_event_rate=0.2, rate_limit_rate=0.1, retry_after=0.01, seed=5
    )

    with anthropic_emulator(faults=faults) as emu:
        result = run_anthropic(
            source, emu.base_url, "--job", fast_retries(tmp_path), "--max-attempts", 30, "-q"
        )
        outcomes = dict(emu.stats.outcomes)

    assert result.exit_code == 0, result.stderr
    assert {r["status"] for r in rows_of(tmp_path / OUTPUT)} == {"ok"}
    assert outcomes["overloaded"] > 0 and outcomes["error_event"] > 0


def test_a_request_the_api_refuses_fails_its_row_alone_without_retries(tmp_path: Path):
    # a conversation of only a system message leaves no messages: a 400
    lonely = json.dumps([{"role": "system", "content": "Nobody speaks."}])
    fine = json.dumps([{"role": "user", "content": "Hi"}])
    source = write_csv(tmp_path / "in.csv", [{"messages": fine}, {"messages": lonely}])

    with anthropic_emulator() as emu:
        result = run_anthropic(source, emu.base_url, "--messages-column", "messages", "-q")

    assert result.exit_code == 1
    ok, refused = rows_of(tmp_path / OUTPUT)
    assert ok["status"] == "ok"
    assert (refused["status"], refused["error_type"], refused["http_status"]) == (
        "error",
        "PermanentError",
        400,
    )
    assert refused["attempts"] == 1
    assert "invalid_request_error" in refused["error"]


# the API key


def test_the_key_is_read_from_anthropic_api_key(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with anthropic_emulator(api_key=KEY) as emu:
        result = run_anthropic(source, emu.base_url, env={"ANTHROPIC_API_KEY": KEY})

    assert result.exit_code == 0, result.stderr
    assert emu.stats.outcomes == {"ok": 3}


def test_api_key_env_names_the_variable_to_read(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with anthropic_emulator(api_key=KEY) as emu:
        result = run_anthropic(
            source,
            emu.base_url,
            "--api-key-env",
            "MY_CLAUDE_KEY",
            env={"MY_CLAUDE_KEY": KEY, "ANTHROPIC_API_KEY": "sk-ant-other"},
        )

    assert result.exit_code == 0, result.stderr


def test_anthropic_itself_without_a_key_exits_2_naming_the_variable(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    # the proxy is a closed loopback port: had anything been sent, it went nowhere
    result = invoke(
        "run", source, "--provider", "anthropic", "--proxy", "http://127.0.0.1:9",
        "--max-attempts", 1, "--timeout", 2, env={"ANTHROPIC_API_KEY": None},
    )  # fmt: skip

    assert result.exit_code == 2
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "api.anthropic.com" in result.stderr


def test_a_refused_key_stops_the_run_with_exit_2_naming_the_variable(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(50))

    with anthropic_emulator(api_key=KEY) as emu:
        result = run_anthropic(
            source, emu.base_url, "-c", 4, "-q", env={"ANTHROPIC_API_KEY": "sk-ant-wrong"}
        )
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert "HTTP 401" in result.stderr and "authentication_error" in result.stderr
    assert "$ANTHROPIC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert sent <= 4
    assert not (tmp_path / OUTPUT).exists()


# the other commands


def test_providers_lists_anthropic_with_its_options_and_key():
    result = invoke("providers")

    assert result.exit_code == 0
    entry = result.stdout.split("anthropic  (")[1].split("\n\n")[0]
    assert "aibatch.providers.anthropic.AnthropicMessages" in entry
    assert "options: max_tokens, stop, temperature, top_k, top_p, no_stream" in entry
    assert "api key: $ANTHROPIC_API_KEY" in entry


@pytest.mark.slow
async def test_aibatch_emulate_serves_the_anthropic_protocol_with_a_key() -> None:
    process = await anyio.open_process(
        [
            sys.executable, "-m", "aibatch", "emulate", "--port", "0", "--protocol",
            "anthropic", "--api-key-env", "EMU_KEY",
        ],
        env={**os.environ, "EMU_KEY": KEY},
    )  # fmt: skip
    async with process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            url = (await process.stdout.receive(1024)).decode().strip()
        body = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/messages", json=body) as refused:
                refused_status = refused.status
            async with session.post(
                f"{url}/v1/messages", json=body, headers={"x-api-key": KEY}
            ) as response:
                message = await response.json()
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            await process.wait()

    assert refused_status == 401
    assert message["content"][0]["text"] == answer_for("Hi")
    assert process.returncode == 0
