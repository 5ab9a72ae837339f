"""Memory-stream sends and receives that only yield to the event loop when they must.

anyio's memory streams yield to the event loop on every call, even when they need not
wait; at thousands of rows a second those extra loop turns cost more than the rest of
the engine. These take the fast path first and only await when they must.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["receive", "send"]

T = TypeVar("T")


async def send(stream: MemoryObjectSendStream[T], item: T) -> None:
    """Send ``item``, waiting only when the stream is full."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive(stream: MemoryObjectReceiveStream[T]) -> T:
    """Receive an item, waiting only when the stream is empty.

    Raises:
        anyio.EndOfStream: the stream is closed and empty.
    """
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()
