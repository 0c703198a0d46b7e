"""Dynamic prices are asked once per processed block, however many requests come; utilisation is the
chain's measure over a window in milliseconds."""

from __future__ import annotations

from dapi.chain.epochs import Epoch, EpochParams
from dapi.chain.errors import ChainUnavailable
from dapi.chain.pricing import DynamicPricing, ModelPrices, utilization
from dapi.chain.view import ChainSnapshot, ChainView
from dapi.gen.inference.inference.params_pb2 import DynamicPricingParams, Params

NOW = 1_760_000_000.5  # seconds; the chain keys statistics by block time in ms


class Query:
    """The three pricing queries of a chain, counted; the statistics answer only a window in ms."""

    def __init__(self, tokens: dict[str, int] | None = None) -> None:
        self.calls = 0
        self.tokens = tokens or {}
        self.windows: list[tuple[int, int]] = []
        self.stats_error: Exception | None = None

    async def model_per_token_prices(self) -> dict[str, int]:
        self.calls += 1
        return {"m": 10 + self.calls}

    async def model_capacities(self) -> dict[str, int]:
        self.calls += 1
        return {"m": 500, "idle": 100}

    async def tokens_by_model(self, time_from_ms: int, time_to_ms: int) -> dict[str, int]:
        self.calls += 1
        self.windows.append((time_from_ms, time_to_ms))
        if self.stats_error is not None:
            raise self.stats_error
        # As the chain: entries are keyed in ms, so a window given in seconds would find nothing.
        return self.tokens if time_from_ms > 10**12 else {}


def at(view: ChainView, height: int, window: int = 60) -> None:
    params = Params(dynamic_pricing_params=DynamicPricingParams(utilization_window_duration=window))
    view.update(ChainSnapshot(height=height, block_hash="AB", latest_epoch=Epoch(1, 40), params=params,
                              epoch_params=EpochParams(), synced=True))


async def test_one_set_of_queries_per_block() -> None:
    query, view = Query(), ChainView()
    pricing = DynamicPricing(query, view, clock=lambda: NOW)  # type: ignore[arg-type]
    at(view, 100)
    first = await pricing.prices()
    for _ in range(20):
        assert await pricing.prices() == first
    assert query.calls == 3 and first.prices == {"m": 11} and first.capacities == {"m": 500, "idle": 100}
    at(view, 101)
    assert (await pricing.prices()).prices == {"m": 14} and query.calls == 6


async def test_utilization_is_tokens_over_capacity_times_window_in_ms() -> None:
    # 60 s window, capacity 500 tokens/s: 30,000 tokens in the window is capacity x 60 s x 1.0; 7,500 is 0.25.
    query, view = Query({"m": 7_500}), ChainView()
    pricing = DynamicPricing(query, view, clock=lambda: NOW)  # type: ignore[arg-type]
    at(view, 100)
    result = await pricing.prices()
    assert query.windows == [(1_759_999_940_500, 1_760_000_000_500)]
    assert result.utilization == {"m": 0.25, "idle": 0.0}


async def test_every_model_with_a_capacity_reports_zero_when_statistics_are_missing() -> None:
    query, view = Query({"m": 7_500}), ChainView()
    query.stats_error = ChainUnavailable("stats down")
    pricing = DynamicPricing(query, view, clock=lambda: NOW)  # type: ignore[arg-type]
    at(view, 100)
    assert (await pricing.prices()).utilization == {"m": 0.0, "idle": 0.0}
    at(view, 101, window=0)  # no window in params: utilisation stays 0 and no statistics are asked
    before = len(query.windows)
    assert (await pricing.prices()).utilization == {"m": 0.0, "idle": 0.0}
    assert len(query.windows) == before


def test_utilization_formula() -> None:
    assert utilization(30_000, 500, 60) == 1.0
    assert utilization(100, 0, 60) == 0.0
    assert utilization(100, 10, 0) == 0.0
    assert ModelPrices().utilization == {}
