"""The chain's dynamic per-model prices and capacities, asked at most once per processed block.

``/v1/governance/pricing`` reads them; however many requests arrive, the chain sees at most two queries
per block (prices change in BeginBlock, so a block is the finest grain that means anything).
"""

from __future__ import annotations

import asyncio

from dapi.chain.errors import ChainError
from dapi.chain.query import ChainQuery
from dapi.chain.view import ChainView


class DynamicPricing:
    """The chain's per-model prices and capacities, queried at most once per processed block."""

    def __init__(self, query: ChainQuery, view: ChainView) -> None:
        self._query = query
        self._view = view
        self._height: int | None = None
        self._value: tuple[dict[str, int], dict[str, int]] | None = None
        self._lock = asyncio.Lock()

    async def prices(self) -> tuple[dict[str, int], dict[str, int]]:
        """(price by model, capacity by model); empty prices mean dynamic pricing is off or unknown."""
        async with self._lock:
            height = self._view.snapshot.height if self._view.snapshot else None
            if self._value is not None and height is not None and height == self._height:
                return self._value
            prices = await self._query.model_per_token_prices()
            try:
                capacities = await self._query.model_capacities() if prices else {}
            except ChainError:
                capacities = {}
            self._height, self._value = height, (prices, capacities)
            return self._value
