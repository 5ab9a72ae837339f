"""The emulator's Batch APIs over loopback, driven by the official openai and anthropic SDKs.

Time is never waited for: ``batch_delay=0`` ends a batch at once, a delay of an hour keeps
it in progress for the whole test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from click.testing import CliRunner

from aibatch.cli import main
from aibatch.errors import UsageError
from aibatch.providers.emulator import Emulator, Faults
from aibatch.providers.emulator_batch_anthropic import requests_problem
from aibatch.providers.emulator_batch_openai import read_batch_file, upload_problem

KEY = "sk-emulated-batch-5c1e0a9d7f"
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
HOUR = 3600.0
ENDED = ("completed", "failed", "expired", "cancelled")
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "stars": {"type": "integer"}},
    "required": ["city", "stars"],
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a picture").decode()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


async def serve(stack: AsyncExitStack, protocol: str, **options: Any) -> Emulator:
    options.setdefault("batch_delay", 0.0)
    emu = Emulator(protocol=protocol, api_key=KEY, **options)
    await stack.enter_async_context(emu)
    return emu


async def gpt(stack: AsyncExitStack, key: str = KEY, **options: Any) -> openai.AsyncOpenAI:
    emu = await serve(stack, "openai", **options)
    client = openai.AsyncOpenAI(base_url=emu.base_url, api_key=key, max_retries=0)
    await stack.enter_async_context(client)
    return client


async def claude(stack: AsyncExitStack, key: str = KEY, **options: Any) -> anthropic.AsyncAnthropic:
    emu = await serve(stack, "anthropic", **options)
    client = anthropic.AsyncAnthropic(base_url=emu.base_url, api_key=key, max_retries=0)
    await stack.enter_async_context(client)
    return client


def chat(content: Any, **options: Any) -> dict[str, Any]:
    return {"model": GPT, "messages": [{"role": "user", "content": content}], **options}


def lines_of(bodies: dict[str, dict[str, Any]]) -> bytes:
    """A batch file: one line a request."""
    return "".join(
        json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b})
        + "\n"
        for c, b in bodies.items()
    ).encode()


BODIES = {
    "plain": chat("What is 2 + 2?"),
    "system": {
        "model": GPT,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    },
    "schema": chat(
        "Review: lovely stay in Oslo",
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
    ),
    "image": chat(
        [
            {"type": "text", "text": "What is in it?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]
    ),
    "short": chat("one two three four five six seven eight nine", max_tokens=3),
}


async def submit(client: openai.AsyncOpenAI, data: bytes, **options: Any) -> openai.types.Batch:
    uploaded = await client.files.create(file=("requests.jsonl", data), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **options,
    )


async def ended(client: openai.AsyncOpenAI, batch_id: str) -> openai.types.Batch:
    """The batch once ended (``batch_delay=0``: at the first read; a few reads at most)."""
    for _ in range(5):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
    raise AssertionError(f"batch {batch_id} has not ended: {batch.status}")


async def lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def run_batch(
    client: openai.AsyncOpenAI, bodies: dict[str, dict[str, Any]] = BODIES
) -> openai.types.Batch:
    return await ended(client, (await submit(client, lines_of(bodies))).id)


# OpenAI: files and batches


async def test_openai_batch_answers_each_line_as_the_live_endpoint_does(stack):
    client = await gpt(stack)
    batch = await run_batch(client)
    output = await lines(client, batch.output_file_id)

    live = client.chat.completions.with_raw_response
    answers = {c: json.loads((await live.create(**b)).text) for c, b in BODIES.items()}
    unique = {"id", "created"}
    assert {o["custom_id"]: _without(o["response"]["body"], unique) for o in output} == {
        c: _without(a, unique) for c, a in answers.items()
    }


def _without(answer: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in keys}


async def test_openai_output_lines_are_shaped_as_the_batch_api_shapes_them(stack):
    client = await gpt(stack)
    batch = await run_batch(client, {"one": chat("hi")})
    (line,) = await lines(client, batch.output_file_id)

    assert (line["id"][:10], line["response"]["status_code"], line["error"]) == (
        "batch_req_",
        200,
        None,
    )


async def test_openai_output_is_not_in_input_order(stack):
    client = await gpt(stack)
    bodies = {f"row-{i}": chat(f"question {i}") for i in range(12)}
    batch = await run_batch(client, bodies)

    order = [line["custom_id"] for line in await lines(client, batch.output_file_id)]
    assert sorted(order) == sorted(bodies) and order != list(bodies)


async def test_openai_completed_batch_counts_its_requests_and_has_no_error_file(stack):
    client = await gpt(stack)
    batch = await run_batch(client)

    assert (batch.status, batch.request_counts.model_dump(), batch.error_file_id) == (
        "completed",
        {"total": len(BODIES), "completed": len(BODIES), "failed": 0},
        None,
    )


async def test_openai_batch_is_validating_then_in_progress_until_its_delay(stack):
    client = await gpt(stack, batch_delay=HOUR)
    created = await submit(client, lines_of(BODIES))

    read = await client.batches.retrieve(created.id)
    assert (created.status, read.status, read.output_file_id) == (
        "validating",
        "in_progress",
        None,
    )


async def test_openai_batch_keeps_its_metadata(stack):
    client = await gpt(stack)
    created = await submit(client, lines_of(BODIES), metadata={"job": "reviews", "chunk": "3"})

    assert (await client.batches.retrieve(created.id)).metadata == {"job": "reviews", "chunk": "3"}


async def test_openai_batches_list_newest_first_a_page_at_a_time(stack):
    client = await gpt(stack, batch_delay=HOUR)
    made = [(await submit(client, lines_of({f"r{i}": chat(str(i))}))).id for i in range(3)]

    listed = [batch.id async for batch in client.batches.list(limit=1)]
    assert listed == made[::-1]


async def test_openai_batches_list_after_an_id_starts_past_it(stack):
    client = await gpt(stack, batch_delay=HOUR)
    made = [(await submit(client, lines_of({f"r{i}": chat(str(i))}))).id for i in range(3)]

    page = await client.batches.list(limit=1, after=made[2])
    assert ([b.id for b in page.data], page.has_more) == ([made[1]], True)


async def test_openai_cancel_is_cancelling_then_cancelled(stack):
    client = await gpt(stack, batch_delay=HOUR)
    created = await submit(client, lines_of(BODIES))

    cancelling = await client.batches.cancel(created.id)
    after = await client.batches.retrieve(created.id)
    assert (cancelling.status, after.status) == ("cancelling", "cancelled")


async def test_openai_cancelled_requests_are_in_the_error_file_as_batch_cancelled(stack):
    client = await gpt(stack, batch_delay=HOUR)
    created = await submit(client, lines_of(BODIES))
    await client.batches.cancel(created.id)
    batch = await ended(client, created.id)

    errors = await lines(client, batch.error_file_id)
    assert sorted((e["custom_id"], e["error"]["code"]) for e in errors) == sorted(
        (c, "batch_cancelled") for c in BODIES
    )


async def test_openai_cancel_of_an_ended_batch_is_a_conflict(stack):
    client = await gpt(stack)
    batch = await run_batch(client)

    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(batch.id)


async def test_openai_a_line_the_live_endpoint_refuses_is_in_the_error_file_with_its_status(
    stack,
):
    client = await gpt(stack)
    batch = await run_batch(client, {"good": chat("hi"), "bad": {"model": GPT, "messages": []}})

    (line,) = await lines(client, batch.error_file_id)
    assert (line["custom_id"], line["response"]["status_code"]) == ("bad", 400)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", "invalid_json_line"),
        (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
         "invalid_method"),
        (b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}',
         "invalid_url"),
        (b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}',
         "missing_required_parameter"),
    ],
    ids=["json", "method", "url", "custom_id"],
)  # fmt: skip
async def test_openai_a_malformed_line_fails_the_batch_naming_its_line(stack, line, code):
    client = await gpt(stack)
    created = await submit(client, lines_of({"first": chat("hi")}) + line + b"\n")
    batch = await ended(client, created.id)

    assert batch.errors is not None and batch.errors.data is not None
    assert (batch.status, [(e.code, e.line) for e in batch.errors.data]) == (
        "failed",
        [(code, 2)],
    )


async def test_openai_a_duplicate_custom_id_fails_the_batch(stack):
    client = await gpt(stack)
    data = lines_of({"same": chat("one")}) + lines_of({"same": chat("two")})
    batch = await ended(client, (await submit(client, data)).id)

    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("duplicate_custom_id", 2)]


async def test_openai_upload_refuses_a_purpose_other_than_batch(stack):
    client = await gpt(stack)

    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("x.jsonl", lines_of(BODIES)), purpose="fine-tune")


def test_openai_upload_refuses_more_lines_than_the_limit():
    assert upload_problem("batch", lines_of(BODIES), max_lines=2) == (
        f"a batch file holds at most 2 requests, not {len(BODIES)}"
    )


def test_openai_upload_refuses_more_bytes_than_the_limit():
    assert "at most 10 bytes" in (upload_problem("batch", lines_of(BODIES), max_bytes=10) or "")


def test_a_batch_file_with_no_requests_is_an_error():
    assert read_batch_file(b"\n\n")[1][0]["code"] == "empty_file"


async def test_openai_batch_of_a_missing_file_is_not_found(stack):
    client = await gpt(stack)

    with pytest.raises(openai.NotFoundError):
        await client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )


async def test_openai_batch_refuses_another_endpoint(stack):
    client = await gpt(stack)
    uploaded = await client.files.create(file=("x.jsonl", lines_of(BODIES)), purpose="batch")

    with pytest.raises(openai.BadRequestError):
        await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )


async def test_openai_batch_refuses_more_than_16_metadata_pairs(stack):
    client = await gpt(stack)

    with pytest.raises(openai.BadRequestError):
        await submit(client, lines_of(BODIES), metadata={f"k{i}": "v" for i in range(17)})


async def test_openai_uploaded_file_reads_back_and_deletes(stack):
    client = await gpt(stack)
    uploaded = await client.files.create(file=("x.jsonl", lines_of(BODIES)), purpose="batch")
    content = await client.files.content(uploaded.id)
    await client.files.delete(uploaded.id)

    assert content.content == lines_of(BODIES)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_openai_batch_routes_require_the_key(stack):
    client = await gpt(stack, key="sk-wrong")

    with pytest.raises(openai.AuthenticationError):
        await client.files.create(file=("x.jsonl", lines_of(BODIES)), purpose="batch")


# OpenAI: faults


async def test_openai_batch_fail_fault_fails_the_batch_without_output(stack):
    client = await gpt(stack, faults=Faults(batch_fail_rate=1.0))
    batch = await run_batch(client)

    assert batch.errors is not None and batch.errors.data
    assert (batch.status, batch.output_file_id, batch.error_file_id) == ("failed", None, None)


async def test_openai_batch_expire_fault_expires_the_batch_with_batch_expired_lines(stack):
    client = await gpt(stack, faults=Faults(batch_expire_rate=1.0))
    batch = await run_batch(client)

    codes = {line["error"]["code"] for line in await lines(client, batch.error_file_id)}
    assert (batch.status, batch.output_file_id, codes) == ("expired", None, {"batch_expired"})


async def test_openai_batch_error_fault_answers_500_in_the_error_file(stack):
    client = await gpt(stack, faults=Faults(batch_error_rate=1.0))
    batch = await run_batch(client)

    statuses = {
        line["response"]["status_code"] for line in await lines(client, batch.error_file_id)
    }
    assert (batch.request_counts.model_dump(), statuses) == (
        {"total": len(BODIES), "completed": 0, "failed": len(BODIES)},
        {500},
    )


async def test_openai_batch_stuck_fault_keeps_the_batch_in_progress(stack):
    client = await gpt(stack, faults=Faults(batch_stuck_rate=1.0))
    created = await submit(client, lines_of(BODIES))

    statuses = [(await client.batches.retrieve(created.id)).status for _ in range(3)]
    assert statuses == ["in_progress"] * 3


async def test_openai_batch_faults_are_drawn_the_same_for_the_same_seed(stack):
    faults = Faults(batch_error_rate=0.5, seed=7)
    failed = []
    for _ in range(2):
        client = await gpt(stack, faults=faults)
        bodies = {f"r{i}": chat(str(i)) for i in range(20)}
        batch = await run_batch(client, bodies)
        failed.append(sorted(e["custom_id"] for e in await lines(client, batch.error_file_id)))

    assert failed[0] == failed[1] and 0 < len(failed[0]) < 20


# Anthropic: Message Batches


def params(content: Any, **options: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        **options,
    }


PARAMS = {
    "plain": params("What is 2 + 2?"),
    "system": params("Hi", system="Be brief."),
    "tool": params(
        "Review: lovely stay in Oslo",
        tools=[{"name": "review", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "review"},
    ),
    "image": params(
        [
            {"type": "text", "text": "What is in it?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ]
    ),
    "stop": params("one two three four five", stop_sequences=["four"]),
}


async def create(
    client: anthropic.AsyncAnthropic, requests: dict[str, dict[str, Any]] = PARAMS
) -> anthropic.types.messages.MessageBatch:
    return await client.messages.batches.create(
        requests=[{"custom_id": c, "params": p} for c, p in requests.items()]
    )


def origin(client: anthropic.AsyncAnthropic) -> str:
    return str(client.base_url).rstrip("/")


async def results(client: anthropic.AsyncAnthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result async for r in await client.messages.batches.results(batch_id)}


async def test_anthropic_batch_results_are_what_the_live_endpoint_answers(stack):
    client = await claude(stack)
    batch = await create(client)
    found = await results(client, batch.id)

    live = {c: await client.messages.create(**p) for c, p in PARAMS.items()}
    drop: Any = {"id": True, "content": {"__all__": {"id"}}}  # each answer's own ids
    assert {c: r.message.model_dump(exclude=drop) for c, r in found.items()} == {
        c: m.model_dump(exclude=drop) for c, m in live.items()
    }


async def test_anthropic_batch_is_in_progress_until_its_delay(stack):
    client = await claude(stack, batch_delay=HOUR)
    batch = await create(client)

    read = await client.messages.batches.retrieve(batch.id)
    assert (read.processing_status, read.request_counts.processing, read.results_url) == (
        "in_progress",
        len(PARAMS),
        None,
    )


async def test_anthropic_ended_batch_counts_its_requests(stack):
    client = await claude(stack)
    batch = await client.messages.batches.retrieve((await create(client)).id)

    assert (batch.processing_status, batch.request_counts.succeeded, batch.ended_at is None) == (
        "ended",
        len(PARAMS),
        False,
    )


async def test_anthropic_results_url_is_an_absolute_url_on_the_emulator(stack):
    client = await claude(stack)
    batch = await client.messages.batches.retrieve((await create(client)).id)

    assert batch.results_url == f"{origin(client)}/v1/messages/batches/{batch.id}/results"


async def test_anthropic_results_are_not_in_request_order(stack):
    client = await claude(stack)
    requests = {f"row-{i}": params(f"question {i}") for i in range(12)}
    batch = await create(client, requests)

    order = list(await results(client, batch.id))
    assert sorted(order) == sorted(requests) and order != list(requests)


async def test_anthropic_results_before_the_end_are_refused(stack):
    client = await claude(stack, batch_delay=HOUR)
    batch = await create(client)

    with pytest.raises(anthropic.AnthropicError):
        await client.messages.batches.results(batch.id)


async def test_anthropic_results_route_before_the_end_answers_400(stack):
    client = await claude(stack, batch_delay=HOUR)
    batch = await create(client)

    url = f"{origin(client)}/v1/messages/batches/{batch.id}/results"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"x-api-key": KEY}) as r,
    ):
        assert (r.status, (await r.json())["error"]["type"]) == (400, "invalid_request_error")


async def test_anthropic_batches_list_newest_first_a_page_at_a_time(stack):
    client = await claude(stack, batch_delay=HOUR)
    made = [(await create(client, {f"r{i}": params(str(i))})).id for i in range(3)]

    listed = [batch.id async for batch in client.messages.batches.list(limit=1)]
    assert listed == made[::-1]


async def test_anthropic_batches_list_before_an_id_gives_the_newer_ones(stack):
    client = await claude(stack, batch_delay=HOUR)
    made = [(await create(client, {f"r{i}": params(str(i))})).id for i in range(3)]

    page = await client.messages.batches.list(before_id=made[0], limit=5)
    assert ([b.id for b in page.data], page.has_more) == ([made[2], made[1]], False)


async def test_anthropic_cancel_is_canceling_then_ended_with_canceled_results(stack):
    client = await claude(stack, batch_delay=HOUR)
    batch = await create(client)

    canceling = await client.messages.batches.cancel(batch.id)
    kinds = {r.type for r in (await results(client, batch.id)).values()}
    assert (canceling.processing_status, kinds) == ("canceling", {"canceled"})


async def test_anthropic_cancel_counts_the_canceled_requests(stack):
    client = await claude(stack, batch_delay=HOUR)
    batch = await create(client)
    await client.messages.batches.cancel(batch.id)

    ended = await client.messages.batches.retrieve(batch.id)
    assert (ended.processing_status, ended.request_counts.canceled) == ("ended", len(PARAMS))


async def test_anthropic_invalid_params_end_errored_as_the_live_endpoint_refuses_them(stack):
    client = await claude(stack)
    batch = await create(client, {"bad": {"model": CLAUDE, "messages": []}})

    (result,) = (await results(client, batch.id)).values()
    assert (result.type, result.error.error.type) == ("errored", "invalid_request_error")


@pytest.mark.parametrize("custom_id", ["", "has space", "x" * 65, "dot.ted"])
async def test_anthropic_batch_refuses_a_bad_custom_id(stack, custom_id):
    client = await claude(stack)

    with pytest.raises(anthropic.BadRequestError):
        await create(client, {custom_id: params("hi")})


async def test_anthropic_batch_refuses_a_duplicate_custom_id(stack):
    client = await claude(stack)

    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.create(
            requests=[{"custom_id": "same", "params": params(str(i))} for i in range(2)]
        )


def test_anthropic_batch_refuses_more_requests_than_the_limit():
    requests = [{"custom_id": f"r{i}", "params": params("hi")} for i in range(3)]

    assert requests_problem(requests, max_requests=2) == (
        "requests: a batch holds at most 2 requests, not 3"
    )


async def test_anthropic_batch_routes_require_the_key(stack):
    client = await claude(stack, key="sk-ant-wrong")

    with pytest.raises(anthropic.AuthenticationError):
        await create(client)


async def test_anthropic_ended_batch_deletes(stack):
    client = await claude(stack)
    batch = await create(client)
    await client.messages.batches.retrieve(batch.id)
    await client.messages.batches.delete(batch.id)

    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(batch.id)


# Anthropic: faults


@pytest.mark.parametrize(
    ("faults", "kind", "error"),
    [
        (Faults(batch_fail_rate=1.0), "errored", "api_error"),
        (Faults(batch_error_rate=1.0), "errored", "api_error"),
        (Faults(batch_expire_rate=1.0), "expired", None),
    ],
    ids=["fail", "error", "expire"],
)
async def test_anthropic_batch_fault_ends_every_request_so(stack, faults, kind, error):
    client = await claude(stack, faults=faults)
    batch = await create(client)

    found = (await results(client, batch.id)).values()
    assert {(r.type, r.error.error.type if r.type == "errored" else None) for r in found} == {
        (kind, error)
    }


async def test_anthropic_batch_stuck_fault_keeps_the_batch_in_progress(stack):
    client = await claude(stack, faults=Faults(batch_stuck_rate=1.0))
    batch = await create(client)

    statuses = [
        (await client.messages.batches.retrieve(batch.id)).processing_status for _ in range(3)
    ]
    assert statuses == ["in_progress"] * 3


# options and counters


def test_batch_fault_rates_outside_0_to_1_are_refused():
    with pytest.raises(UsageError):
        Faults(batch_expire_rate=1.5)


def test_batch_fault_rates_do_not_add_up_with_the_chat_rates():
    assert Faults(error_rate=1.0, batch_error_rate=1.0, batch_fail_rate=1.0).batch_error_rate == 1


def test_a_negative_batch_delay_is_refused():
    with pytest.raises(UsageError):
        Emulator(protocol="openai", batch_delay=-1)


def test_emulate_takes_a_batch_delay():
    result = CliRunner().invoke(main, ["emulate", "--help"], terminal_width=200)

    assert "--batch-delay FLOAT RANGE Seconds before a batch ends. [default: 2.0;" in (
        " ".join(result.output.split())
    )


async def test_stats_count_files_batches_requests_and_cancels(stack):
    client = await gpt(stack, batch_delay=HOUR)
    created = await submit(client, lines_of(BODIES))
    await submit(client, lines_of({"one": chat("hi")}))
    await client.batches.cancel(created.id)

    async with aiohttp.ClientSession() as session:
        stats_url = str(client.base_url).removesuffix("v1/") + "stats"
        async with session.get(stats_url) as r:
            stats = await r.json()
    counted = ("files_uploaded", "batches_created", "batch_requests", "batches_cancelled")
    assert {k: stats[k] for k in counted} == dict(
        zip(counted, (2, 2, len(BODIES) + 1, 1), strict=True)
    )
