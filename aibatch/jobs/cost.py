"""Prices, estimates and the budget: what a job costs before, during and after it runs.

- :func:`look_up_price`: USD per million input and output tokens of a model, from
  ``--input-price``/``--output-price`` or from the price table of the ``genai-prices``
  package (the ``aibatch[prices]`` extra). The table is imported only when a price is
  needed, and only its bundled data is read: aibatch never starts its updater, so no
  price is ever fetched over the network. A model is priced by its name, whatever the
  base URL serving it.
- :class:`Price`: the cost of one answer from the usage the service reported.
- :func:`request_size`, :func:`estimate`: a dry run's token counts, estimated from the
  characters (no tokenizer is downloaded), and its cost range.
- :func:`max_input_tokens`, :class:`Budget`: ``--max-cost``. Each request reserves its
  worst case before it starts and settles with its real cost when it ends; a request
  whose worst case does not fit waits for those in flight, and when none is left the
  budget is reached.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import numpy as np

from ..errors import BudgetReached, ProviderError
from ..types import ChatRequest

log = logging.getLogger(__name__)

#: what OpenAI's and Anthropic's Batch APIs charge, as a share of the live price
BATCH_SHARE = 0.5

__all__ = [
    "BATCH_SHARE",
    "CHARS_PER_TOKEN",
    "Budget",
    "Estimate",
    "Price",
    "PriceLookup",
    "Rate",
    "budget_shares",
    "estimate",
    "look_up_price",
    "max_input_tokens",
    "request_size",
]

T = TypeVar("T")

INSTALL_PRICES = "pip install 'aibatch[prices]'"
GIVE_PRICES = "set --input-price and --output-price (USD per million tokens)"
_NO_TABLE = f"no price table installed ({INSTALL_PRICES}), or {GIVE_PRICES}"
# Estimates: about 4 characters a token for English prose with the common tokenizers
# (the low end); code, numbers and other scripts take more tokens, so the high end
# counts a token for every 2 bytes of UTF-8. Each message adds a few tokens of format.
CHARS_PER_TOKEN = 4
BYTES_PER_TOKEN_HIGH = 2
FORMAT_TOKENS = 4
# The worst case: no token of a byte-level tokenizer is shorter than one byte, so a
# text's UTF-8 bytes bound its tokens; each message and the request as a whole add
# special tokens of the chat format (OpenAI counts 3 a message and 3 a reply).
MESSAGE_OVERHEAD_TOKENS = 16
REQUEST_OVERHEAD_TOKENS = 16
# genai-prices keys that a plain chat request without tools, caching requests or
# media never pays (or that lower the price); any other key makes the price unknown.
_NOT_BILLED_HERE = frozenset(
    {
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "cache_audio_read_mtok",
        "cache_image_read_mtok",
        "web_searches_kcount",
        "storage_searches_kcount",
        "input_audio_mtok",
        "output_audio_mtok",
        "audio_hours",
        "input_audio_hours",
        "input_image_mtok",
        "output_image_mtok",
        "input_video_mtok",
        "output_video_mtok",
        "input_document_kpages",
        "input_annotated_document_kpages",
    }
)
_PRICED = frozenset({"input_mtok", "output_mtok", "requests_kcount"})


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens, and the higher rates of larger prompts.

    Attributes:
        base: the rate of a prompt below every tier.
        tiers: ``(start, rate)`` pairs in ascending order: a prompt of more than
            ``start`` input tokens pays ``rate`` for all its tokens (the "cliff" the
            services use, and genai-prices).
    """

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    def at(self, input_tokens: int) -> float:
        """The rate for a request of ``input_tokens`` prompt tokens."""
        rate = self.base
        for start, price in self.tiers:
            if input_tokens <= start:
                break
            rate = price
        return rate

    def per_row(self, input_tokens: np.ndarray) -> np.ndarray:
        """:meth:`at` for many requests at once."""
        rates = np.full(len(input_tokens), self.base)
        for start, price in self.tiers:
            rates[input_tokens > start] = price
        return rates

    def __str__(self) -> str:
        return f"${self.base:g}" + (" (more for long prompts)" if self.tiers else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """A model's price.

    Attributes:
        input: USD per million prompt tokens.
        output: USD per million answer tokens.
        per_request: USD for each request, on top (a few services charge one).
        source: where the price comes from, for people.
        share: of all that, what is charged: :data:`BATCH_SHARE` through a Batch API.
    """

    input: Rate
    output: Rate
    per_request: float = 0.0
    source: str = ""
    share: float = 1.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one answer of ``output_tokens`` to a prompt of ``input_tokens``."""
        rated = input_tokens * self.input.at(input_tokens)
        rated += output_tokens * self.output.at(input_tokens)
        return (rated / 1e6 + self.per_request) * self.share

    def total(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> float:
        """USD for many answers, each priced on its own (tiers go by each prompt)."""
        if not len(input_tokens):
            return 0.0
        rated = input_tokens * self.input.per_row(input_tokens)
        rated += output_tokens * self.output.per_row(input_tokens)
        return float(math.fsum((rated / 1e6 + self.per_request).tolist())) * self.share

    def answer_cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """:meth:`cost` of an answer; ``None`` when the service reported no usage."""
        if prompt_tokens is None or completion_tokens is None:
            return None
        return self.cost(prompt_tokens, completion_tokens)

    def describe(self) -> str:
        """The price in a few words, with its source."""
        fee = f" + ${self.per_request:g} a request" if self.per_request else ""
        share = f", {self.share:g} of it through the Batch API" if self.share != 1 else ""
        return (
            f"{self.input} input, {self.output} output per million tokens{fee}{share}"
            f" ({self.source})"
        )


@dataclass(frozen=True, slots=True)
class PriceLookup:
    """A model's price, or why it has none.

    Attributes:
        price: the price; ``None`` when unknown (costs are then null, never 0).
        note: where the price comes from, or why it is unknown and how to give one.
    """

    price: Price | None
    note: str


def look_up_price(
    model: str,
    *,
    input_price: float | None = None,
    output_price: float | None = None,
    batch: bool = False,
) -> PriceLookup:
    """The price of ``model``: the overrides, else the genai-prices table.

    An override replaces the table's rate for its side (tiers included); with both
    given the table is not read at all, so a local model or a private price needs no
    table. ``batch``: the price through the provider's Batch API (:data:`BATCH_SHARE`
    of the live one; the overrides are live prices too).
    """
    lookup = _look_up(model, input_price, output_price)
    if not batch or lookup.price is None:
        return lookup
    price = dataclasses.replace(lookup.price, share=BATCH_SHARE)
    return PriceLookup(price, price.describe())


def _look_up(model: str, input_price: float | None, output_price: float | None) -> PriceLookup:
    if input_price is not None and output_price is not None:
        price = Price(
            input=Rate(input_price),
            output=Rate(output_price),
            source="--input-price/--output-price",
        )
        return PriceLookup(price, price.describe())
    found = _table_price(model)
    if isinstance(found, str):
        given = "--input-price" if input_price is not None else "--output-price"
        if input_price is not None or output_price is not None:
            found += f"; {given} alone prices one side only"
        return PriceLookup(None, f"cost unknown: {found}")
    if input_price is not None:
        found = Price(
            input=Rate(input_price),
            output=found.output,
            per_request=found.per_request,
            source=f"--input-price, and {found.source}",
        )
    if output_price is not None:
        found = Price(
            input=found.input,
            output=Rate(output_price),
            per_request=found.per_request,
            source=f"--output-price, and {found.source}",
        )
    return PriceLookup(found, found.describe())


def _table_price(model: str) -> Price | str:
    """The genai-prices price of ``model`` now, or why there is none.

    An answer that cannot change with time is kept on disk for the installed table
    (:mod:`.price_cache`): a later run pricing the model does not import genai-prices.
    """
    from .price_cache import PriceCache  # not at the top: it imports Price and Rate

    cache = PriceCache.open()
    if not cache.installed:
        return _NO_TABLE
    found = cache.get(model)
    if found is None:
        found, lasts = _read_table(model)
        if lasts:
            cache.put(model, found)
    return found


def _read_table(model: str) -> tuple[Price | str, bool]:
    """:func:`_table_price` from the table itself, and whether that answer lasts."""
    from .price_cache import lasting

    try:
        import genai_prices
        from genai_prices import data_snapshot
        from genai_prices.types import TieredPrices
    except ImportError:
        return _NO_TABLE, False  # a broken install may be mended without changing it
    table = f"genai-prices {genai_prices.__version__}"
    try:
        provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return f"{table} has no price for model {model!r}; {GIVE_PRICES}", True
    lasts = lasting(info)
    prices = info.get_prices(datetime.now(UTC))
    keys = {key for key, value in vars(prices).items() if value is not None}
    unknown = sorted(keys - _PRICED - _NOT_BILLED_HERE)
    if unknown or prices.input_mtok is None or prices.output_mtok is None:
        what = f" (also {', '.join(unknown)})" if unknown else ""
        why = f"{table} does not price model {model!r} by its tokens{what}; {GIVE_PRICES}"
        return why, lasts

    def rate(value: Any) -> Rate:
        if isinstance(value, TieredPrices):
            tiers = tuple((int(t.start), float(t.price)) for t in value.tiers)
            return Rate(float(value.base), tiers)
        return Rate(float(value))

    requests = prices.requests_kcount
    price = Price(
        input=rate(prices.input_mtok),
        output=rate(prices.output_mtok),
        per_request=rate(requests).base / 1000 if requests is not None else 0.0,
        source=f"{table}: {provider.id} {info.id}",
    )
    return price, lasts


def request_size(request: ChatRequest) -> tuple[int, int, int, int]:
    """Characters, UTF-8 bytes and messages of ``request``, and its :func:`max_input_tokens`."""
    chars = size = 0
    for message in request.messages:
        chars += len(message.content)
        size += len(message.content.encode("utf-8", "surrogatepass"))
    return chars, size, len(request.messages), max_input_tokens(request)


def max_input_tokens(request: ChatRequest) -> int:
    """An upper bound of the prompt tokens a service can bill for ``request``.

    Every token of a byte-level tokenizer is at least one byte of the text, so the
    UTF-8 bytes of each message's content and role bound its tokens; the chat format's
    own tokens are bounded by :data:`MESSAGE_OVERHEAD_TOKENS` a message.
    """
    tokens = REQUEST_OVERHEAD_TOKENS
    for message in request.messages:
        tokens += len(message.content.encode("utf-8", "surrogatepass"))
        tokens += len(message.role) + MESSAGE_OVERHEAD_TOKENS
    return tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """What a dry run expects the rows it would send to use and cost.

    Attributes:
        input_tokens: the prompts' tokens in all, low and high, estimated from the
            characters (:data:`CHARS_PER_TOKEN`, :data:`BYTES_PER_TOKEN_HIGH`).
        output_tokens: expected answer tokens a row: ``--max-tokens``, else the
            assumption ``--expected-output-tokens``.
        output_assumed: ``output_tokens`` is the assumption, not ``--max-tokens``.
        cost_usd: the cost range, low and high; ``None`` when the price is unknown.
        worst_case_usd: the cost if every prompt took a token per byte and every answer
            ``--max-tokens`` (what ``--max-cost`` reserves); ``None`` without
            ``--max-tokens`` or a price.
        price_note: the price and its source, or why it is unknown.
    """

    input_tokens: tuple[int, int]
    output_tokens: int
    output_assumed: bool
    cost_usd: tuple[float, float] | None
    worst_case_usd: float | None
    price_note: str
    counted: str = "estimated from characters"

    @property
    def estimated_cost_usd(self) -> float | None:
        """The middle of the cost range."""
        return None if self.cost_usd is None else (self.cost_usd[0] + self.cost_usd[1]) / 2

    def to_dict(self) -> dict[str, Any]:
        """The estimate as JSON-ready values."""
        low, high = self.cost_usd if self.cost_usd is not None else (None, None)
        return {
            "input_tokens_low": self.input_tokens[0],
            "input_tokens_high": self.input_tokens[1],
            "input_tokens_counted": self.counted,
            "output_tokens_per_row": self.output_tokens,
            "output_tokens_assumed": self.output_assumed,
            "cost_low_usd": low,
            "cost_high_usd": high,
            "estimated_cost_usd": self.estimated_cost_usd,
            "worst_case_usd": self.worst_case_usd,
            "price": self.price_note,
        }


def estimate(
    lookup: PriceLookup,
    sizes: np.ndarray,
    *,
    max_tokens: int | None,
    expected_output_tokens: int,
) -> Estimate:
    """The tokens and cost of sending rows of ``sizes`` (:func:`request_size` rows).

    Args:
        lookup: the model's price.
        sizes: an ``(n, 4)`` integer array, a :func:`request_size` a row.
        max_tokens: the job's ``--max-tokens``.
        expected_output_tokens: the answer length assumed without ``max_tokens``.
    """
    sizes = sizes.reshape(-1, 4).astype(np.int64)
    chars, size, messages, bound = sizes[:, 0], sizes[:, 1], sizes[:, 2], sizes[:, 3]
    overhead = messages * FORMAT_TOKENS
    low = -(-chars // CHARS_PER_TOKEN) + overhead
    high = np.maximum(-(-size // BYTES_PER_TOKEN_HIGH) + overhead, low)
    output = max_tokens if max_tokens is not None else expected_output_tokens
    answers = np.full(len(sizes), output, np.int64)
    price = lookup.price
    cost = None if price is None else (price.total(low, answers), price.total(high, answers))
    worst = None
    if price is not None and max_tokens is not None:
        worst = price.total(bound, answers)
    return Estimate(
        input_tokens=(int(low.sum()), int(high.sum())),
        output_tokens=output,
        output_assumed=max_tokens is None,
        cost_usd=cost,
        worst_case_usd=worst,
        price_note=lookup.note,
    )


def budget_shares(limit: float, weights: Sequence[int]) -> list[float]:
    """``limit`` split in proportion to ``weights`` (rows), never adding up to more.

    Each share is cut by a billionth, so that rounding cannot make their sum pass
    ``limit``.
    """
    total = sum(weights)
    if total <= 0:
        return [limit / len(weights) * (1 - 1e-9)] * len(weights) if weights else []
    return [limit * weight / total * (1 - 1e-9) for weight in weights]


class Budget:
    """A spending cap: no request starts unless its worst case fits.

    A request reserves its worst case before it starts (:meth:`reserve`) and settles
    with what it really cost when it ends (:meth:`settle`). One whose worst case does
    not fit beside the reservations in flight waits for them to settle; when nothing is
    in flight and it still does not fit, the budget is reached: that request and every
    later one raise
    :class:`BudgetReached`.

    Args:
        limit: USD the run may spend.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0  # settled
        self.held = 0.0  # reserved by requests in flight
        self.in_flight = 0
        self.reached = False
        self._settled = anyio.Event()

    def __repr__(self) -> str:
        return f"Budget(limit={self.limit}, spent={self.spent}, held={self.held})"

    def _reached(self) -> BudgetReached:
        return BudgetReached(self.limit, self.spent)

    async def reserve(self, amount: float) -> None:
        """Hold ``amount`` for a request about to start, waiting for room if need be.

        Raises:
            BudgetReached: it cannot fit, even with nothing else in flight.
        """
        while True:
            if self.reached:
                raise self._reached()
            if self.spent + self.held + amount <= self.limit:
                self.held += amount
                self.in_flight += 1
                return
            if self.in_flight == 0:
                self.reached = True
                self._wake()  # every request waiting for room stops too
                raise self._reached()
            await self._settled.wait()

    def hold(self, amount: float, *, already: bool = False) -> bool:
        """Hold ``amount`` for a Batch API request now, without waiting for room.

        Its answer may take hours: there is no waiting here for others to settle.
        ``False`` if it does not fit beside what is spent and held; then, with nothing
        held, the budget is reached.
        ``already``: the request was submitted by an earlier run; hold it whatever.
        Released by :meth:`release`.
        """
        if not already and (self.reached or self.spent + self.held + amount > self.limit):
            if self.held <= 0:  # nothing to wait for: no room will come
                self.reached = True
            return False
        self.held += amount
        return True

    def release(self, held: float, cost: float) -> None:
        """Release what :meth:`hold` held for requests that cost ``cost`` in all."""
        self.held = max(self.held - held, 0.0)
        self.spent += cost

    def reached_error(self) -> BudgetReached:
        """The error saying the budget is reached."""
        return self._reached()

    def settle(self, held: float, cost: float) -> None:
        """Release the ``held`` reservation of a request that cost ``cost``."""
        self.in_flight -= 1
        self.held = self.held - held if self.in_flight else 0.0
        self.spent += cost
        if cost > held:
            log.warning(
                "an answer cost $%g, more than its worst case $%g: does the service honour"
                " max_tokens?",
                cost,
                held,
            )
        self._wake()

    def _wake(self) -> None:
        event, self._settled = self._settled, anyio.Event()
        event.set()

    def charging(
        self, attempt: Callable[[], Awaitable[T]], worst: float, costs: list[float | None]
    ) -> Callable[[], Awaitable[T]]:
        """``attempt`` (one request) run within a reservation of ``worst``.

        ``attempt`` appends the cost of each answer it gets to ``costs`` (``None`` for
        an answer without usage); the reservation settles with those costs, an unknown
        one counted at ``worst``. An attempt that got no answer settles at 0 when the
        service refused it with an HTTP error status (nothing was billed), else at
        ``worst``: a stream cut mid-way or a request cancelled in flight may be billed.
        """

        async def charged() -> T:
            await self.reserve(worst)
            answered = len(costs)
            refused = False
            try:
                return await attempt()
            except ProviderError as exc:
                refused = exc.http_status is not None and exc.http_status >= 400
                raise
            finally:
                answers = costs[answered:]
                if answers:
                    cost = math.fsum(worst if c is None else c for c in answers)
                else:
                    cost = 0.0 if refused else worst
                self.settle(worst, cost)

        return charged
