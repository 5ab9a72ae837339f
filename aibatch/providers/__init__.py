"""Providers: the services aibatch sends requests to, behind one seam.

A provider subclasses :class:`AsyncGeneratorProvider` and implements one method,
``create_async_generator`` (see :mod:`aibatch.providers.base`). Providers are found
through the entry-point group ``aibatch.providers``; the built-in ones are registered
there too, and are also known directly so that a source checkout works without
installing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..errors import UnknownProviderError, UsageError
from .faults import Faults

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from .aichatonline import AiChatOnline
    from .anthropic import AnthropicMessages
    from .base import AsyncGeneratorProvider, ProviderModelMixin, StreamInfo
    from .emulator import Emulator, answer_for
    from .openai import OpenAIChat

__all__ = [
    "BUILTIN_PROVIDERS",
    "ENTRY_POINT_GROUP",
    "AiChatOnline",
    "AnthropicMessages",
    "AsyncGeneratorProvider",
    "Emulator",
    "Faults",
    "OpenAIChat",
    "ProviderModelMixin",
    "StreamInfo",
    "answer_for",
    "get_provider",
    "provider_names",
]

ENTRY_POINT_GROUP = "aibatch.providers"
# "module:Class", imported when asked for: `aibatch --help` and `aibatch.providers.faults`
# (the CLI's start-up) must not import aiohttp.
BUILTIN_PROVIDERS: dict[str, str] = {
    "aichatonline": "aibatch.providers.aichatonline:AiChatOnline",
    "openai": "aibatch.providers.openai:OpenAIChat",
    "anthropic": "aibatch.providers.anthropic:AnthropicMessages",
}
_LAZY = {
    "AiChatOnline": ".aichatonline",
    "AnthropicMessages": ".anthropic",
    "AsyncGeneratorProvider": ".base",
    "ProviderModelMixin": ".base",
    "StreamInfo": ".base",
    "Emulator": ".emulator",
    "answer_for": ".emulator",
    "OpenAIChat": ".openai",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points  # 15 ms: not for `aibatch --help`

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_names() -> list[str]:
    """The names of every installed provider, sorted."""
    return sorted(set(BUILTIN_PROVIDERS) | set(_entry_points()))


def get_provider(name: str) -> type[AsyncGeneratorProvider]:
    """Return the provider class called ``name``.

    Raises:
        UnknownProviderError: no provider has that name (the message lists them).
        UsageError: the plugin of that name cannot be loaded or is not a provider.
    """
    # A built-in name is always the built-in provider: no scan of the installed packages'
    # entry points (10 ms of every run's start-up), and no plugin can take its name.
    found = None if name in BUILTIN_PROVIDERS else _entry_points().get(name)
    if found is None:
        if name in BUILTIN_PROVIDERS:
            module, _, attribute = BUILTIN_PROVIDERS[name].partition(":")
            builtin: type[AsyncGeneratorProvider] = getattr(import_module(module), attribute)
            return builtin
        raise UnknownProviderError(name, provider_names())
    from .base import AsyncGeneratorProvider

    try:
        provider = found.load()
    except Exception as exc:  # a plugin's import can fail in any way: say which and why
        raise UsageError(f"provider {name!r} ({found.value}) cannot be loaded: {exc}") from exc
    if not (isinstance(provider, type) and issubclass(provider, AsyncGeneratorProvider)):
        raise UsageError(f"provider {name!r} ({found.value}) must subclass AsyncGeneratorProvider")
    return provider
