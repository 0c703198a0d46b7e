"""The public API (reference/http.md §1): models, pricing, governance, epochs, PoC batches, status, metrics.

``/v1/models`` and ``/v1/pricing`` describe the *effective* epoch from the broker's epoch cache (plan
11.1): they never query the chain, and their bytes are rendered once per cache change. Differences from
the reference that keep clients working: ``{"models": []}`` instead of ``null``, and epoch info served
from the last processed block instead of a chain query per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Path
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from dapi.chain.errors import ChainError, ChainNotFound
from dapi.chain.pricing import ModelPrices
from dapi.chain.view import ChainView
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.pocbatch_pb2 import PoCBatchesWithParticipants
from dapi.inference.service import InferenceService
from dapi.metrics import Metrics
from dapi.server.common import (
    ApiError,
    BodyLimit,
    HeadAsGet,
    error_responses,
    go_json,
    install_error_handlers,
    json_bytes,
    path_int,
)
from dapi.server.public.inference_routes import add_inference_routes

JSON = "application/json"
BODY_LIMIT = 10 * 1024 * 1024  # as the reference's nginx (client_max_body_size 10M)


class ModelCatalog(Protocol):
    """The effective epoch's models and price, and the governance models, as the broker caches them."""

    @property
    def version(self) -> int: ...

    def models(self) -> Sequence[Model]: ...

    @property
    def unit_of_compute_price(self) -> int: ...

    def governance_models(self) -> Sequence[Model]: ...


class PriceSource(Protocol):
    """Per-model prices and capacities the chain reports, cached per block by its owner."""

    async def prices(self) -> ModelPrices: ...


# -- documented shapes (for OpenAPI; responses are rendered by hand for speed) -----------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DecimalJson(_Open):
    """A chain decimal: value times ten to the power of exponent."""

    value: int | None = None
    exponent: int | None = None


class ModelJson(_Open):
    """A chain Model as the reference encodes it: zero fields are omitted."""

    proposed_by: str | None = None
    id: str | None = None
    units_of_compute_per_token: int | None = None
    context_window: int | None = None
    quantization: str | None = None
    coins_per_input_token: int | None = None
    coins_per_output_token: int | None = None
    hf_repo: str | None = None
    hf_commit: str | None = None
    model_args: list[str] | None = None
    v_ram: int | None = None
    throughput_per_nonce: int | None = None
    validation_threshold: DecimalJson | None = None


class ModelsResponse(BaseModel):
    """Models as the chain encodes them (zero fields omitted); an empty list, never null."""

    models: list[ModelJson]


class ModelPriceJson(BaseModel):
    """One model's ``price_per_token``: units of compute per token times the unit price, or the chain's own price."""

    id: str
    units_of_compute_per_token: int
    price_per_token: int
    utilization: float | None = None
    capacity: int | None = None


class PricingResponse(BaseModel):
    """The unit of compute price and each model's price; ``dynamic_pricing_enabled``: the chain's prices apply."""

    unit_of_compute_price: int
    models: list[ModelPriceJson]
    dynamic_pricing_enabled: bool


class WindowJson(BaseModel):
    """An inclusive range of block heights."""

    start: int
    end: int


class EpochStagesJson(BaseModel):
    """The block heights of every stage of one epoch."""

    epoch_index: int
    poc_start: int
    poc_generation_wind_down: int
    poc_generation_end: int
    poc_validation_start: int
    poc_validation_wind_down: int
    poc_validation_end: int
    set_new_validators: int
    claim_money: int
    inference_validation_cutoff: int
    next_poc_start: int
    poc_exchange_window: WindowJson
    poc_validation_exchange_window: WindowJson


class LatestEpochJson(BaseModel):
    """The most recently started epoch: its index and the height its PoC started at."""

    index: int
    poc_start_block_height: int


class EpochResponse(BaseModel):
    """The last processed height, the latest epoch and its phase, the stages of this and the next epoch, the params."""

    block_height: int
    latest_epoch: LatestEpochJson
    phase: str
    epoch_stages: EpochStagesJson
    next_epoch_stages: EpochStagesJson
    epoch_params: dict[str, Any]


class PocBatchesResponse(BaseModel):
    """The PoC batches stored on chain for one PoC stage, grouped by participant."""

    poc_batch: list[dict[str, Any]]


class StatusResponse(_Open):
    """``status`` is always ``ok``; the rest says how far the chain is followed and how each component is."""

    status: str


# -- rendering ---------------------------------------------------------------------------------------


def render_models(models: Sequence[Model]) -> bytes:
    return json_bytes({"models": [go_json(m) for m in models]})


def render_pricing(models: Sequence[Model], unit_price: int) -> bytes:
    entries = [
        {"id": m.id, "units_of_compute_per_token": m.units_of_compute_per_token,
         "price_per_token": m.units_of_compute_per_token * unit_price}
        for m in models
    ]
    return json_bytes({"unit_of_compute_price": unit_price, "models": entries, "dynamic_pricing_enabled": False})


class _Rendered:
    """Bytes of a response, rendered again only when the cache behind them changed."""

    def __init__(self, render: Callable[[], bytes], version: Callable[[], int]) -> None:
        self._render = render
        self._version = version
        self._seen: int | None = None
        self._bytes = b""

    def get(self) -> bytes:
        version = self._version()
        if version != self._seen:
            self._bytes = self._render()
            self._seen = version
        return self._bytes


def create_public_app(
    *,
    cache: ModelCatalog,
    chain: ChainView,
    status: Callable[[], dict[str, Any]],
    poc_batches: Callable[[int], Awaitable[list[PoCBatchesWithParticipants]]],
    dynamic_pricing: PriceSource | None = None,
    metrics: Metrics | None = None,
    before_metrics: Callable[[], None] | None = None,
    inference: InferenceService | None = None,
    body_limit: int = BODY_LIMIT,
) -> FastAPI:
    app = FastAPI(title="dapi public API", version="1",
                  description="Public API of a gonka participant's API node")
    install_error_handlers(app)
    def version() -> int:
        return cache.version

    models_bytes = _Rendered(lambda: render_models(cache.models()), version)
    pricing_bytes = _Rendered(lambda: render_pricing(cache.models(), cache.unit_of_compute_price), version)
    governance_bytes = _Rendered(lambda: render_models(cache.governance_models()), version)

    @app.get("/v1/status", response_model=None, responses={200: {"model": StatusResponse}, **error_responses(500)})
    async def get_status() -> Response:
        """Always 200 once the process is up: the body says how far the chain is followed and how components are."""
        return Response(json_bytes({"status": "ok", **status()}), media_type=JSON)

    @app.get("/v1/models", response_model=None, responses={200: {"model": ModelsResponse}, **error_responses(500)})
    async def get_models() -> Response:
        """Model snapshots of the effective epoch (frozen at its formation), in sub-group order."""
        return Response(models_bytes.get(), media_type=JSON)

    @app.get("/v1/pricing", response_model=None, responses={200: {"model": PricingResponse}, **error_responses(500)})
    async def get_pricing() -> Response:
        """Price per token of each model of the effective epoch: units of compute per token times the epoch's price."""
        return Response(pricing_bytes.get(), media_type=JSON)

    @app.get("/v1/governance/models", response_model=None,
             responses={200: {"model": ModelsResponse}, **error_responses(500)})
    async def get_governance_models() -> Response:
        """Every model in the governance registry, active in this epoch or not."""
        return Response(governance_bytes.get(), media_type=JSON)

    @app.get("/v1/governance/pricing", response_model=None,
             responses={200: {"model": PricingResponse}, **error_responses(500, 503)})
    async def get_governance_pricing() -> Response:
        """Legacy price of every governance model; the chain's dynamic per-model price where it reports one."""
        unit = cache.unit_of_compute_price
        pricing = ModelPrices()
        if dynamic_pricing is not None:
            try:
                pricing = await dynamic_pricing.prices()
            except ChainError:
                pass  # as the reference: an unreachable price query means "disabled"
        prices, capacities, usage = pricing.prices, pricing.capacities, pricing.utilization
        enabled = bool(prices)
        entries = []
        for m in cache.governance_models():
            entry: dict[str, Any] = {"id": m.id, "units_of_compute_per_token": m.units_of_compute_per_token,
                                     "price_per_token": m.units_of_compute_per_token * unit}
            if enabled and m.id in prices:
                entry["price_per_token"] = prices[m.id]
            if enabled and m.id in capacities:
                entry["capacity"] = capacities[m.id]
                entry["utilization"] = usage.get(m.id, 0.0)
            entries.append(entry)
        body = {"unit_of_compute_price": unit, "models": entries, "dynamic_pricing_enabled": enabled}
        return Response(json_bytes(body), media_type=JSON)

    @app.get("/v1/epochs/{epoch}", response_model=None,
             responses={200: {"model": EpochResponse}, **error_responses(400, 503)})
    async def get_epoch(epoch: Annotated[str, Path(json_schema_extra={"enum": ["latest"]})]) -> Response:
        """Only ``latest``: latest epoch, phase at the last processed block, stages of this and the next epoch."""
        if epoch != "latest":
            raise ApiError(400, "Only getting info for current epoch is supported at the moment")
        snapshot = chain.snapshot
        if snapshot is None:
            raise ApiError(503, "no block processed yet: the epoch is not known")
        context = snapshot.context
        body = {
            "block_height": snapshot.height,
            "latest_epoch": {"index": snapshot.latest_epoch.index,
                             "poc_start_block_height": snapshot.latest_epoch.poc_start_block_height},
            "phase": str(snapshot.phase),
            "epoch_stages": context.stages().as_json(),
            "next_epoch_stages": context.next_epoch().stages().as_json(),
            "epoch_params": go_json(snapshot.params.epoch_params),
        }
        return Response(json_bytes(body), media_type=JSON)

    @app.get("/v1/poc-batches/{height}", response_model=None,
             responses={200: {"model": PocBatchesResponse}, **error_responses(400, 404, 503)})
    async def get_poc_batches(
        height: Annotated[str, Path(description="The PoC stage start height",
                                    json_schema_extra={"type": "integer", "minimum": 0, "maximum": 2**63 - 1})],
    ) -> Response:
        """The PoC batches stored on chain for the PoC stage that started at ``height``."""
        value = path_int("height", height, problem="Invalid epoch id")
        try:
            groups = await poc_batches(value)
        except ChainNotFound:
            raise ApiError(404, f"PoC batches not found. epoch = {value}") from None
        except ChainError as exc:
            raise ApiError(503, f"chain query failed: {exc}") from None
        return Response(json_bytes({"poc_batch": [go_json(g) for g in groups]}), media_type=JSON)

    @app.get("/metrics", response_model=None, responses={200: {"content": {"text/plain": {}}}},
             include_in_schema=True)
    async def get_metrics() -> Response:
        """Prometheus metrics."""
        if metrics is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        if before_metrics is not None:
            before_metrics()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if inference is not None:
        add_inference_routes(app, inference)
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(HeadAsGet)
    return app
