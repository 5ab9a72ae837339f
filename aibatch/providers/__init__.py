"""Providers: the services aibatch sends requests to, behind one seam.

A provider subclasses :class:`AsyncGeneratorProvider` (and :class:`ProviderModelMixin`)
and implements ``create_async_generator``. Providers are found through the entry-point
group ``aibatch.providers``; the built-in two are registered there too, and are also
known directly so that a source checkout works without installing.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from ..errors import UnknownProviderError, UsageError
from .aichatonline import AiChatOnline
from .base import AsyncGeneratorProvider, ProviderModelMixin
from .emulator import Emulator, Faults, answer_for
from .openai import OpenAIChat

__all__ = [
    "BUILTIN_PROVIDERS",
    "ENTRY_POINT_GROUP",
    "AiChatOnline",
    "AsyncGeneratorProvider",
    "Emulator",
    "Faults",
    "OpenAIChat",
    "ProviderModelMixin",
    "answer_for",
    "get_provider",
    "provider_names",
]

ENTRY_POINT_GROUP = "aibatch.providers"
BUILTIN_PROVIDERS: dict[str, type[AsyncGeneratorProvider]] = {
    AiChatOnline.name: AiChatOnline,
    OpenAIChat.name: OpenAIChat,
}


def _entry_points() -> dict[str, EntryPoint]:
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
    found = _entry_points().get(name)
    if found is None:
        if name in BUILTIN_PROVIDERS:
            return BUILTIN_PROVIDERS[name]
        raise UnknownProviderError(name, provider_names())
    try:
        provider = found.load()
    except Exception as exc:  # a plugin's import can fail in any way: say which and why
        raise UsageError(f"provider {name!r} ({found.value}) cannot be loaded: {exc}") from exc
    if not (
        isinstance(provider, type)
        and issubclass(provider, AsyncGeneratorProvider)
        and issubclass(provider, ProviderModelMixin)
    ):
        raise UsageError(
            f"provider {name!r} ({found.value}) must subclass AsyncGeneratorProvider and"
            " ProviderModelMixin"
        )
    return provider
