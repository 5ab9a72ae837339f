"""ScriptedProvider: a fake provider for engine tests, instead of patching anything."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio

from aibatch.providers.base import AsyncGeneratorProvider
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest


def echo(prompt: str) -> str:
    return f"echo: {prompt}"


class ScriptedProvider(AsyncGeneratorProvider):
    """Answers from a script: ``{prompt: [outcome of attempt 1, attempt 2, ...]}``.

    An outcome is a text to answer or an exception to raise; the last one repeats.
    Prompts not in the script are answered ``answer(prompt)``. While ``gate`` is set
    to an unset event, every call waits for it; ``started`` is set once ``wait_for``
    calls are in flight.
    """

    name: ClassVar[str] = "scripted"
    default_model: ClassVar[str] = "fake-1"
    models: ClassVar[Sequence[str]] = ("fake-1", "fake-2")

    def __init__(
        self,
        script: Mapping[str, Sequence[str | BaseException]] | None = None,
        *,
        answer: Callable[[str], str] = echo,
        gate: anyio.Event | None = None,
        wait_for: int = 0,
    ) -> None:
        super().__init__(base_url="http://scripted.invalid")
        self.script = dict(script or {})
        self.answer = answer
        self.gate = gate
        self.wait_for = wait_for
        self.started = anyio.Event()
        self.calls: Counter[str] = Counter()
        self.inflight = 0
        self.max_inflight = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"token_requests": 0}

    def render(self, request: ChatRequest) -> str:
        return format_prompt(request.message_dicts)

    async def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        prompt = format_prompt(messages)
        self.calls[prompt] += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.wait_for and self.inflight >= self.wait_for:
                self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            outcomes = self.script.get(prompt)
            outcome: str | BaseException = (
                outcomes[min(self.calls[prompt], len(outcomes)) - 1]
                if outcomes
                else self.answer(prompt)
            )
            if isinstance(outcome, BaseException):
                raise outcome
            info = kwargs.get("info")
            if info is not None:
                info.http_status = 200
            half = len(outcome) // 2
            for piece in (outcome[:half], outcome[half:]):
                if piece:
                    yield piece
        finally:
            self.inflight -= 1
