"""Child process for the public API benchmark: the real public app (or a bare floor app) on a port.

The real app gets an epoch cache holding ten models and a chain whose every query is counted: the
benchmark asserts that serving /v1/models and /v1/pricing asked the chain nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response

from dapi.chain.view import ChainView
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.params_pb2 import Decimal
from dapi.runtime.serving import EmbeddedServer
from dapi.server.public.app import create_public_app, render_models, render_pricing


def ten_models() -> tuple[Model, ...]:
    return tuple(
        Model(id=f"org/model-{i}", units_of_compute_per_token=100 * (i + 1), hf_repo=f"org/model-{i}",
              hf_commit="0123456789abcdef", model_args=["--quantization", "fp8", "--max-model-len", "8192"],
              v_ram=24 + i, throughput_per_nonce=1000, validation_threshold=Decimal(value=85, exponent=-2))
        for i in range(10)
    )


@dataclass
class Cache:
    effective: tuple[Model, ...] = field(default_factory=ten_models)
    unit_of_compute_price: int = 100
    version: int = 1

    def models(self) -> tuple[Model, ...]:
        return self.effective

    def governance_models(self) -> tuple[Model, ...]:
        return self.effective


class CountingChain:
    def __init__(self) -> None:
        self.queries = 0

    async def poc_batches(self, height: int) -> list[Any]:
        self.queries += 1
        return []

    async def prices(self) -> tuple[dict[str, int], dict[str, int]]:
        self.queries += 1
        return {}, {}


def build(mode: str) -> tuple[FastAPI, CountingChain]:
    cache = Cache()
    chain = CountingChain()
    if mode == "bare":
        models, pricing = render_models(cache.models()), render_pricing(cache.models(), cache.unit_of_compute_price)
        app = FastAPI()

        @app.get("/v1/models")
        async def bare_models() -> Response:
            return Response(models, media_type="application/json")

        @app.get("/v1/pricing")
        async def bare_pricing() -> Response:
            return Response(pricing, media_type="application/json")
    else:
        app = create_public_app(cache=cache, chain=ChainView(), status=lambda: {}, poc_batches=chain.poc_batches,
                                dynamic_pricing=chain)

    @app.get("/bench/chain-queries")
    async def chain_queries() -> dict[str, int]:
        return {"queries": chain.queries}

    return app, chain


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["dapi", "bare"], required=True)
    args = parser.parse_args()
    app, _ = build(args.mode)
    server = EmbeddedServer(app)
    await server.start()
    print(json.dumps({"port": server.port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
