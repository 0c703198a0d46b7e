"""Dynamic prices are asked once per processed block, however many requests come."""

from __future__ import annotations

from dapi.chain.epochs import Epoch, EpochParams
from dapi.chain.pricing import DynamicPricing
from dapi.chain.view import ChainSnapshot, ChainView
from dapi.gen.inference.inference.params_pb2 import Params


class Query:
    def __init__(self) -> None:
        self.calls = 0

    async def model_per_token_prices(self) -> dict[str, int]:
        self.calls += 1
        return {"m": 10 + self.calls}

    async def model_capacities(self) -> dict[str, int]:
        self.calls += 1
        return {"m": 500}


def at(view: ChainView, height: int) -> None:
    view.update(ChainSnapshot(height=height, block_hash="AB", latest_epoch=Epoch(1, 40), params=Params(),
                              epoch_params=EpochParams(), synced=True))


async def test_one_pair_of_queries_per_block() -> None:
    query, view = Query(), ChainView()
    pricing = DynamicPricing(query, view)  # type: ignore[arg-type]
    at(view, 100)
    first = await pricing.prices()
    for _ in range(20):
        assert await pricing.prices() == first
    assert query.calls == 2 and first == ({"m": 11}, {"m": 500})
    at(view, 101)
    assert (await pricing.prices())[0] == {"m": 13} and query.calls == 4
