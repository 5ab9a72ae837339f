"""What the aioresponses-based wire tests share."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
from yarl import URL


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)
