"""``--provider openai`` end to end through the CLI, against servers on loopback.

Most tests use the emulator in OpenAI mode. The key tests also use ``EchoingServer``, a
small chat-completions server of this file that quotes the key it was sent in every
error body, as careless servers do, so that a search of everything aibatch wrote can
show the key never got out.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from click.testing import CliRunner, Result

from aibatch.cli import main
from aibatch.io.output import read_metadata
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.providers.helpers import format_prompt
from tests.conftest import emulator_in_thread

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-cli-secret-5e0d8b1f7a3c29d4"


def invoke(*args: object, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def run_openai(
    source: object, base_url: str, *args: object, env: dict[str, str | None] | None = None
) -> Result:
    """``aibatch run SOURCE --provider openai --base-url BASE_URL ARGS...``."""
    return invoke("run", source, "--provider", "openai", "--base-url", base_url, *args, env=env)


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def prompts_csv(tmp_path: Path, prompts: list[str], name: str = "in.csv") -> Path:
    return write_csv(tmp_path / name, [{"prompt": p} for p in prompts])


def questions(n: int) -> list[str]:
    return [f"Question number {i}?" for i in range(n)]


def fast_retries(tmp_path: Path) -> Path:
    """A job file whose retries wait at most 50 ms (the defaults wait up to 30 s)."""
    job = tmp_path / "fast-retries.toml"
    job.write_text("[retry]\nwait_initial = 0.0\nwait_max = 0.05\nwait_jitter = 0.01\n")
    return job


def summary_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def rows_of(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


@contextlib.contextmanager
def openai_emulator(**options: Any) -> Iterator[Emulator]:
    with emulator_in_thread(protocol="openai", **options) as emu:
        yield emu


# runs


def test_provider_openai_with_emulate_answers_every_row(tmp_path: Path):
    source = prompts_csv(tmp_path, [*questions(5), ""])
    result = invoke(
        "run", source, "--provider", "openai", "--emulate", "--summary-json", tmp_path / "s.json"
    )

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["skipped"]
    for row in rows[:5]:
        assert row["response"] == answer_for(row["prompt"])
        assert json.loads(row["sent_prompt"]) == [{"role": "user", "content": row["prompt"]}]
        assert (row["provider"], row["model"], row["finish_reason"]) == (
            "openai",
            "gpt-4o-mini",
            "stop",
        )
        assert row["prompt_tokens"] == len(row["prompt"].split())
        assert row["completion_tokens"] == len(row["response"].split())
    summary = summary_of(tmp_path / "s.json")
    assert (summary["ok"], summary["skipped"], summary["provider"]) == (5, 1, "openai")
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in rows)
    assert summary["completion_tokens"] == sum(r["completion_tokens"] or 0 for r in rows)
    assert summary["truncated"] == 0
    assert "tokens: " in result.stderr


def test_the_system_message_and_a_conversation_keep_their_roles(tmp_path: Path):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
    ]
    source = write_csv(tmp_path / "in.csv", [{"messages": json.dumps(conversation)}])

    with openai_emulator() as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--messages-column",
            "messages",
            "--system",
            "Be brief.",
            "-q",
        )
        prompts = dict(emu.stats.prompts)

    assert result.exit_code == 0, result.stderr
    (row,) = rows_of(tmp_path / "in.responses.parquet")
    sent = [{"role": "system", "content": "Be brief."}, *conversation]
    assert json.loads(row["sent_prompt"]) == sent
    assert row["response"] == answer_for(format_prompt(sent))
    assert prompts == {format_prompt(sent): 1}


def test_no_stream_gets_the_same_answers_as_a_stream(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(4))
    with openai_emulator() as emu:
        results = [
            run_openai(
                source,
                emu.base_url,
                "-o",
                tmp_path / f"{name}.parquet",
                *extra,
            )
            for name, extra in (("streamed", []), ("plain", ["--no-stream"]))
        ]

    assert [r.exit_code for r in results] == [0, 0]
    streamed, plain = rows_of(tmp_path / "streamed.parquet"), rows_of(tmp_path / "plain.parquet")
    for name in ("response", "prompt_tokens", "completion_tokens", "finish_reason"):
        assert [r[name] for r in streamed] == [r[name] for r in plain]
    assert read_metadata(tmp_path / "plain.parquet")["options"]["stream"] is False


def test_dry_run_shows_the_messages_that_would_be_sent(tmp_path: Path):
    source = prompts_csv(tmp_path, ["Why?"])

    result = invoke(
        "run", source, "--provider", "openai", "--emulate", "--dry-run", "--system", "S"
    )

    assert result.exit_code == 0
    assert '[{"role": "system", "content": "S"}, {"role": "user", "content": "Why?"}]' in (
        result.stdout
    )
    assert not (tmp_path / "in.responses.parquet").exists()


# sampling options


SAMPLING = [
    ("--temperature", "0.5", "0.7"),
    ("--top-p", "0.5", "0.9"),
    ("--max-tokens", "50", "60"),
    ("--seed", "1", "2"),
    ("--stop", "END", "STOP"),
]


@pytest.mark.parametrize(("option", "first", "changed"), SAMPLING, ids=[s[0] for s in SAMPLING])
def test_a_changed_sampling_option_sends_the_rows_again_and_an_unchanged_one_does_not(
    tmp_path: Path, option: str, first: str, changed: str
):
    source = prompts_csv(tmp_path, questions(5))
    summary = tmp_path / "s.json"
    with openai_emulator() as emu:

        def run(value: str | None) -> dict[str, Any]:
            extra = [option, value] if value is not None else []
            result = run_openai(
                source,
                emu.base_url,
                "-q",
                "--summary-json",
                summary,
                *extra,
            )
            assert result.exit_code == 0, result.stderr
            return summary_of(summary) | {"chat_requests": emu.stats.chat_requests}

        plain = run(None)
        set_once = run(first)
        same = run(first)
        other = run(changed)

    assert (plain["sent"], plain["chat_requests"]) == (5, 5)
    assert (set_once["sent"], set_once["reused"], set_once["chat_requests"]) == (5, 0, 10)
    assert (same["sent"], same["reused"], same["chat_requests"]) == (0, 5, 10)
    assert (other["sent"], other["reused"], other["chat_requests"]) == (5, 0, 15)
    options = read_metadata(tmp_path / "in.responses.parquet")["options"]
    name = option.removeprefix("--").replace("-", "_")
    expected = [changed] if name == "stop" else type(options[name])(changed)
    assert options[name] == expected


@pytest.mark.parametrize(
    "extra",
    [
        ["--temperature", "0.5"],
        ["--top-p", "0.5"],
        ["--max-tokens", "10"],
        ["--seed", "3"],
        ["--stop", "x"],
        ["--no-stream"],
        ["--api-key-env", "SOME_KEY"],
    ],
    ids=lambda extra: extra[0],
)
def test_options_the_aichatonline_provider_does_not_take_exit_2_before_sending(
    tmp_path: Path, live_emulator: Emulator, extra: list[str]
):
    source = prompts_csv(tmp_path, questions(2))

    result = invoke("run", source, "--base-url", live_emulator.base_url, *extra)

    assert result.exit_code == 2
    assert result.stderr.startswith("aibatch: error: ")
    assert extra[0] in result.stderr or "always streams" in result.stderr
    assert live_emulator.stats.chat_requests == live_emulator.stats.token_requests == 0


def test_answers_cut_by_max_tokens_are_ok_and_counted_as_truncated(tmp_path: Path):
    source = prompts_csv(tmp_path, [*questions(3), "short"])

    with openai_emulator() as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--max-tokens",
            3,
            "--summary-json",
            tmp_path / "s.json",
        )

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["finish_reason"] for r in rows] == ["length", "length", "length", "length"]
    assert all(r["status"] == "ok" and len(r["response"].split()) == 3 for r in rows)
    assert summary_of(tmp_path / "s.json")["truncated"] == 4
    assert "4 answers cut at the length limit" in result.stderr


# faults, resume, dedupe


def test_injected_faults_still_end_every_row_ok(tmp_path: Path):
    prompts = questions(80)
    source = prompts_csv(tmp_path, prompts)
    faults = Faults(
        error_rate=0.1,
        rate_limit_rate=0.1,
        retry_after=0.05,
        cut_rate=0.1,
        garbage_rate=0.2,
        seed=11,
    )

    with openai_emulator(faults=faults) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--job",
            fast_retries(tmp_path),
            "--max-attempts",
            15,
            "-c",
            16,
            "-q",
            "--summary-json",
            tmp_path / "s.json",
        )
        outcomes = Counter(emu.stats.outcomes)
        chat_requests = emu.stats.chat_requests

    assert result.exit_code == 0, result.stderr
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["status"] for r in rows] == ["ok"] * 80
    assert [r["response"] for r in rows] == [answer_for(p) for p in prompts]
    assert all(r["finish_reason"] == "stop" and r["completion_tokens"] for r in rows)
    assert outcomes["server_error"] and outcomes["rate_limited"] and outcomes["cut"]
    assert outcomes["garbage"]
    summary = summary_of(tmp_path / "s.json")
    assert summary["requests"] == chat_requests == sum(r["attempts"] for r in rows)
    assert (
        summary["requests"]
        == 80 + outcomes["server_error"] + outcomes["rate_limited"] + (outcomes["cut"])
    )
    assert summary["garbage_lines"] > 0


def test_a_rerun_resumes_and_sends_only_new_rows(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(10))
    with openai_emulator() as emu:
        first = run_openai(source, emu.base_url)
        again = run_openai(source, emu.base_url)
        before = emu.stats.chat_requests
        with source.open("a", encoding="utf-8") as handle:
            handle.write("A brand new question\n")
        appended = run_openai(source, emu.base_url)
        after = emu.stats.chat_requests

    assert first.exit_code == again.exit_code == appended.exit_code == 0
    assert before == 10 and after == 11
    assert "reused 10" in again.stderr and "reused 10" in appended.stderr
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert len(rows) == 11 and rows[-1]["response"] == answer_for("A brand new question")


def test_answers_from_the_emulator_are_not_reused_for_a_real_server(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))
    emulated = invoke("run", source, "--provider", "openai", "--emulate", "-q")

    with openai_emulator() as emu:
        served = run_openai(source, emu.base_url)
        sent = emu.stats.chat_requests

    assert emulated.exit_code == served.exit_code == 0
    assert sent == 3
    assert "reused 0" in served.stderr


def test_identical_requests_are_sent_once_and_no_dedupe_sends_each(tmp_path: Path):
    source = prompts_csv(tmp_path, ["same", "other", "same", "same", "other", "third"])
    with openai_emulator() as emu:
        deduped = run_openai(
            source,
            emu.base_url,
            "-q",
            "--summary-json",
            tmp_path / "d.json",
        )
        with_dedupe = emu.stats.chat_requests
        each = run_openai(
            source,
            emu.base_url,
            "-q",
            "--no-dedupe",
            "--restart",
            "--summary-json",
            tmp_path / "n.json",
        )
        without = emu.stats.chat_requests - with_dedupe
        prompts = dict(emu.stats.prompts)

    assert deduped.exit_code == each.exit_code == 0
    assert with_dedupe == 3 and without == 6
    assert summary_of(tmp_path / "d.json")["deduped"] == 3
    assert summary_of(tmp_path / "n.json")["deduped"] == 0
    assert prompts == {"same": 4, "other": 3, "third": 2}
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["response"] for r in rows] == [answer_for(r["prompt"]) for r in rows]


# adaptive concurrency


def test_adaptive_concurrency_against_a_limited_server_ends_every_row_ok(tmp_path: Path):
    limit = 8
    source = prompts_csv(tmp_path, questions(160))

    with openai_emulator(latency=0.02, faults=Faults(max_inflight=limit, retry_after=0.01)) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "-c",
            "auto",
            "--max-attempts",
            50,
            "-q",
            "--summary-json",
            tmp_path / "s.json",
        )
        refused = emu.stats.outcomes["rate_limited"]
        most_served = emu.stats.max_inflight

    assert result.exit_code == 0, result.stderr
    assert {r["status"] for r in rows_of(tmp_path / "in.responses.parquet")} == {"ok"}
    summary = summary_of(tmp_path / "s.json")
    assert summary["ok"] == 160
    assert summary["requests"] == 160 + refused
    assert most_served <= limit
    # it adapted: far below the ceiling of auto (512), near the server's limit, and
    # few requests were refused (a fixed -c 160 has about one 429 per row here)
    assert 1 <= summary["concurrency"] <= 2 * limit
    assert refused < 160 // 2


def test_adaptive_with_a_ceiling_never_has_more_in_flight(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(60))

    with openai_emulator(latency=0.01) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--adaptive",
            "-c",
            6,
            "-q",
            "--summary-json",
            tmp_path / "s.json",
        )
        most = emu.stats.max_inflight

    assert result.exit_code == 0, result.stderr
    assert most <= 6
    assert summary_of(tmp_path / "s.json")["concurrency"] == 6
    assert read_metadata(tmp_path / "in.responses.parquet")["options"]["adaptive"] is True


# the API key


def test_the_key_is_read_from_openai_api_key(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with openai_emulator(api_key=KEY) as emu:
        result = run_openai(
            source,
            emu.base_url,
            env={"OPENAI_API_KEY": KEY},
        )

    assert result.exit_code == 0, result.stderr
    assert emu.stats.outcomes == {"ok": 3}


def test_api_key_env_names_the_variable_to_read(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with openai_emulator(api_key=KEY) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--api-key-env",
            "MY_LLM_KEY",
            env={"MY_LLM_KEY": KEY, "OPENAI_API_KEY": "sk-other"},
        )

    assert result.exit_code == 0, result.stderr
    assert emu.stats.outcomes == {"ok": 3}


def test_an_unset_api_key_env_variable_exits_2_naming_it(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    with openai_emulator(api_key=KEY) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "--api-key-env",
            "MY_LLM_KEY",
            env={"MY_LLM_KEY": None},
        )
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert "MY_LLM_KEY" in result.stderr and "not set" in result.stderr
    assert sent == 0


def test_openai_itself_without_a_key_exits_2_naming_the_variable(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(3))

    # the proxy is a closed loopback port: had anything been sent, it went nowhere
    result = invoke(
        "run",
        source,
        "--provider",
        "openai",
        "--proxy",
        "http://127.0.0.1:9",
        "--max-attempts",
        1,
        "--timeout",
        2,
        env={"OPENAI_API_KEY": None},
    )

    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert "api.openai.com" in result.stderr


def test_a_local_server_needs_no_key(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(2))

    with openai_emulator() as emu:
        result = run_openai(
            source,
            emu.base_url,
            env={"OPENAI_API_KEY": None},
        )

    assert result.exit_code == 0, result.stderr


def test_a_refused_key_stops_the_run_at_once_with_exit_2(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(50))

    with openai_emulator(api_key=KEY) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "-c",
            4,
            "-q",
            env={"OPENAI_API_KEY": "sk-wrong"},
        )
        sent = emu.stats.chat_requests

    assert result.exit_code == 2
    assert result.stderr.startswith("aibatch: error: ")
    assert "HTTP 401" in result.stderr
    assert "Traceback" not in result.stderr
    assert sent <= 4  # one per request slot at most: nothing is retried
    assert not (tmp_path / "in.responses.parquet").exists()


@pytest.mark.parametrize(
    ("variable", "extra"),
    [("OPENAI_API_KEY", []), ("MY_LLM_KEY", ["--api-key-env", "MY_LLM_KEY"])],
    ids=["default", "api-key-env"],
)
def test_a_refused_key_message_names_the_variable(tmp_path: Path, variable: str, extra: list[str]):
    source = prompts_csv(tmp_path, questions(5))

    with openai_emulator(api_key=KEY) as emu:
        result = run_openai(
            source,
            emu.base_url,
            "-q",
            *extra,
            env={variable: "sk-wrong"},
        )

    assert result.exit_code == 2
    assert variable in result.stderr


class EchoingServer:
    """A chat-completions server on loopback that quotes the key in every error body.

    A prompt containing ``bad`` gets a 400; ``flaky`` a 500 and ``busy`` a 429 on their
    first try; ``midstream`` a 200 stream whose second event is an ``error`` object;
    once ``accept`` requests were answered, every request gets a 401.
    """

    def __init__(self, *, accept: int | None = None) -> None:
        self.accept = accept
        self.answered = 0
        self.tries: Counter[str] = Counter()
        self.keys: set[str] = set()
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> EchoingServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @staticmethod
    def _error(status: int, key: str, kind: str, **headers: str) -> web.Response:
        message = f"Incorrect API key provided: {key}. Key {key} is {kind}."
        body = {"error": {"message": message, "type": kind, "code": kind, "key": key}}
        return web.json_response(body, status=status, headers={"X-Echo": key, **headers})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.keys.add(key)
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.tries[prompt] += 1
        if self.accept is not None and self.answered >= self.accept:
            return self._error(401, key, "invalid_api_key")
        if "bad" in prompt:
            return self._error(400, key, "invalid_request_error")
        if "flaky" in prompt and self.tries[prompt] == 1:
            return self._error(500, key, "server_error")
        if "busy" in prompt and self.tries[prompt] == 1:
            return self._error(429, key, "rate_limit_error", **{"Retry-After": "0.01"})
        self.answered += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"content": answer_for(prompt)}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
        ]
        if "midstream" in prompt:
            message = f"upstream failed for key {key}"
            events[1] = {"error": {"message": message, "type": "server_error", "code": None}}
        for event in events:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.contextmanager
def echoing_server(**options: Any) -> Iterator[EchoingServer]:
    server = EchoingServer(**options)
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(server),
    ):
        yield server


def test_rows_finished_before_a_refused_key_are_kept(tmp_path: Path):
    source = prompts_csv(tmp_path, questions(8))
    command = ["run", source, "--provider", "openai", "-c", 1, "-q"]

    with echoing_server(accept=3) as server:
        refused = invoke(*command, "--base-url", server.base_url, env={"OPENAI_API_KEY": KEY})
        server.accept = None  # the key works again
        resumed = invoke(
            *command,
            "--base-url",
            server.base_url,
            "--summary-json",
            tmp_path / "s.json",
            env={"OPENAI_API_KEY": KEY},
        )

    assert refused.exit_code == 2
    assert resumed.exit_code == 0, resumed.stderr
    summary = summary_of(tmp_path / "s.json")
    assert (summary["reused"], summary["sent"]) == (3, 5)
    assert server.answered == 8


def everything_written(root: Path) -> dict[Path, bytes]:
    """Every file under ``root``; Parquet and Arrow files also decoded (they may compress)."""
    files = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if data.startswith(b"PAR1"):
                data += decoded(pq.read_table(pa.BufferReader(data)))
            elif data.startswith(b"ARROW1"):
                data += decoded(pa.ipc.open_file(pa.BufferReader(data)).read_all())
            files[path] = data
    return files


def decoded(table: pa.Table) -> bytes:
    rows = json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
    return (rows + repr(table.schema.metadata)).encode()


def assert_key_in_none_of(files: dict[Path, bytes], *texts: str) -> None:
    for path, data in files.items():
        assert KEY.encode() not in data, path
    for text in texts:
        assert KEY not in text


def test_the_key_appears_in_nothing_written_even_when_the_server_echoes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    source = prompts_csv(tmp_path, ["fine", "a bad one", "flaky", "busy", "fine too"])
    env = {"OPENAI_API_KEY": KEY}
    args = ["--provider", "openai", "--job", fast_retries(tmp_path), "--progress"]

    with echoing_server() as server:
        finished = invoke(
            "-vv",
            "run",
            source,
            *args,
            "--base-url",
            server.base_url,
            "--summary-json",
            tmp_path / "s.json",
            env=env,
        )
        echoed = server.keys
    with echoing_server(accept=0) as server:
        refused = invoke(
            "-vv",
            "run",
            source,
            *args,
            "--base-url",
            server.base_url,
            "-o",
            tmp_path / "refused.parquet",
            env=env,
        )

    assert echoed == {KEY}  # the server did get the key, and quoted it back
    assert finished.exit_code == 1  # the bad row failed: it is in the output with its error
    assert refused.exit_code == 2
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok", "ok"]
    assert "Incorrect API key provided: ***" in rows[1]["error"]
    assert "Incorrect API key provided: ***" in refused.stderr
    files = everything_written(tmp_path)
    assert tmp_path / "s.json" in files
    assert any(".in.responses.parquet.aibatch" in str(path) for path in files)
    assert_key_in_none_of(
        files,
        finished.stdout,
        finished.stderr,
        refused.stdout,
        refused.stderr,
        caplog.text,
        json.dumps(read_metadata(tmp_path / "in.responses.parquet")),
    )


def test_the_key_appears_in_nothing_written_when_echoed_inside_a_stream(tmp_path: Path):
    source = prompts_csv(tmp_path, ["fine", "midstream"])

    with echoing_server() as server:
        result = run_openai(
            source,
            server.base_url,
            "--job",
            fast_retries(tmp_path),
            "--max-attempts",
            2,
            env={"OPENAI_API_KEY": KEY},
        )

    assert result.exit_code == 1
    rows = rows_of(tmp_path / "in.responses.parquet")
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "upstream failed for key" in rows[1]["error"]
    assert_key_in_none_of(everything_written(tmp_path), result.stdout, result.stderr)


@pytest.mark.slow
def test_the_key_appears_in_no_output_of_a_verbose_subprocess(tmp_path: Path):
    source = prompts_csv(tmp_path, ["fine", "a bad one", "flaky", "busy"])
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}

    def run(base_url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
        command = [
            sys.executable,
            "-m",
            "aibatch",
            "-vv",
            "run",
            str(source),
            "--provider",
            "openai",
            "--base-url",
            base_url,
            "--job",
            str(fast_retries(tmp_path)),
            "--no-progress",
            "--summary-json",
            str(tmp_path / "s.json"),
            *extra,
        ]
        return subprocess.run(command, capture_output=True, env=env, timeout=60, check=False)

    with echoing_server() as server:
        finished = run(server.base_url)
    with echoing_server(accept=1) as server:
        refused = run(server.base_url, "-o", str(tmp_path / "refused.parquet"), "-c", "1")

    assert finished.returncode == 1, finished.stderr.decode()
    assert refused.returncode == 2, refused.stderr.decode()
    assert b"DEBUG" in finished.stderr  # -vv did turn on debug logging
    assert b"Incorrect API key provided: ***" in refused.stderr
    files = everything_written(tmp_path)
    for output in (finished.stdout, finished.stderr, refused.stdout, refused.stderr):
        assert KEY.encode() not in output
    assert_key_in_none_of(files)
