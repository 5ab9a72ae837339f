"""``--batch-api`` under attack: rewritten inputs, kills, Ctrl-C, damaged ledgers, a hostile wire.

Every test drives the real CLI (or the public API) against the emulator's Batch APIs on
a loopback port; where the wire must misbehave in ways the emulator has no knob for (a
create call answered with a 500 after the batch was made, a results download cut
mid-way, results for strangers' custom ids, answers without usage), a small proxy
(:class:`FaultProxy`) stands between the run and the emulator and breaks one exchange.

Each asserts what the feature promises where an adversarial review found it broken
(fixed since), or covers what ``tests/test_batch_api.py`` does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from yarl import URL

from aibatch.errors import AibatchError, CheckpointError
from aibatch.jobs.batches import Ledger
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Faults, answer_for
from tests.chaos.crashpoints import CrashPoint, child, child_command, child_env, wait_until
from tests.conftest import emulator_in_thread
from tests.test_batch_api import output_of, rows_of
from tests.test_openai_cli import fast_retries, invoke, prompts_csv, questions, write_csv

PROVIDERS = ("openai", "anthropic")
STUCK = 3600.0  # a batch_delay no test waits for: batches end when emu.end_batches() says
CREATE = {"openai": r"/v1/batches", "anthropic": r"/v1/messages/batches"}
UPLOAD = {"openai": r"/v1/files", "anthropic": r"/v1/messages/batches"}
RESULTS = {"openai": r"/v1/files/[^/]+/content", "anthropic": r"/v1/messages/batches/[^/]+/results"}
LIVE = {"openai": r"/v1/chat/completions", "anthropic": r"/v1/messages"}
_HOP_BY_HOP = {"connection", "content-length", "host", "keep-alive", "transfer-encoding"}


# A proxy that breaks one exchange


@dataclass
class Rule:
    """What the proxy does to the next ``times`` requests of ``method`` to ``path`` (a regex).

    Actions: ``fail-after`` (forward, then answer 500), ``reset-after`` (forward, then
    close the connection), ``cut`` (forward, then send half the answer and close),
    ``stall`` (read the first piece of the body, set :attr:`seen`, never answer),
    ``rewrite`` (forward, answer ``rewrite(body)``).
    """

    method: str
    path: str
    action: str
    times: int = 1
    rewrite: Callable[[bytes], bytes] | None = None
    hits: int = 0
    seen: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (a base URL), with :class:`Rule`s."""

    def __init__(self, upstream: str) -> None:
        self.upstream = URL(upstream)
        self.upstream_origin = str(self.upstream.origin())
        self.rules: list[Rule] = []
        self.origin = ""
        self.base_url = ""
        self.session: aiohttp.ClientSession | None = None
        self._stopping: anyio.Event | None = None

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def _rule(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if (
                rule.hits < rule.times
                and request.method == rule.method
                and re.fullmatch(rule.path, request.path)
            ):
                rule.hits += 1
                return rule
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._rule(request)
        action = rule.action if rule is not None else None
        if rule is not None and action == "stall":
            await request.content.readany()
            rule.seen.set()
            # Held until the proxy stops: a client killed mid-upload may never be seen
            # to go (reading is paused while the body waits), so nothing else ends this.
            assert self._stopping is not None
            await self._stopping.wait()
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self.session.request(
            request.method,
            self.upstream_origin + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
            kind = upstream.headers.get("Content-Type", "application/json")
        # Anthropic's results_url names the emulator: keep the run talking to the proxy.
        body = body.replace(self.upstream_origin.encode(), self.origin.encode())
        if action == "fail-after":
            error = {"error": {"message": "injected after forwarding", "type": "server_error"}}
            return web.json_response(error, status=500)
        if action in ("reset-after", "cut"):
            response = web.StreamResponse(
                status=status, headers={"Content-Type": kind, "Content-Length": str(len(body))}
            )
            await response.prepare(request)
            if action == "cut":
                await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        if rule is not None and action == "rewrite" and rule.rewrite is not None:
            body = rule.rewrite(body)
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FaultProxy]:
        self._stopping = anyio.Event()
        app = web.Application(client_max_size=2**30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.base_url = self.origin + self.upstream.path
        async with aiohttp.ClientSession(auto_decompress=False) as self.session:
            try:
                yield self
            finally:
                self._stopping.set()
                await runner.cleanup()


@contextlib.contextmanager
def proxy_in_thread(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(proxy.serving()),
    ):
        yield proxy


def each_line(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """A rewrite of a JSON-lines body that applies ``change`` to every object."""

    def rewrite(body: bytes) -> bytes:
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        for item in items:
            change(item)
        return b"".join(json.dumps(item).encode() + b"\n" for item in items)

    return rewrite


def lines(change: Callable[[list[bytes]], list[bytes]]) -> Callable[[bytes], bytes]:
    """A rewrite of a JSON-lines body's list of lines."""

    def rewrite(body: bytes) -> bytes:
        return b"".join(line + b"\n" for line in change(body.splitlines()) if line.strip())

    return rewrite


# Helpers


def batch_run(source: Path, provider: str, base_url: str, *args: object) -> Any:
    return invoke(
        "run", source, "--provider", provider, "--base-url", base_url, "--batch-api",
        "--poll-interval", "0.2", *args,
    )  # fmt: skip


def answers_of(source: Path) -> list[str | None]:
    return [r["response"] for r in rows_of(output_of(source))]


def rerun(args: tuple[object, ...], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The same ``aibatch`` command as a plain child process, to its end."""
    return subprocess.run(
        child_command(*args, bootstrap=False), cwd=cwd, env=child_env(), capture_output=True,
        timeout=120,
    )  # fmt: skip


def ledger_chunks(source: Path) -> list[Any]:
    try:
        return Ledger(checkpoint_dir(output_of(source)), read_only=True).chunks()
    except CheckpointError:  # a record being replaced as we look
        return []


def read_stderr_until(process: subprocess.Popen[bytes], text: bytes, seconds: float = 30) -> bool:
    """Read the child's stderr (bounded in time) until ``text`` shows up in it."""
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + seconds
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.5)
        if ready:
            piece = os.read(process.stderr.fileno(), 65536)
            if not piece:
                break
            seen += piece
    return text in seen


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Bugs: each test asserts the promise, and fails on the code as it is


def test_a_row_added_on_top_while_batches_run_does_not_resubmit_the_rows_in_flight(
    tmp_path: Path, provider: str
) -> None:
    prompts = questions(4)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=STUCK) as emu:
        batch_run(source, provider, emu.base_url, "--no-wait")
        prompts_csv(tmp_path, ["A new first question?", *prompts])
        emu.end_batches()
        batch_run(source, provider, emu.base_url, "--no-wait")
        assert emu.stats.batch_requests == 5  # the 4 in flight, and the new row once


def test_rows_reordered_by_id_while_batches_run_are_collected_into_the_output(
    tmp_path: Path, provider: str
) -> None:
    rows = [{"id": f"id{i}", "prompt": p} for i, p in enumerate(questions(4))]
    source = write_csv(tmp_path / "in.csv", rows)
    with emulator_in_thread(protocol=provider, batch_delay=STUCK) as emu:
        batch_run(source, provider, emu.base_url, "--id-column", "id", "--no-wait")
        write_csv(source, rows[::-1])
        emu.end_batches()
        result = batch_run(source, provider, emu.base_url, "--id-column", "id", "--no-wait")
    answers = answers_of(source) if output_of(source).exists() else []
    assert (result.exit_code, answers) == (0, [answer_for(r["prompt"]) for r in rows[::-1]])


def test_ctrl_c_while_building_submits_no_further_chunk(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(8))
    marker, resume = tmp_path / "paused", tmp_path / "resume"
    # OpenAI records prepared (1), uploaded (2), submitted (3): pause once chunk 1 is out.
    paused = CrashPoint("record-replace", 3, "after", action="pause")
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        args = ("run", source, "--provider", "openai", "--base-url", emu.base_url,
                "--batch-api", "--batch-size", "1", "--poll-interval", "0.2")  # fmt: skip
        with child(args, tmp_path, paused, marker, resume) as process:
            wait_until(marker.exists, process)
            process.send_signal(signal.SIGINT)
            assert read_stderr_until(process, b"SIGINT"), "the run never saw the signal"
            resume.touch()
            process.wait(timeout=60)
        assert (process.returncode, emu.stats.batches_created) == (130, 1)


def test_a_live_run_does_not_send_rows_that_are_in_flight_in_batches(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(4))
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
        invoke("run", source, "--provider", "openai", "--base-url", emu.base_url)
        assert emu.stats.chat_requests == 0


def test_max_cost_counts_answers_without_usage_at_their_worst_case(
    tmp_path: Path, provider: str
) -> None:
    def no_usage(item: dict[str, Any]) -> None:
        if provider == "openai":
            item["response"]["body"].pop("usage", None)
        else:
            item["result"]["message"].pop("usage", None)

    source = prompts_csv(tmp_path, questions(10))
    prices = ("--input-price", "1000", "--output-price", "1000", "--max-tokens", "10")
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        proxy.add(Rule("GET", RESULTS[provider], "rewrite", times=100, rewrite=each_line(no_usage)))
        result = batch_run(source, provider, proxy.base_url, *prices, "--max-cost", "0.2")
    statuses = {r["status"] for r in rows_of(output_of(source))}
    assert (result.exit_code, "unsent" in statuses) == (3, True)


def test_run_frame_refuses_no_wait_without_an_output_before_submitting(tmp_path: Path) -> None:
    import pandas as pd

    from aibatch import run_frame

    frame = pd.DataFrame({"prompt": questions(3)})
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        raised: BaseException | None = None
        try:
            run_frame(frame, provider="openai", base_url=emu.base_url, batch_api=True, no_wait=True)
        except Exception as exc:  # what is raised is what this test is about
            raised = exc
        submitted = emu.stats.batch_requests
    assert (isinstance(raised, AibatchError), submitted) == (True, 0)


@pytest.mark.slow
def test_an_emulated_batch_run_resumes_after_ctrl_c(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(3))
    args = ("run", source, "--provider", "openai", "--emulate", "--batch-api",
            "--poll-interval", "0.2")  # fmt: skip
    with child(args, tmp_path, None) as process:
        wait_until(lambda: any(c.state == "submitted" for c in ledger_chunks(source)), process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 130
    assert rerun(args, tmp_path).returncode == 0


@pytest.mark.slow
def test_a_kill_after_a_failed_chunk_is_collected_keeps_max_attempts(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(3))
    faults = Faults(batch_error_rate=1.0)
    # OpenAI records prepared, uploaded, submitted, status seen, collected (5th).
    killed_at = CrashPoint("record-replace", 5, "after")
    with emulator_in_thread(protocol="openai", batch_delay=0, faults=faults) as emu:
        args = ("run", source, "--provider", "openai", "--base-url", emu.base_url,
                "--batch-api", "--poll-interval", "0.2", "--max-attempts", "2",
                "--job", fast_retries(tmp_path))  # fmt: skip
        with child(args, tmp_path, killed_at) as process:
            process.wait(timeout=60)
        assert process.returncode == -9
        rerun(args, tmp_path)
        assert emu.stats.batch_requests == 6  # 3 rows, 2 attempts each


@pytest.mark.slow
def test_rows_of_a_chunk_that_adopted_a_strangers_batch_are_still_sent(tmp_path: Path) -> None:
    mine = prompts_csv(tmp_path, questions(3), "mine.csv")
    theirs = prompts_csv(tmp_path, [f"Another job's question {i}?" for i in range(3)], "b.csv")
    with emulator_in_thread(protocol="anthropic", batch_delay=0) as emu:
        args = ("run", mine, "--provider", "anthropic", "--base-url", emu.base_url,
                "--batch-api", "--poll-interval", "0.2", "--max-attempts", "1")  # fmt: skip
        # killed once its chunk is recorded (prepared), before the create call
        with child(args, tmp_path, CrashPoint("record-replace", 1, "after")) as process:
            process.wait(timeout=60)
        batch_run(theirs, "anthropic", emu.base_url)  # another job, as many requests
        rerun(args, tmp_path)
    assert {r["status"] for r in rows_of(output_of(mine))} == {"ok"}


def test_a_results_download_cut_once_is_retried(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(20))
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        proxy.add(Rule("GET", RESULTS[provider], "cut"))
        result = batch_run(source, provider, proxy.base_url, "--job", fast_retries(tmp_path))
    assert result.exit_code == 0, result.output


def test_a_deleted_chunk_record_does_not_resubmit_its_rows(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(4))
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
        (checkpoint_dir(output_of(source)) / "batches" / "00000001.json").unlink()
        emu.end_batches()
        batch_run(source, "openai", emu.base_url, "--no-wait")
        assert emu.stats.batch_requests == 4


def test_a_dry_run_does_not_count_rows_in_flight_as_to_send(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(4))
    summary = tmp_path / "dry.json"
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
        batch_run(source, "openai", emu.base_url, "--dry-run", "--summary-json", summary)
    assert json.loads(summary.read_text())["to_send"] == 0


def test_batches_cancel_exits_non_zero_when_it_cannot_cancel(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(2))
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
    result = invoke("batches", output_of(source), "--cancel")  # the service is gone
    assert result.exit_code != 0


def test_a_collecting_run_prints_what_its_answers_cost(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
        emu.end_batches()
        result = batch_run(source, "openai", emu.base_url, "--input-price", "1")
    assert "cost: $" in result.output


# What holds (coverage tests/test_batch_api.py lacks)


@pytest.mark.parametrize("action", ["fail-after", "reset-after"])
def test_a_create_call_that_fails_after_the_batch_was_made_submits_it_once(
    tmp_path: Path, provider: str, action: str
) -> None:
    prompts = questions(4)
    source = prompts_csv(tmp_path, prompts)
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        proxy.add(Rule("POST", CREATE[provider], action))
        result = batch_run(source, provider, proxy.base_url, "--job", fast_retries(tmp_path))
        requests = emu.stats.batch_requests
    assert (result.exit_code, requests, answers_of(source)) == (
        0, 4, [answer_for(p) for p in prompts]
    )  # fmt: skip


def test_results_for_strangers_and_repeated_results_are_ignored(
    tmp_path: Path, provider: str
) -> None:
    def extra(found: list[bytes]) -> list[bytes]:
        stranger = json.loads(found[0])
        stranger["custom_id"] = "r" + "ab" * 16  # ours in shape, of no row of the job
        other = dict(stranger, custom_id="someone-else")
        return [*found, *found, json.dumps(stranger).encode(), json.dumps(other).encode()]

    prompts = questions(4)
    source = prompts_csv(tmp_path, prompts)
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        proxy.add(Rule("GET", RESULTS[provider], "rewrite", rewrite=lines(extra)))
        batch_run(source, provider, proxy.base_url)
    assert answers_of(source) == [answer_for(p) for p in prompts]


@pytest.mark.parametrize(("attempts", "expected"), [("1", "error"), ("3", "ok")])
def test_a_missing_result_fails_its_row_or_is_sent_again(
    tmp_path: Path, provider: str, attempts: str, expected: str
) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        proxy.add(Rule("GET", RESULTS[provider], "rewrite", rewrite=lines(lambda f: f[1:])))
        batch_run(source, provider, proxy.base_url, "--max-attempts", attempts,
                  "--job", fast_retries(tmp_path))  # fmt: skip
    statuses = sorted(r["status"] for r in rows_of(output_of(source)))
    assert statuses == sorted(["ok", "ok", expected])


@pytest.mark.slow
def test_a_kill_during_the_upload_of_a_big_chunk_submits_each_row_once(
    tmp_path: Path, provider: str
) -> None:
    prompts = [f"Question {i}: {'x' * 300}?" for i in range(1500)]
    source = prompts_csv(tmp_path, prompts)
    with (
        emulator_in_thread(protocol=provider, batch_delay=0) as emu,
        proxy_in_thread(emu.base_url) as proxy,
    ):
        upload = proxy.add(Rule("POST", UPLOAD[provider], "stall"))
        args = ("run", source, "--provider", provider, "--base-url", proxy.base_url,
                "--batch-api", "--poll-interval", "0.2")  # fmt: skip
        with child(args, tmp_path, None) as process:
            assert upload.seen.wait(60), "the upload never began"
            process.kill()
            process.wait(timeout=60)
        again = rerun(args, tmp_path)
        requests = emu.stats.batch_requests
    answers = answers_of(source)
    assert (again.returncode, requests, answers == [answer_for(p) for p in prompts]) == (
        0, 1500, True
    )  # fmt: skip


def test_another_base_url_while_batches_run_stops_and_submits_nothing(
    tmp_path: Path, provider: str
) -> None:
    source = prompts_csv(tmp_path, questions(2))
    with (
        emulator_in_thread(protocol=provider, batch_delay=STUCK) as first,
        emulator_in_thread(protocol=provider, batch_delay=0) as second,
    ):
        batch_run(source, provider, first.base_url, "--no-wait")
        result = batch_run(source, provider, second.base_url)
        created = second.stats.batches_created
    assert (result.exit_code, created, first.base_url in result.output) == (2, 0, True)


def test_cancel_on_a_finished_job_cancels_nothing(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(2))
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        batch_run(source, provider, emu.base_url)
        result = invoke("batches", output_of(source), "--cancel", "--json")
        cancelled = emu.stats.batches_cancelled
    states = [b["state"] for b in json.loads(result.output)]
    assert (result.exit_code, cancelled, states) == (0, 0, ["collected"])


def test_duplicates_are_submitted_once_and_empty_prompts_skipped(
    tmp_path: Path, provider: str
) -> None:
    prompts = ["a?", "b?", "a?", "", "b?", "c?", "  "]
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        batch_run(source, provider, emu.base_url, "--batch-size", "1")
        requests = emu.stats.batch_requests
    expected = [answer_for(p) if p.strip() else None for p in prompts]
    assert (requests, answers_of(source)) == (3, expected)


@pytest.mark.parametrize(
    ("content", "args"),
    [
        ('prompt\nq0\nq1\n"unterminated\n', ()),
        ("id,prompt\nx,q0\ny,q1\nx,q2\n", ("--id-column", "id")),
    ],
    ids=["malformed-last-line", "repeated-id"],
)
def test_bad_input_exits_2_before_anything_is_submitted(
    tmp_path: Path, content: str, args: tuple[str, ...]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(content)
    with emulator_in_thread(protocol="openai", batch_delay=0) as emu:
        result = batch_run(source, "openai", emu.base_url, *args)
        touched = (emu.stats.files_uploaded, emu.stats.batches_created)
    assert (result.exit_code, touched) == (2, (0, 0))


def test_a_collecting_run_with_a_smaller_limit_writes_only_its_rows(tmp_path: Path) -> None:
    prompts = questions(6)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol="openai", batch_delay=STUCK) as emu:
        batch_run(source, "openai", emu.base_url, "--no-wait")
        emu.end_batches()
        result = batch_run(source, "openai", emu.base_url, "--limit", "2")
        requests = emu.stats.batch_requests
    assert (result.exit_code, requests, answers_of(source)) == (
        0, 6, [answer_for(p) for p in prompts[:2]]
    )  # fmt: skip
