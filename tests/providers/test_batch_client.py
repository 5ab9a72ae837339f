"""How a Batch API result line becomes an answer or an error, for each provider."""

from __future__ import annotations

import re
from typing import Any

import pytest

from aibatch.errors import (
    BatchCancelled,
    BatchExpired,
    PermanentError,
    RateLimited,
    TransientError,
)
from aibatch.jobs.batches import custom_id, parse_custom_id
from aibatch.providers.anthropic import AnthropicMessages
from aibatch.providers.batch import AnthropicBatches, OpenAIBatches, batch_client
from aibatch.providers.openai import OpenAIChat

OPENAI = OpenAIBatches(OpenAIChat(base_url="http://127.0.0.1:9/v1"))
ANTHROPIC = AnthropicBatches(AnthropicMessages(base_url="http://127.0.0.1:9"))


def completion(text: str) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }


def test_an_openai_answer_is_read_with_its_usage() -> None:
    item = OPENAI._item(
        {"custom_id": "c", "response": {"status_code": 200, "body": completion("hi")}}
    )
    assert (item.completion.text, item.completion.completion_tokens) == ("hi", 2)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ({"response": {"status_code": 400, "body": {"error": {"message": "bad"}}}}, PermanentError),
        ({"response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}, RateLimited),
        ({"response": {"status_code": 500, "body": {}}}, TransientError),
        ({"error": {"code": "batch_expired", "message": "late"}}, BatchExpired),
        ({"error": {"code": "batch_cancelled", "message": "stop"}}, BatchCancelled),
        ({}, TransientError),
    ],
    ids=["400", "429", "500", "expired", "cancelled", "empty"],
)
def test_an_openai_error_line_maps_to_its_error(line: dict[str, Any], kind: type) -> None:
    assert type(OPENAI._item({"custom_id": "c", **line}).error) is kind


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        ({"type": "expired"}, BatchExpired),
        ({"type": "canceled"}, BatchCancelled),
        (
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "invalid_request_error"}},
            },
            PermanentError,
        ),
        (
            {"type": "errored", "error": {"type": "error", "error": {"type": "api_error"}}},
            TransientError,
        ),
    ],
    ids=["expired", "canceled", "invalid", "api_error"],
)
def test_an_anthropic_result_maps_to_its_error(result: dict[str, Any], kind: type) -> None:
    assert type(ANTHROPIC._item({"custom_id": "c", "result": result}).error) is kind


def test_an_anthropic_schema_answer_is_the_tool_input() -> None:
    client = AnthropicBatches(AnthropicMessages(base_url="http://127.0.0.1:9"), schema=True)
    message = {
        "type": "message",
        "content": [{"type": "tool_use", "name": "answer", "input": {"n": 1}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    item = client._item({"custom_id": "c", "result": {"type": "succeeded", "message": message}})
    assert item.completion.text == '{"n": 1}'  # type: ignore[union-attr]


def test_openai_batch_created_at_is_read_from_unix_seconds() -> None:
    assert (
        OPENAI._info({"id": "b", "status": "completed", "created_at": 1700000000}).created_at
        == 1700000000.0
    )


def test_anthropic_batch_created_at_is_read_from_rfc3339() -> None:
    info = ANTHROPIC._info(
        {"id": "b", "processing_status": "ended", "created_at": "2023-11-14T22:13:20Z"}
    )
    assert info.created_at == 1700000000.0


def test_a_custom_id_carries_the_row_key_and_request_hash_back() -> None:
    assert parse_custom_id(custom_id(2**64 - 1, 7)) == (2**64 - 1, 7)


def test_a_custom_id_fits_anthropics_rules() -> None:
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", custom_id(2**64 - 1, 2**64 - 1))


def test_a_provider_without_a_batch_api_has_no_client() -> None:
    from aibatch.errors import UsageError
    from aibatch.providers.aichatonline import AiChatOnline

    with pytest.raises(UsageError, match="no batch API"):
        batch_client(AiChatOnline())
