"""AiChatOnline on the wire: requests, stream parsing and error mapping, with aioresponses.

aioresponses fakes aiohttp's client only; nothing of aibatch is patched. One test needs
bytes that aioresponses cannot feed and uses a real server on loopback instead.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from aibatch.errors import (
    ConnectionRefused,
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    UnknownModelError,
)
from aibatch.providers.aichatonline import BASE_URL_ENV, AiChatOnline
from aibatch.providers.base import StreamInfo
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest, Completion, Message
from tests.providers.compat import CompatResponse

BASE = "https://chat.test"
TOKEN_PATH = "/api/v1/user/getUniqueId"
CHAT_PATH = "/aichatonline/api/chat/gpt"
CHAT_URL = f"{BASE}{CHAT_PATH}"
TOKEN = "tok-7f3a9c2e51b84d06"
OTHER_TOKEN = "tok-0d1e2f3a4b5c6d7e"
RANDOM_10 = re.compile(r"[a-z0-9]{10}")

BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/119.0",
    "Accept-Language": "de,en-US;q=0.7,en;q=0.3",
    "Referer": f"{BASE}/chatgpt/chat/",
    "Content-Type": "application/json",
    "Origin": BASE,
    "Alt-Used": "aichatonline.org",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-origin",
}


def token_url_pattern(base: str = BASE) -> re.Pattern[str]:
    return re.compile(re.escape(f"{base}{TOKEN_PATH}") + r"\?canvas=-[a-z0-9]{10}$")


def ndjson(*messages: str | None) -> bytes:
    return b"".join(json.dumps({"data": {"message": m}}).encode() + b"\n" for m in messages)


class FakeService:
    """The two AiChatOnline endpoints, answered by aioresponses as each test scripts."""

    def __init__(self, mocked: aioresponses, base: str = BASE) -> None:
        self.mocked = mocked
        self.base = base

    def token(
        self,
        value: object = TOKEN,
        *,
        status: int = 200,
        body: str | bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        exception: Exception | None = None,
        repeat: bool = False,
    ) -> None:
        if body is None:
            body = json.dumps({"code": 200, "data": value, "message": "success"})
        self.mocked.get(
            token_url_pattern(self.base),
            status=status,
            body=body,
            content_type=content_type,
            headers=headers,
            exception=exception,
            repeat=repeat,
            response_class=CompatResponse,
        )

    def chat(
        self,
        body: bytes | str = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "application/x-ndjson",
        exception: Exception | None = None,
        callback: Any = None,
        repeat: bool = False,
    ) -> None:
        self.mocked.post(
            f"{self.base}{CHAT_PATH}",
            status=status,
            body=body,
            content_type=content_type,
            headers=headers,
            exception=exception,
            callback=callback,
            repeat=repeat,
            response_class=CompatResponse,
        )

    def calls(self, method: str) -> list[tuple[URL, dict[str, Any]]]:
        return [
            (url, call.kwargs)
            for (verb, url), calls in self.mocked.requests.items()
            if verb == method
            for call in calls
        ]

    @property
    def token_calls(self) -> list[tuple[URL, dict[str, Any]]]:
        return self.calls("GET")

    @property
    def chat_calls(self) -> list[tuple[URL, dict[str, Any]]]:
        return self.calls("POST")


@pytest.fixture
def service() -> Iterator[FakeService]:
    with aioresponses() as mocked:
        yield FakeService(mocked)


@pytest.fixture
async def provider() -> AsyncIterator[AiChatOnline]:
    async with AiChatOnline(base_url=BASE) as p:
        yield p


def ask(*contents: str, model: str = "gpt-4o-mini") -> ChatRequest:
    roles = ["user", "assistant"]
    return ChatRequest(
        messages=tuple(Message(roles[i % 2], c) for i, c in enumerate(contents)), model=model
    )


async def complete(provider: AiChatOnline, request: ChatRequest | None = None) -> Completion:
    with anyio.fail_after(5):
        return await provider.complete(request or ask("Hi"))


async def chunks_of(provider: AiChatOnline, info: StreamInfo, *contents: str) -> list[str]:
    messages = [{"role": "user", "content": c} for c in contents]
    with anyio.fail_after(5):
        return [
            c async for c in provider.create_async_generator("gpt-4o-mini", messages, info=info)
        ]


async def failure(provider: AiChatOnline, request: ChatRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(provider, request)
    return caught.value


def assert_secret_kept(exc: BaseException, *tokens: str) -> None:
    """Neither the message, the repr nor the printed traceback chain shows a token."""
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for token in tokens or (TOKEN,):
        for text in shown:
            assert token not in text


# requests


async def test_chat_request_sends_the_browser_headers_and_the_token(service, provider):
    service.token()
    service.chat(ndjson("ok"))

    await complete(provider)

    [(url, kwargs)] = service.chat_calls
    assert url == URL(CHAT_URL)
    assert kwargs["headers"] == {**BROWSER_HEADERS, "UniqueId": TOKEN}


async def test_token_request_sends_the_browser_headers_without_unique_id(service, provider):
    service.token()
    service.chat(ndjson("ok"))

    await complete(provider)

    [(_, kwargs)] = service.token_calls
    assert kwargs["headers"] == BROWSER_HEADERS
    assert "UniqueId" not in kwargs["headers"]


async def test_chat_body_is_a_random_conversation_id_and_the_formatted_prompt(service, provider):
    service.token()
    service.chat(ndjson("ok"), repeat=True)
    request = ChatRequest(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Hi"),
            Message("assistant", "Hello"),
            Message("user", "Bye"),
        ),
        model="gpt-4o-mini",
    )

    await complete(provider, request)
    await complete(provider, request)

    bodies = [json.loads(kwargs["data"]) for _, kwargs in service.chat_calls]
    for body in bodies:
        assert set(body) == {"conversationId", "prompt"}
        assert RANDOM_10.fullmatch(body["conversationId"])
        assert body["prompt"] == format_prompt(request.message_dicts)
        assert (
            body["prompt"] == "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"
        )
    assert bodies[0]["conversationId"] != bodies[1]["conversationId"]


async def test_a_single_message_is_sent_as_its_content(service, provider):
    service.token()
    service.chat(ndjson("ok"))

    await complete(provider, ask("  just this \n"))

    [(_, kwargs)] = service.chat_calls
    assert json.loads(kwargs["data"])["prompt"] == "  just this \n"


async def test_render_shows_the_prompt_that_is_sent(provider):
    request = ask("Hi", "Hello", "Bye")

    assert provider.render(request) == "User: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"


async def test_token_url_is_the_base_url_with_a_random_canvas(service, provider):
    service.token()
    service.chat(ndjson("ok"))

    await complete(provider)

    [(url, _)] = service.token_calls
    assert str(url).startswith(f"{BASE}{TOKEN_PATH}?")
    assert set(url.query) == {"canvas"}
    assert url.query["canvas"].startswith("-")
    assert RANDOM_10.fullmatch(url.query["canvas"][1:])


async def test_base_url_with_a_path_and_trailing_slash_prefixes_both_endpoints():
    base = "https://proxy.test/aichat"
    with aioresponses() as mocked:
        service = FakeService(mocked, base)
        service.token()
        service.chat(ndjson("ok"))
        async with AiChatOnline(base_url=f"{base}/") as p:
            await complete(p)

    [(token_url, _)] = service.token_calls
    [(chat_url, kwargs)] = service.chat_calls
    assert token_url.path == f"/aichat{TOKEN_PATH}"
    assert chat_url == URL(f"{base}{CHAT_PATH}")
    assert kwargs["headers"]["Origin"] == base
    assert kwargs["headers"]["Referer"] == f"{base}/chatgpt/chat/"


async def test_the_environment_variable_sets_the_base_url(monkeypatch):
    env_base = "https://env.test"
    monkeypatch.setenv(BASE_URL_ENV, env_base)
    with aioresponses() as mocked:
        service = FakeService(mocked, env_base)
        service.token()
        service.chat(ndjson("ok"))
        async with AiChatOnline() as p:
            assert p.base_url == env_base
            await complete(p)

    assert len(service.token_calls) == 1
    assert service.chat_calls[0][0] == URL(f"{env_base}{CHAT_PATH}")


def test_an_explicit_base_url_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, "https://env.test")

    assert AiChatOnline(base_url=BASE).base_url == BASE


def test_without_base_url_or_environment_the_public_address_is_used(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)

    assert AiChatOnline().base_url == "https://aichatonlineorg.erweima.ai"


async def test_the_token_is_reused_by_later_requests(service, provider):
    service.token()
    service.chat(ndjson("ok"), repeat=True)

    for _ in range(3):
        await complete(provider)

    assert len(service.token_calls) == 1
    assert [kwargs["headers"]["UniqueId"] for _, kwargs in service.chat_calls] == [TOKEN] * 3
    assert provider.stats == {"token_requests": 1, "token_rejections": 0}


async def test_the_proxy_is_passed_to_both_requests(service):
    proxy = "http://proxy.test:3128"
    service.token()
    service.chat(ndjson("ok"))

    async with AiChatOnline(base_url=BASE, proxy=proxy) as p:
        await complete(p)

    assert [kwargs["proxy"] for _, kwargs in service.token_calls] == [proxy]
    assert [kwargs["proxy"] for _, kwargs in service.chat_calls] == [proxy]


async def test_without_a_proxy_none_is_passed(service, provider):
    service.token()
    service.chat(ndjson("ok"))

    await complete(provider)

    assert service.token_calls[0][1]["proxy"] is None
    assert service.chat_calls[0][1]["proxy"] is None


async def test_a_proxy_given_to_one_call_overrides_the_instance_proxy_for_its_chat(service):
    service.token()
    service.chat(ndjson("ok"))
    messages = [{"role": "user", "content": "Hi"}]

    async with AiChatOnline(base_url=BASE, proxy="http://instance.test:1") as p:
        with anyio.fail_after(5):
            got = [
                c
                async for c in p.create_async_generator(
                    "gpt-4o-mini", messages, proxy="http://call.test:2"
                )
            ]

    assert got == ["ok"]
    assert service.chat_calls[0][1]["proxy"] == "http://call.test:2"


# the model


async def test_an_unknown_model_is_refused_before_anything_is_sent(service, provider):
    with pytest.raises(UnknownModelError) as caught:
        await complete(provider, ask("Hi", model="gpt-9"))

    assert caught.value.name == "gpt-9"
    assert "gpt-4o-mini" in str(caught.value)
    assert service.mocked.requests == {}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "4o-mini", ""])
async def test_the_default_model_its_alias_and_no_model_are_accepted(service, provider, model):
    service.token()
    service.chat(ndjson("ok"))

    completion = await complete(provider, ask("Hi", model=model))

    assert completion.text == "ok"


# stream parsing


async def test_the_answer_is_the_deltas_joined_in_order(service, provider):
    service.token()
    service.chat(ndjson("Hel", "lo, wor", "ld!"))
    info = StreamInfo()

    got = await chunks_of(provider, info, "Hi")

    assert got == ["Hel", "lo, wor", "ld!"]
    assert info.http_status == 200
    assert info.garbage_lines == 0


async def test_get_response_sends_with_the_given_token_and_yields_the_decoded_deltas(
    service, provider
):
    # PROTOCOL.md: the one place that sends the chat request and yields the deltas;
    # create_async_generator wraps it with the token handling (no token request here)
    service.chat(ndjson("Hel", None, "lo"))
    info = StreamInfo()

    with anyio.fail_after(5):
        got = [d async for d in provider._get_response("Hi", OTHER_TOKEN, None, info)]

    assert got == ["Hel", "lo"]
    assert service.token_calls == []
    [(_, kwargs)] = service.chat_calls
    assert kwargs["headers"]["UniqueId"] == OTHER_TOKEN


async def test_complete_returns_the_joined_answer_and_its_status(service, provider):
    service.token()
    service.chat(ndjson("Hel", "lo, wor", "ld!"))

    completion = await complete(provider)

    assert completion.text == "Hello, world!"
    assert completion.http_status == 200
    assert completion.garbage_lines == 0
    assert completion.ttfb_ms is not None
    assert completion.ttfb_ms >= 0


async def test_blank_lines_are_skipped_and_not_counted_as_garbage(service, provider):
    service.token()
    service.chat(b"\n" + ndjson("a") + b"\n  \n\r\n" + ndjson("b") + b"\n")
    info = StreamInfo()

    got = await chunks_of(provider, info, "Hi")

    assert got == ["a", "b"]
    assert info.garbage_lines == 0


async def test_null_and_empty_messages_add_nothing_and_are_not_garbage(service, provider):
    service.token()
    service.chat(ndjson("a", None, "", "b"))
    info = StreamInfo()

    got = await chunks_of(provider, info, "Hi")

    assert "".join(got) == "ab"
    assert info.garbage_lines == 0


async def test_lines_that_cannot_be_decoded_are_counted_as_garbage(service, provider):
    garbage = [
        b"not json at all",
        b'{"data": 7}',
        b'{"data": {"message": 5}}',
        b'{"data": {"text": "no message key"}}',
        b'{"nodata": true}',
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"data": {"message": "cut',
        b"\xff\xfe\xfd",
    ]
    service.token()
    service.chat(ndjson("a") + b"\n".join(garbage) + b"\n" + ndjson("b"))
    info = StreamInfo()

    got = await chunks_of(provider, info, "Hi")

    assert got == ["a", "b"]
    assert info.garbage_lines == len(garbage)


async def test_garbage_lines_are_reported_in_the_completion(service, provider):
    service.token()
    service.chat(b"junk\n" + ndjson("a") + b"more junk\n")

    completion = await complete(provider)

    assert completion.text == "a"
    assert completion.garbage_lines == 2


async def test_a_last_line_without_newline_is_still_read(service, provider):
    service.token()
    service.chat(ndjson("a") + b'{"data": {"message": "b"}}')

    completion = await complete(provider)

    assert completion.text == "ab"


async def test_unicode_in_deltas_survives(service, provider):
    service.token()
    service.chat(ndjson("Grüße ", "🙂", " 你好"))

    completion = await complete(provider)

    assert completion.text == "Grüße 🙂 你好"


async def test_a_stream_of_only_garbage_is_a_transient_error(service, provider):
    service.token()
    service.chat(b"not json\n<html>oops</html>\n{}\n")

    error = await failure(provider)

    assert type(error) is TransientError
    assert error.http_status == 200
    assert "3 undecodable lines" in str(error)


@pytest.mark.parametrize("body", [b"", b"\n\n", ndjson(None, None), ndjson("")])
async def test_a_stream_without_any_text_is_a_transient_error(service, provider, body):
    service.token()
    service.chat(body)

    error = await failure(provider)

    assert type(error) is TransientError
    assert error.http_status == 200


# error mapping: rate limits


async def test_429_is_rate_limited_with_retry_after_in_seconds(service, provider):
    service.token()
    service.chat(b'{"code": 429}', status=429, headers={"Retry-After": "17"})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 17.0
    assert error.http_status == 429


async def test_429_is_rate_limited_with_retry_after_as_an_http_date(service, provider):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    service.token()
    service.chat(b"slow down", status=429, headers={"Retry-After": when})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after is not None
    assert 110.0 <= error.retry_after <= 121.0


async def test_429_with_an_http_date_in_the_past_waits_zero(service, provider):
    when = email.utils.formatdate(time.time() - 3600, usegmt=True)
    service.token()
    service.chat(b"slow down", status=429, headers={"Retry-After": when})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "Funday, 99 Foo 2020"])
async def test_429_without_a_readable_retry_after_has_none(service, provider, header):
    service.token()
    service.chat(
        b"slow down", status=429, headers=None if header is None else {"Retry-After": header}
    )

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after is None


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "1e999"])
async def test_429_with_a_non_numeric_float_retry_after_has_none(service, provider, header):
    service.token()
    service.chat(b"slow down", status=429, headers={"Retry-After": header})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after is None


async def test_429_on_the_token_endpoint_is_rate_limited(service, provider):
    service.token(status=429, body="busy", headers={"Retry-After": "3"})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 3.0
    assert service.chat_calls == []


# error mapping: token rejection


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_token_is_refreshed_and_the_request_retried(service, provider, status):
    service.token(TOKEN)
    service.token(OTHER_TOKEN)
    service.chat(b'{"code": 401, "message": "UniqueId expired"}', status=status)
    service.chat(ndjson("fine"))

    completion = await complete(provider)

    assert completion.text == "fine"
    assert len(service.token_calls) == 2
    assert [kwargs["headers"]["UniqueId"] for _, kwargs in service.chat_calls] == [
        TOKEN,
        OTHER_TOKEN,
    ]
    assert provider.stats == {"token_requests": 2, "token_rejections": 1}


async def test_the_refreshed_token_is_kept_for_later_requests(service, provider):
    service.token(TOKEN)
    service.token(OTHER_TOKEN)
    service.chat(b"expired", status=401)
    service.chat(ndjson("fine"), repeat=True)

    await complete(provider)
    await complete(provider)

    assert len(service.token_calls) == 2
    assert service.chat_calls[-1][1]["headers"]["UniqueId"] == OTHER_TOKEN


@pytest.mark.parametrize("token_retries", [0, 1, 2, 4])
async def test_a_token_rejected_every_time_raises_token_rejected_after_the_retries(
    service, token_retries
):
    service.token(repeat=True)
    service.chat(
        b'{"code": 401, "message": "missing or unknown UniqueId"}', status=401, repeat=True
    )

    async with AiChatOnline(base_url=BASE, token_retries=token_retries) as p:
        error = await failure(p)

    assert isinstance(error, TokenRejected)
    assert error.http_status == 401
    assert len(service.chat_calls) == token_retries + 1
    assert len(service.token_calls) == token_retries + 1
    assert_secret_kept(error)


async def test_401_on_the_token_endpoint_is_not_retried(service, provider):
    service.token(status=401, body="no", repeat=True)

    error = await failure(provider)

    assert isinstance(error, TransientError)
    assert error.http_status == 401
    assert len(service.token_calls) == 1
    assert service.chat_calls == []


# error mapping: other statuses


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, TransientError),
        (502, TransientError),
        (503, Overloaded),
        (504, TransientError),
        (408, TransientError),
    ],
)
async def test_server_trouble_is_a_transient_error_with_its_status(
    service, provider, status, expected
):
    service.token()
    service.chat(b"<html>Bad Gateway</html>", status=status, content_type="text/html")

    error = await failure(provider)

    assert type(error) is expected
    assert isinstance(error, TransientError)
    assert error.http_status == status
    assert f"HTTP {status}" in str(error)
    assert len(service.chat_calls) == 1


@pytest.mark.parametrize("status", [400, 404, 405, 413, 422])
async def test_a_client_error_is_permanent_with_its_status(service, provider, status):
    service.token()
    service.chat(b'{"code": 400, "message": "body needs a string prompt"}', status=status)

    error = await failure(provider)

    assert type(error) is PermanentError
    assert error.http_status == status
    assert len(service.chat_calls) == 1


async def test_an_error_message_quotes_the_start_of_the_body(service, provider):
    service.token()
    service.chat(b'{"message": "body needs a string prompt"}' + b"x" * 1000, status=400)

    error = await failure(provider)

    assert "body needs a string prompt" in str(error)
    assert len(str(error)) < 400


@pytest.mark.parametrize(("status", "expected"), [(500, TransientError), (503, Overloaded)])
async def test_server_trouble_on_the_token_endpoint_is_transient(
    service, provider, status, expected
):
    service.token(status=status, body="down")

    error = await failure(provider)

    assert type(error) is expected
    assert isinstance(error, TransientError)
    assert error.http_status == status
    assert service.chat_calls == []


# error mapping: connection failures


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (aiohttp.ClientConnectionError("connection reset by peer"), TransientError),
        (aiohttp.ServerDisconnectedError(), ConnectionRefused),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), ConnectionRefused),
    ],
    ids=["connection-error", "server-disconnected", "os-error"],
)
async def test_a_connection_failure_on_chat_is_transient(service, provider, exception, expected):
    service.token()
    service.chat(exception=exception)

    error = await failure(provider)

    assert type(error) is expected
    assert isinstance(error, TransientError)
    assert error.__cause__ is exception
    assert error.http_status is None


async def test_a_cut_payload_is_transient(service, provider):
    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    service.token()
    service.chat(exception=cut)

    error = await failure(provider)

    assert type(error) is TransientError
    assert error.__cause__ is cut


async def test_a_refused_token_request_is_connection_refused(service, provider):
    reset = aiohttp.ClientOSError(104, "Connection reset by peer")
    service.token(exception=reset)

    error = await failure(provider)

    assert type(error) is ConnectionRefused
    assert error.__cause__ is reset
    assert service.chat_calls == []


async def test_a_connection_failure_on_the_token_endpoint_is_transient(service, provider):
    refused = aiohttp.ClientConnectionError("connection refused")
    service.token(exception=refused)

    error = await failure(provider)

    assert type(error) is TransientError
    assert error.__cause__ is refused
    assert service.chat_calls == []


# error mapping: token endpoint answers without a token


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html>maintenance</html>", "text/html"),
        ('{"data": "looks like json"}', "text/plain"),
        ("not json", "application/json"),
        ("", "application/json"),
        ('{"code": 200, "message": "success"}', "application/json"),
        ('{"code": 200, "data": "", "message": "success"}', "application/json"),
        ('{"code": 200, "data": null}', "application/json"),
        ('{"code": 200, "data": 12345}', "application/json"),
        ('{"code": 200, "data": {"token": "x"}}', "application/json"),
        ('["data"]', "application/json"),
        ('"tok"', "application/json"),
    ],
    ids=[
        "html",
        "json-as-text-plain",
        "invalid-json",
        "empty-body",
        "missing-data",
        "empty-data",
        "null-data",
        "number-data",
        "object-data",
        "list",
        "bare-string",
    ],
)
async def test_a_token_endpoint_reply_without_a_token_is_transient(
    service, provider, body, content_type
):
    service.token(body=body, content_type=content_type)

    error = await failure(provider)

    assert type(error) is TransientError
    assert "getUniqueId" in str(error)
    assert service.chat_calls == []


async def test_a_token_reply_with_extra_keys_is_accepted(service, provider):
    service.token(body=json.dumps({"code": 200, "data": TOKEN, "message": "success", "x": [1]}))
    service.chat(ndjson("ok"))

    await complete(provider)

    assert service.chat_calls[0][1]["headers"]["UniqueId"] == TOKEN


# the token stays secret


@pytest.mark.parametrize(
    "script",
    [
        {"status": 401, "body": b"expired"},
        {"status": 403, "body": b"forbidden"},
        {"status": 429, "body": b"slow", "headers": {"Retry-After": "1"}},
        {"status": 500, "body": b"boom"},
        {"status": 400, "body": b"bad"},
        {"exception": aiohttp.ClientConnectionError("reset")},
        {"exception": aiohttp.ClientPayloadError("cut")},
        {"body": b"garbage only\n"},
    ],
    ids=["401", "403", "429", "500", "400", "reset", "cut", "garbage"],
)
async def test_no_error_shows_the_token(service, provider, script):
    service.token(repeat=True)
    service.chat(repeat=True, **script)

    error = await failure(provider)

    assert_secret_kept(error)


async def test_a_chat_error_raised_through_aiohttp_does_not_show_the_token(service, provider):
    # A ClientResponseError carries the request's headers (and so the token) in its
    # request_info; the translated error and its printed chain must not show them.
    def raise_response_error(url: URL, **kwargs: Any) -> CallbackResult:
        info = aiohttp.RequestInfo(url, "POST", kwargs["headers"], url)
        raise aiohttp.ClientResponseError(info, (), status=502, message="Bad Gateway")

    service.token()
    service.chat(callback=raise_response_error)

    error = await failure(provider)

    assert type(error) is TransientError
    assert_secret_kept(error)


async def test_reprs_of_the_provider_and_its_tokens_do_not_show_the_token(service, provider):
    service.token()
    service.chat(ndjson("ok"))
    await complete(provider)

    token = await provider.tokens.get()

    for text in (repr(provider), repr(provider.tokens), repr(token), str(provider.stats)):
        assert TOKEN not in text


async def test_a_server_echoing_the_token_in_its_error_does_not_leak_it(service):
    def echo(url: URL, **kwargs: Any) -> CallbackResult:
        unique_id = kwargs["headers"]["UniqueId"]
        return CallbackResult(
            status=401,
            body=f'{{"message": "unknown UniqueId {unique_id}"}}',
            response_class=CompatResponse,
        )

    service.token(repeat=True)
    service.chat(callback=echo, repeat=True)

    async with AiChatOnline(base_url=BASE, token_retries=0) as p:
        error = await failure(p)

    assert isinstance(error, TokenRejected)
    assert_secret_kept(error)


# what aioresponses cannot feed: a real server on loopback


async def test_a_stream_line_longer_than_aiohttp_allows_is_read_whole():
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"data": TOKEN})

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(json.dumps({"data": {"message": "x" * 2_000_000}}).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get(TOKEN_PATH, token)
    app.router.add_post(CHAT_PATH, chat)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with AiChatOnline(base_url=f"http://{host}:{port}") as p:
            completion = await p.complete(
                ChatRequest(messages=(Message("user", "long"),), model="gpt-4o-mini")
            )
        assert completion.text == "x" * 2_000_000
    finally:
        await runner.cleanup()
