"""The chain's dynamic per-model prices, capacities and utilisation, asked at most once per processed block.

``/v1/governance/pricing`` reads them; however many requests arrive, the chain sees at most three queries
per block (prices change in BeginBlock, so a block is the finest grain that means anything).

Utilisation is the chain's own measure (chain-logic.md §12.1): the AI tokens of a model's inferences in
the last ``utilization_window_duration`` seconds, over what its capacity serves in that window. The
chain keys those statistics by block time in **milliseconds**; the reference API node asked with a
window in seconds, so it matched nothing and always reported 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dapi.chain.errors import ChainError
from dapi.chain.query import ChainQuery
from dapi.chain.view import ChainView
from dapi.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """What the chain's dynamic pricing says at one block; empty ``prices`` mean it is off or unknown."""

    prices: dict[str, int] = field(default_factory=dict)
    capacities: dict[str, int] = field(default_factory=dict)
    # Every model with a capacity has an entry (0.0 until statistics say otherwise), as the reference.
    utilization: dict[str, float] = field(default_factory=dict)


def utilization(tokens: int, capacity: int, window_seconds: int) -> float:
    """Share of a model's capacity (tokens per second) its inferences used over the window."""
    if capacity <= 0 or window_seconds <= 0:
        return 0.0
    return tokens / (capacity * window_seconds)


class DynamicPricing:
    """Per-block cache of the chain's dynamic prices, capacities and utilisation.

    Args:
        query: the chain query client.
        view: the daemon's chain view; its height keys the cache and its params give the window.
        clock: wall-clock seconds, for the statistics window (the chain's block time is close to it).
    """

    def __init__(self, query: ChainQuery, view: ChainView, *, clock: Callable[[], float] = time.time) -> None:
        self._query = query
        self._view = view
        self._clock = clock
        self._height: int | None = None
        self._value: ModelPrices | None = None
        self._lock = asyncio.Lock()

    async def prices(self) -> ModelPrices:
        """The chain's pricing at the last processed block; raises ChainError if the prices cannot be read."""
        async with self._lock:
            height = self._view.snapshot.height if self._view.snapshot else None
            if self._value is not None and height is not None and height == self._height:
                return self._value
            prices = await self._query.model_per_token_prices()
            capacities: dict[str, int] = {}
            usage: dict[str, float] = {}
            if prices:
                try:
                    capacities = await self._query.model_capacities()
                except ChainError as exc:
                    log.warning("model capacities not read; pricing without utilisation", error=str(exc))
                usage = await self._utilization(capacities) if capacities else {}
            self._height, self._value = height, ModelPrices(prices, capacities, usage)
            return self._value

    async def _utilization(self, capacities: dict[str, int]) -> dict[str, float]:
        usage = {model: 0.0 for model in capacities}
        snapshot = self._view.snapshot
        window = snapshot.params.dynamic_pricing_params.utilization_window_duration if snapshot else 0
        if window <= 0:
            return usage
        now_ms = int(self._clock() * 1000)
        try:
            tokens = await self._query.tokens_by_model(now_ms - window * 1000, now_ms)
        except ChainError as exc:
            log.warning("inference statistics not read; utilisation reported as 0", error=str(exc))
            return usage
        for model, capacity in capacities.items():
            usage[model] = utilization(tokens.get(model, 0), capacity, window)
        return usage
