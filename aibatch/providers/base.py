"""The provider contract: :class:`AsyncGeneratorProvider`.

A provider is one class with one method to implement, ``create_async_generator(model,
messages, proxy=None, **kwargs)``: an async generator of the answer's text chunks that
raises :mod:`aibatch.errors` types. Everything else is built on that one method here,
for plugins and the built-in providers alike:

- :meth:`AsyncGeneratorProvider.complete`, what the engine calls: the whole answer, the
  time to its first chunk, an empty answer refused;
- the three ways to call ``create_async_generator``: on an instance inside ``async
  with`` (one HTTP session, and one token, for a whole batch), on an instance outside
  it (a session opened and closed for that one call), or, as in gpt4free, on the class
  (a provider made for that one call).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import FunctionType, MethodType, TracebackType
from typing import Any, ClassVar, Self

import aiohttp

from ..errors import TransientError, UnknownModelError, UsageError
from ..types import ChatRequest, Completion
from .helpers import format_prompt, with_schema

__all__ = ["AsyncGeneratorProvider", "ProviderModelMixin", "StreamInfo"]

DEFAULT_TIMEOUT = 120.0

Generate = Callable[..., AsyncGenerator[str, None]]


@dataclass(slots=True)
class StreamInfo:
    """What a provider learned about one response besides its text.

    :meth:`AsyncGeneratorProvider.complete` passes one as the ``info`` keyword argument
    of ``create_async_generator``, which fills what it knows.
    """

    http_status: int | None = None
    garbage_lines: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


def whole_answer(text: str | None, info: StreamInfo, ttfb_ms: float | None = None) -> Completion:
    """The :class:`Completion` of an answer's whole ``text`` and what ``info`` learned.

    Raises:
        TransientError: the answer is empty.
    """
    if not text:
        detail = f" ({info.garbage_lines} undecodable lines)" if info.garbage_lines else ""
        raise TransientError(f"empty answer{detail}", http_status=info.http_status)
    return Completion(
        text=text,
        ttfb_ms=ttfb_ms,
        http_status=info.http_status,
        garbage_lines=info.garbage_lines,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        finish_reason=info.finish_reason,
    )


class ProviderModelMixin:
    """gpt4free's name for the model attributes, kept so its class lines still work.

    ``default_model``, ``models``, ``model_aliases`` and ``get_model`` now live on
    :class:`AsyncGeneratorProvider` itself; subclassing this as well adds nothing.
    """


class _CreateAsyncGenerator:
    """Makes a provider's ``create_async_generator`` callable on its class or an instance.

    Inside ``async with`` (or given a session) it is the provider's own method, with
    nothing in between. Outside, a call keeps a session open around itself (calls that
    overlap share one; the last to end closes it). On the class, a call makes a provider
    of its own.
    """

    def __init__(self, func: Generate) -> None:
        self.func = func
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __get__(
        self, instance: AsyncGeneratorProvider | None, owner: type[AsyncGeneratorProvider]
    ) -> Generate:
        if instance is None:
            return functools.partial(_call_on_class, owner, self.func)
        if instance._held():
            return MethodType(self.func, instance)
        return functools.partial(_call_outside, instance, self.func)


async def _call_outside(
    provider: AsyncGeneratorProvider, func: Generate, /, *args: Any, **kwargs: Any
) -> AsyncGenerator[str, None]:
    provider._calls += 1
    try:
        async with provider, aclosing(func(provider, *args, **kwargs)) as stream:
            async for chunk in stream:
                yield chunk
    finally:
        provider._calls -= 1


async def _call_on_class(
    cls: type[AsyncGeneratorProvider], func: Generate, /, *args: Any, **kwargs: Any
) -> AsyncGenerator[str, None]:
    async with cls() as provider, aclosing(func(provider, *args, **kwargs)) as stream:
        async for chunk in stream:
            yield chunk


class AsyncGeneratorProvider:
    """Base class of providers: an async resource owning one ``aiohttp.ClientSession``.

    Args:
        model: the model of calls that name none (default: :attr:`default_model`).
        base_url: API base address; each provider has a default.
        proxy: proxy URL passed to aiohttp for every request.
        session: an open session to use instead of creating one (the caller closes it).
        concurrency: requests the caller will have in flight; sizes the connection pool.
        timeout: seconds one attempt may take, from sending to the last chunk.
        api_key: the credential, for providers with an :attr:`api_key_env` (never shown).
        stream: ask for a streamed answer (where :attr:`can_disable_stream`).

    Raises:
        UnknownModelError: ``model`` is not one the provider lists.
    """

    name: ClassVar[str] = ""
    url: ClassVar[str] = ""
    working: ClassVar[bool] = True
    default_model: ClassVar[str] = ""
    #: the models served; empty: whatever the server serves
    models: ClassVar[Sequence[str]] = ()
    model_aliases: ClassVar[Mapping[str, str]] = {}
    #: environment variable that holds the API key, for providers that take one
    api_key_env: ClassVar[str | None] = None
    #: request options (``--temperature`` and the like) the provider sends
    sampling_options: ClassVar[frozenset[str]] = frozenset()
    #: inclusive ``(low, high)`` bounds of sampling options narrower than the job's own
    #: (``temperature`` 0 to 1 for Anthropic): refused before anything is sent
    sampling_bounds: ClassVar[Mapping[str, tuple[float, float]]] = {}
    #: whether ``--no-stream`` (one plain JSON answer) is possible
    can_disable_stream: ClassVar[bool] = False
    #: whether answers carry token usage (``StreamInfo`` prompt and completion tokens):
    #: costs are known, and ``--max-cost`` possible, only then
    reports_usage: ClassVar[bool] = False
    #: whether the provider asks for structured output itself: its generator then takes
    #: ``response_schema`` (JSON text) and ``json_mode``; otherwise the schema is
    #: appended to the prompt as an instruction (:func:`~.helpers.with_schema`)
    structured_output: ClassVar[bool] = False
    #: whether the provider sends images (``--image-column``): its messages' ``content``
    #: is then a list of parts, the text and ``image_url`` parts (``Message.to_dict``)
    takes_images: ClassVar[bool] = False
    #: the provider has a Batch API (``--batch-api``): see :mod:`aibatch.providers.batch`
    batch_api: ClassVar[bool] = False
    #: values the provider sends for options the job leaves unset (in the output metadata)
    request_defaults: ClassVar[Mapping[str, object]] = {}
    #: the provider's own ``create_async_generator``, unwrapped (set for each subclass)
    _generate: ClassVar[Generate]

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        proxy: str | None = None,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        timeout: float | None = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        stream: bool = True,
    ) -> None:
        self.model = self.get_model(model)
        self.base_url = (base_url or self.url).rstrip("/")
        self._api_key = api_key
        self.stream = stream
        self.proxy = proxy
        self.concurrency = concurrency
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._users = 0  # `async with` blocks open, the calls' own included
        self._calls = 0  # calls made outside `async with`, in flight
        self.request_timeout = aiohttp.ClientTimeout(total=timeout)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("create_async_generator")
        if own is None or isinstance(own, _CreateAsyncGenerator):
            return
        if not isinstance(own, FunctionType):  # gpt4free's is a classmethod
            raise TypeError(
                f"{cls.__qualname__}.create_async_generator must be a plain method"
                " (an async generator taking self), not a classmethod or staticmethod"
            )
        cls._generate = own
        # (type.__setattr__: the type checker will not let a method be assigned to)
        type.__setattr__(cls, "create_async_generator", _CreateAsyncGenerator(own))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @classmethod
    def get_model(cls, model: str | None = None) -> str:
        """Resolve ``model`` (or the default when empty) through the aliases.

        Raises:
            UnknownModelError: the provider lists its models and ``model`` is not one.
        """
        if not model:
            return cls.default_model
        model = cls.model_aliases.get(model, model)
        if cls.models and model not in cls.models:
            raise UnknownModelError(model, [*cls.models, *cls.model_aliases])
        return model

    def _held(self) -> bool:
        """Whether someone besides the calls themselves keeps the session open."""
        return not self._owns_session or self._users > self._calls

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open HTTP session (during a call, or inside ``async with``)."""
        if self._session is None:
            raise RuntimeError(f"use 'async with {type(self).__name__}(...)' before sending")
        return self._session

    async def __aenter__(self) -> Self:
        # Counted, so that calls made outside `async with` can share one session while
        # they overlap, and nesting is harmless: the last one out closes it.
        self._users += 1
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=max(self.concurrency, 1), limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this provider instance (token requests and the like)."""
        return {}

    def render(self, request: ChatRequest) -> str:
        """The text recorded as ``sent_prompt`` for ``request``.

        By default the conversation flattened as :func:`format_prompt` does (the one
        message's text for a single message); a provider that sends something else says
        what by overriding this.
        """
        return format_prompt(self._messages(request))

    def _messages(self, request: ChatRequest) -> list[dict[str, str]]:
        """The messages sent: with the schema as an instruction where it is not native."""
        messages = request.message_dicts
        if request.schema is not None and not self.structured_output:
            return with_schema(messages, request.schema)
        return messages

    def call_args(self, request: ChatRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and keyword options ``request`` is sent with."""
        options = dict(request.options)
        if request.schema is not None and self.structured_output:
            options["response_schema"] = request.schema
            options["json_mode"] = request.json_mode
        return self._messages(request), options

    def batch_body(self, request: ChatRequest) -> dict[str, Any]:
        """The body of ``request`` as one request of the provider's Batch API.

        Raises:
            UsageError: the provider has no Batch API (:attr:`batch_api` is false).
        """
        raise UsageError(f"the {self.name or type(self).__name__} provider has no batch API")

    def batch_answer(self, body: dict[str, Any], *, schema: bool = False) -> Completion:
        """The answer in one result of the provider's Batch API (``body``: the answer).

        Raises:
            ProviderError: the answer is an error, or empty.
        """
        raise UsageError(f"the {self.name or type(self).__name__} provider has no batch API")

    def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer to ``messages`` as text chunks: the one method to implement.

        Args:
            model: the model asked for; empty for the provider's (see :meth:`get_model`).
            messages: the conversation, ``{"role", "content"}`` mappings.
            proxy: a proxy for this call (else :attr:`proxy`).
            **kwargs: the request options the provider declares in
                :attr:`sampling_options`, and ``info``, a :class:`StreamInfo` to fill.

        Raises:
            ProviderError: a subclass saying whether retrying can help.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement it")

    _generate = create_async_generator

    async def complete(self, request: ChatRequest) -> Completion:
        """Send ``request`` once and return the whole answer.

        The deadline of an attempt (``timeout``) is the provider's to enforce: those on
        aiohttp pass :attr:`request_timeout` with each request, which is far cheaper
        than a cancel scope per request.

        Raises:
            TransientError: an empty answer.
            ProviderError: whatever ``create_async_generator`` raised.
        """
        info = StreamInfo()
        messages, options = self.call_args(request)
        if self._held():
            # The engine's hot path: the provider's own generator, nothing in between.
            # It always runs to its end or raises, so it needs no aclosing.
            stream = self._generate(request.model, messages, info=info, **options)
        else:  # outside `async with`: a session for this call
            stream = _call_outside(
                self,
                type(self)._generate,
                request.model,
                messages,
                info=info,
                **options,
            )
        chunks: list[str] = []
        ttfb: float | None = None
        start = time.perf_counter()
        async for chunk in stream:
            if ttfb is None:
                ttfb = (time.perf_counter() - start) * 1000.0
            chunks.append(chunk)
        return whole_answer("".join(chunks), info, ttfb)
