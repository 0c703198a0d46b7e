"""HEAD on every GET route of the three servers answers as GET does, without a body (health checks use it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_fakes import MODEL_A, FakeChain, gov_model, make_broker
from fastapi import FastAPI
from fastapi.routing import APIRoute

from dapi.chain.outbox import Outbox
from dapi.chain.view import ChainView
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.pocbatch_pb2 import PoCBatchesWithParticipants
from dapi.node_store import NodeStore
from dapi.runtime.serving import start_server
from dapi.server.admin.app import create_admin_app
from dapi.server.mlnode.app import create_mlnode_app
from dapi.server.public.app import create_public_app

# Path parameters filled in so that every GET route is reached.
PATH_VALUES = {"height": "80", "epoch": "latest"}


class Cache:
    version = 1
    unit_of_compute_price = 5

    def models(self) -> list[Model]:
        return [Model(id="Qwen/QwQ-32B", units_of_compute_per_token=1000)]

    def governance_models(self) -> list[Model]:
        return self.models()


async def no_batches(height: int) -> list[PoCBatchesWithParticipants]:
    return []


class Nodes:
    def node_id_by_secret(self, secret: str) -> str | None:
        return None

    def node_id_by_num(self, node_num: int) -> str | None:
        return None

    def poc_stage_hash(self, height: int) -> str | None:
        return None

    def closed_window(self, stage_height: int, *, validation: bool) -> tuple[int, int] | None:
        return None


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[dict[str, FastAPI]]:
    broker = make_broker(FakeChain([gov_model(MODEL_A)]), tmp_path)
    await broker.start()
    outbox = Outbox(tmp_path / "outbox.sqlite", broadcaster=None, signer_factory=None)
    await outbox.open()
    yield {
        "public": create_public_app(cache=Cache(), chain=ChainView(), status=lambda: {"uptime_seconds": 1},
                                    poc_batches=no_batches),
        "ml": create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address="gonka1x", participant_pubkey_hex="02ab"),
        "admin": create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json"), outbox=outbox),
    }
    await outbox.stop()
    await broker.stop()


def get_paths(app: FastAPI) -> list[str]:
    paths = []
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        if "GET" in methods:
            path = route.path  # type: ignore[attr-defined]
            for name, value in PATH_VALUES.items():
                path = path.replace("{" + name + "}", value)
            paths.append(path)
    return paths


def comparable(headers: httpx.Headers) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k != "date"}


@pytest.mark.parametrize("name", ["public", "ml", "admin"])
async def test_head_answers_every_get_route_like_get_without_a_body(apps: dict[str, FastAPI], name: str) -> None:
    app = apps[name]
    paths = get_paths(app)
    assert "/openapi.json" in paths and (name == "ml" or len(paths) > 4)
    server = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for path in paths:
                got = await client.get(path)
                head = await client.head(path)
                assert head.status_code == got.status_code, path
                assert head.content == b"", path
                assert comparable(head.headers) == comparable(got.headers), path
                assert int(head.headers["content-length"]) == len(got.content), path
    finally:
        await server.stop()


async def test_head_where_get_is_not_served(apps: dict[str, FastAPI]) -> None:
    server = await start_server(apps["ml"])
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            post_only = await client.head("/v1/poc-batches/generated")
            assert (post_only.status_code, post_only.content) == (405, b"")
            assert post_only.headers["allow"] == "POST"
            unknown = await client.head("/v1/nothing-here")
            assert (unknown.status_code, unknown.content) == (404, b"")
    finally:
        await server.stop()


@pytest.mark.parametrize("name", ["public", "ml", "admin"])
def test_openapi_documents_no_head_operations(apps: dict[str, FastAPI], name: str) -> None:
    app = apps[name]
    assert not [r for r in app.routes if isinstance(r, APIRoute) and "HEAD" in (r.methods or ())]
    assert all("head" not in item for item in app.openapi()["paths"].values())
