"""AiChatOnline: gpt4free's provider, with session and token reuse and typed errors.

The public shape follows the original (``site_url``, ``url``, ``api_endpoint``,
``grab_token``, ``create_async_generator`` on the class or an instance,
``_get_response``); what differs is that inside ``async with`` an instance holds one
session and one :class:`TokenManager` for a whole batch, and that every failure is
raised as an :mod:`aibatch.errors` type instead of being swallowed. Wire details: the
project README.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp

from ..errors import TokenRejected, TransientError, UsageError
from ._http import HTTP_ERRORS, LineSplitter, http_error, loads, response_error
from .base import AsyncGeneratorProvider, ProviderModelMixin, StreamInfo
from .helpers import format_prompt, get_random_string
from .tokens import Token, TokenManager

log = logging.getLogger(__name__)

__all__ = ["AiChatOnline"]

BASE_URL_ENV = "AIBATCH_AICHATONLINE_URL"


class AiChatOnline(AsyncGeneratorProvider, ProviderModelMixin):
    """The AiChatOnline chat service (``https://aichatonline.org``).

    Args:
        base_url: API base; default ``$AIBATCH_AICHATONLINE_URL``, else :attr:`url`.
        token_max_uses: replace the token after this many requests.
        token_max_age: replace the token after this many seconds.
        token_pool: spread requests over this many tokens.
        token_retries: fresh tokens to try within one call after a 401/403.
        **kwargs: ``model`` and the rest: see :class:`AsyncGeneratorProvider`.

    Raises:
        UsageError: a token option out of range, or an unknown ``model``.
    """

    name: ClassVar[str] = "aichatonline"
    site_url: ClassVar[str] = "https://aichatonline.org"
    url: ClassVar[str] = "https://aichatonlineorg.erweima.ai"
    api_endpoint: ClassVar[str] = "/aichatonline/api/chat/gpt"
    token_endpoint: ClassVar[str] = "/api/v1/user/getUniqueId"
    # The public service is gone; the built-in emulator speaks its protocol.
    working: ClassVar[bool] = False
    default_model: ClassVar[str] = "gpt-4o-mini"
    models: ClassVar[Sequence[str]] = ("gpt-4o-mini",)
    model_aliases: ClassVar[Mapping[str, str]] = {"4o-mini": "gpt-4o-mini"}

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token_max_uses: int | None = None,
        token_max_age: float | None = None,
        token_pool: int = 1,
        token_retries: int = 2,
        **kwargs: Any,
    ) -> None:
        if token_retries < 0:
            raise UsageError("token_retries must be 0 or more")
        super().__init__(base_url=base_url or os.environ.get(BASE_URL_ENV), **kwargs)
        self.tokens = TokenManager(
            self._fetch_token,
            max_uses=token_max_uses,
            max_age=token_max_age,
            pool_size=token_pool,
        )
        self.token_retries = token_retries
        self.headers = {
            "User-Agent": (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/119.0"
            ),
            "Accept-Language": "de,en-US;q=0.7,en;q=0.3",
            "Referer": f"{self.base_url}/chatgpt/chat/",
            "Content-Type": "application/json",
            "Origin": self.base_url,
            "Alt-Used": "aichatonline.org",
            "Sec-Fetch-Dest": "empty",
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
        }
        self._chat_url = f"{self.base_url}{self.api_endpoint}"

    @property
    def stats(self) -> dict[str, int]:
        """Token requests made and token rejections seen by this instance."""
        return {"token_requests": self.tokens.fetches, "token_rejections": self.tokens.rejections}

    async def grab_token(self, session: aiohttp.ClientSession, proxy: str | None) -> str:
        """Ask ``getUniqueId`` for a new token.

        Raises:
            TransientError: the request failed or the reply carried no token.
            ConnectionRefused: the token endpoint refused or reset the connection.
            Overloaded: the token endpoint answered 429, 503 or 529.
        """
        url = f"{self.base_url}{self.token_endpoint}"
        status: int | None = None
        try:
            async with session.get(
                url,
                params={"canvas": f"-{get_random_string()}"},
                headers=self.headers,
                proxy=proxy,
                timeout=self.request_timeout,
            ) as response:
                status = response.status
                if status >= 400:
                    raise await response_error(response, "token request (getUniqueId)")
                payload = await response.json()
        except aiohttp.ContentTypeError as exc:
            raise TransientError("token request (getUniqueId) did not answer JSON") from exc
        except json.JSONDecodeError as exc:
            raise TransientError(f"token request (getUniqueId) failed: {exc}") from exc
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.timeout, status) from exc
        token = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientError("token request (getUniqueId) answered without a token")
        return token

    async def _fetch_token(self) -> str:
        return await self.grab_token(self.session, self.proxy)

    async def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text chunks as they arrive.

        The one request path: :meth:`complete` and every way of calling this (see
        :mod:`aibatch.providers.base`) come through here.

        Args:
            model: a model name (the service ignores it, but unknown names are refused);
                empty for the instance's ``model``.
            messages: the conversation, flattened by :func:`format_prompt`.
            proxy: overrides the instance's proxy for this call.
            **kwargs: ``info``, a :class:`StreamInfo` to fill.

        Raises:
            ProviderError: a subclass saying whether retrying can help.
        """
        self.get_model(model or self.model)
        info: StreamInfo = kwargs.get("info") or StreamInfo()
        prompt = format_prompt(messages)
        proxy = proxy or self.proxy
        for attempt in range(self.token_retries + 1):
            token = await self.tokens.get()
            deltas = self._get_response(prompt, token.value, proxy, info)
            try:
                async for message in deltas:
                    yield message
                return
            except TokenRejected:
                # raised before any delta: the answer starts over with a fresh token
                if not self._replace_token(token, attempt):
                    raise
            finally:
                await deltas.aclose()

    async def _get_response(
        self, prompt: str, token: str, proxy: str | None, info: StreamInfo
    ) -> AsyncGenerator[str, None]:
        """Send the chat request (the only place that does) and yield the decoded deltas.

        Raises:
            TokenRejected: the server refused ``token`` (401/403), before any delta.
            ProviderError: any other error status, a cut stream, a timeout.
        """
        body = json.dumps({"conversationId": get_random_string(), "prompt": prompt})
        lines = LineSplitter()
        try:
            async with self.session.post(
                self._chat_url,
                data=body.encode(),
                headers={**self.headers, "UniqueId": token},
                proxy=proxy,
                timeout=self.request_timeout,
            ) as response:
                info.http_status = response.status
                if response.status >= 400:
                    raise await response_error(response, "chat request", secret=token)
                # readany() until b"" is iter_any() without its iterator's cost per piece
                while data := await response.content.readany():
                    for message in _messages(lines.feed(data), info):
                        yield message
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.timeout, info.http_status) from exc
        for message in _messages(lines.close(), info):
            yield message

    def _replace_token(self, token: Token, attempt: int) -> bool:
        """Drop a rejected token; whether another may be tried in this call."""
        self.tokens.reject(token)
        log.debug("token rejected (try %d of %d)", attempt + 1, self.token_retries + 1)
        return attempt < self.token_retries


_GARBAGE = object()


def _messages(lines: list[bytes], info: StreamInfo) -> list[str]:
    """The non-empty text deltas in ``lines``; undecodable lines are counted in ``info``."""
    out = []
    for line in lines:
        message = _decode_line(line)
        if message is _GARBAGE:
            info.garbage_lines += 1
        elif message:
            out.append(message)
    return out  # type: ignore[return-value]


def _decode_line(line: bytes) -> object:
    """Return a line's ``data.message`` (``None`` for blanks and nulls) or ``_GARBAGE``."""
    if not line.strip():
        return None
    try:
        message = loads(line)["data"]["message"]
    except (ValueError, KeyError, TypeError):
        return _GARBAGE
    if message is None or isinstance(message, str):
        return message
    return _GARBAGE
