"""Providers: the services aibatch sends requests to, behind one seam.

A provider subclasses :class:`AsyncGeneratorProvider` and implements
``create_async_generator``; ``PROVIDERS`` maps the names ``--provider`` accepts to them.
"""

from __future__ import annotations

from ..errors import UnknownProviderError
from .aichatonline import AiChatOnline
from .base import AsyncGeneratorProvider, ProviderModelMixin
from .emulator import Emulator, Faults, answer_for

__all__ = [
    "PROVIDERS",
    "AiChatOnline",
    "AsyncGeneratorProvider",
    "Emulator",
    "Faults",
    "ProviderModelMixin",
    "answer_for",
    "get_provider",
]

PROVIDERS: dict[str, type[AsyncGeneratorProvider]] = {AiChatOnline.name: AiChatOnline}


def get_provider(name: str) -> type[AsyncGeneratorProvider]:
    """Return the provider class called ``name``.

    Raises:
        UnknownProviderError: no provider has that name (the message lists them).
    """
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProviderError(name, PROVIDERS) from None
