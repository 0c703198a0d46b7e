"""Public API shapes (reference/http.md §1) served from memory: the epoch cache and the chain view."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dapi.chain.epochs import Epoch
from dapi.chain.errors import ChainNotFound, ChainUnavailable
from dapi.chain.pricing import ModelPrices
from dapi.chain.view import ChainSnapshot, ChainView, epoch_params_from_proto
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.params_pb2 import Decimal, EpochParams, Params
from dapi.gen.inference.inference.pocbatch_pb2 import PoCBatch, PoCBatchesWithParticipants
from dapi.metrics import Metrics
from dapi.runtime.serving import start_server
from dapi.server.public.app import create_public_app

QWEN = Model(id="Qwen/Qwen2.5-7B-Instruct", units_of_compute_per_token=100, hf_repo="Qwen/Qwen2.5-7B-Instruct",
             model_args=["--quantization", "fp8"], v_ram=24, throughput_per_nonce=1000,
             validation_threshold=Decimal(value=85, exponent=-2))
QWQ = Model(id="Qwen/QwQ-32B", units_of_compute_per_token=1000, v_ram=80, throughput_per_nonce=2000)


@dataclass
class Cache:
    """The read side of the broker's epoch cache, as plain data."""

    effective: Sequence[Model] = ()
    unit_of_compute_price: int = 0
    governance: Sequence[Model] = ()
    version: int = 0

    def models(self) -> Sequence[Model]:
        return self.effective

    def governance_models(self) -> Sequence[Model]:
        return self.governance


@dataclass
class Pricing:
    answer: ModelPrices | Exception = field(default_factory=ModelPrices)
    calls: int = 0

    async def prices(self) -> ModelPrices:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@dataclass
class Batches:
    answer: list[PoCBatchesWithParticipants] | Exception
    asked: list[int] = field(default_factory=list)

    async def __call__(self, height: int) -> list[PoCBatchesWithParticipants]:
        self.asked.append(height)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def params() -> Params:
    return Params(epoch_params=EpochParams(epoch_length=40, poc_stage_duration=6, poc_exchange_duration=2,
                                           poc_validation_delay=1, poc_validation_duration=4,
                                           set_new_validators_delay=2, default_unit_of_compute_price=100))


@dataclass
class World:
    cache: Cache = field(default_factory=Cache)
    view: ChainView = field(default_factory=ChainView)
    pricing: Pricing = field(default_factory=Pricing)
    batches: Batches = field(default_factory=lambda: Batches([]))
    metrics: Metrics = field(default_factory=Metrics)


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    w = World()
    app = create_public_app(cache=w.cache, chain=w.view, status=lambda: {"chain": {"synced": True}},
                            poc_batches=w.batches, dynamic_pricing=w.pricing, metrics=w.metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://public") as client:
        yield w, client


async def test_models_are_the_effective_epoch_snapshots(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    assert (await client.get("/v1/models")).json() == {"models": []}  # never null
    w.cache.effective, w.cache.version = (QWEN, QWQ), 1
    body = (await client.get("/v1/models")).json()
    assert body == {"models": [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "units_of_compute_per_token": 100, "hf_repo": "Qwen/Qwen2.5-7B-Instruct",
         "model_args": ["--quantization", "fp8"], "v_ram": 24, "throughput_per_nonce": 1000,
         "validation_threshold": {"value": 85, "exponent": -2}},
        {"id": "Qwen/QwQ-32B", "units_of_compute_per_token": 1000, "v_ram": 80, "throughput_per_nonce": 2000},
    ]}


async def test_rendered_bytes_follow_the_cache_version(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    w.cache.effective, w.cache.version = (QWEN,), 1
    assert len((await client.get("/v1/models")).json()["models"]) == 1
    w.cache.effective = (QWEN, QWQ)  # same version: the cached bytes stay (the cache bumps on every change)
    assert len((await client.get("/v1/models")).json()["models"]) == 1
    w.cache.version = 2
    assert len((await client.get("/v1/models")).json()["models"]) == 2


async def test_pricing_multiplies_units_by_the_epoch_price(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    assert (await client.get("/v1/pricing")).json() == {"unit_of_compute_price": 0, "models": [],
                                                        "dynamic_pricing_enabled": False}
    w.cache.effective, w.cache.unit_of_compute_price, w.cache.version = (QWEN, QWQ), 7, 1
    assert (await client.get("/v1/pricing")).json() == {
        "unit_of_compute_price": 7,
        "models": [
            {"id": "Qwen/Qwen2.5-7B-Instruct", "units_of_compute_per_token": 100, "price_per_token": 700},
            {"id": "Qwen/QwQ-32B", "units_of_compute_per_token": 1000, "price_per_token": 7000},
        ],
        "dynamic_pricing_enabled": False,
    }


async def test_governance_models_and_legacy_pricing(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    w.cache.effective, w.cache.governance, w.cache.unit_of_compute_price, w.cache.version = (QWEN,), (QWEN, QWQ), 3, 1
    governance = (await client.get("/v1/governance/models")).json()
    assert [m["id"] for m in governance["models"]] == ["Qwen/Qwen2.5-7B-Instruct", "Qwen/QwQ-32B"]
    pricing = (await client.get("/v1/governance/pricing")).json()
    assert pricing == {"unit_of_compute_price": 3, "dynamic_pricing_enabled": False, "models": [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "units_of_compute_per_token": 100, "price_per_token": 300},
        {"id": "Qwen/QwQ-32B", "units_of_compute_per_token": 1000, "price_per_token": 3000}]}


async def test_governance_pricing_uses_dynamic_prices_when_the_chain_has_them(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    w.cache.governance, w.cache.unit_of_compute_price, w.cache.version = (QWEN, QWQ), 3, 1
    w.pricing.answer = ModelPrices({"Qwen/QwQ-32B": 4242}, {"Qwen/QwQ-32B": 9000}, {"Qwen/QwQ-32B": 0.25})
    pricing = (await client.get("/v1/governance/pricing")).json()
    assert pricing["dynamic_pricing_enabled"] is True
    assert pricing["models"] == [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "units_of_compute_per_token": 100, "price_per_token": 300},
        {"id": "Qwen/QwQ-32B", "units_of_compute_per_token": 1000, "price_per_token": 4242, "capacity": 9000,
         "utilization": 0.25}]
    w.pricing.answer = ChainUnavailable("down")
    fallback = (await client.get("/v1/governance/pricing")).json()
    assert fallback["dynamic_pricing_enabled"] is False and fallback["models"][1]["price_per_token"] == 3000


async def test_latest_epoch_from_the_last_processed_block(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    early = await client.get("/v1/epochs/latest")
    assert early.status_code == 503 and "no block processed" in early.json()["error"]
    p = params()
    w.view.update(ChainSnapshot(height=83, block_hash="AB", latest_epoch=Epoch(2, 80), params=p,
                                epoch_params=epoch_params_from_proto(p), synced=True))
    body = (await client.get("/v1/epochs/latest")).json()
    assert body["block_height"] == 83 and body["latest_epoch"] == {"index": 2, "poc_start_block_height": 80}
    assert body["phase"] == "PoCGenerate"
    assert body["epoch_stages"]["poc_start"] == 80 and body["epoch_stages"]["poc_generation_end"] == 86
    assert body["epoch_stages"]["poc_exchange_window"] == {"start": 81, "end": 88}
    assert body["next_epoch_stages"]["epoch_index"] == 3 and body["next_epoch_stages"]["poc_start"] == 120
    assert body["epoch_params"]["epoch_length"] == 40 and "epoch_shift" not in body["epoch_params"]
    bad = await client.get("/v1/epochs/3")
    assert bad.status_code == 400 and bad.json()["error"].startswith("Only getting info")


async def test_poc_batches_by_stage_height(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    w.batches.answer = [PoCBatchesWithParticipants(participant="gonka1p", pub_key="AQ==", hex_pub_key="01", poc_batch=[
        PoCBatch(participant_address="gonka1p", poc_stage_start_block_height=80, nonces=[1, 2], dist=[0.1, 0.2],
                 batch_id="b", node_id="n1")])]
    body = (await client.get("/v1/poc-batches/80")).json()
    assert w.batches.asked == [80]
    assert body == {"poc_batch": [{"participant": "gonka1p", "pub_key": "AQ==", "hex_pub_key": "01", "poc_batch": [
        {"participant_address": "gonka1p", "poc_stage_start_block_height": 80, "nonces": [1, 2], "dist": [0.1, 0.2],
         "batch_id": "b", "node_id": "n1"}]}]}
    assert (await client.get("/v1/poc-batches/abc")).status_code == 400
    assert (await client.get("/v1/poc-batches/-1")).status_code == 400
    w.batches.answer = ChainNotFound("none")
    assert (await client.get("/v1/poc-batches/80")).status_code == 404
    w.batches.answer = ChainUnavailable("down")
    down = await client.get("/v1/poc-batches/80")
    assert down.status_code == 503 and "chain query failed" in down.json()["error"]


@pytest.fixture
async def served() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    """The same app behind a real server on loopback."""
    w = World()
    app = create_public_app(cache=w.cache, chain=w.view, status=lambda: {"chain": {"synced": True}},
                            poc_batches=w.batches, dynamic_pricing=w.pricing, metrics=w.metrics)
    server = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            yield w, client
    finally:
        await server.stop()


@pytest.mark.parametrize("height", ["+80", "8_0", " 80", "80 ", "\u0668\u0660", "\uff18\uff10", "0x50", "8e1", "80.0",
                                    "9223372036854775808", "1" * 5000])
async def test_poc_batch_height_takes_ascii_digits_only(served: tuple[World, httpx.AsyncClient], height: str) -> None:
    w, client = served
    response = await client.get(f"/v1/poc-batches/{height}")
    assert response.status_code == 400
    assert response.json()["error"].startswith("Invalid epoch id: height must be an integer")
    assert w.batches.asked == []


async def test_poc_batch_height_in_plain_digits_is_queried(served: tuple[World, httpx.AsyncClient]) -> None:
    w, client = served
    for height in ("80", "080", "0", "9223372036854775807"):
        assert (await client.get(f"/v1/poc-batches/{height}")).status_code == 200
    assert w.batches.asked == [80, 80, 0, 2**63 - 1]


async def test_status_and_metrics(world: tuple[World, httpx.AsyncClient]) -> None:
    w, client = world
    assert (await client.get("/v1/status")).json() == {"status": "ok", "chain": {"synced": True}}
    w.metrics.blocks_processed.inc(3)
    text = (await client.get("/metrics")).text
    assert "dapi_blocks_processed_total 3.0" in text
    missing: Any = await client.get("/v1/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = await client.post("/v1/models")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
