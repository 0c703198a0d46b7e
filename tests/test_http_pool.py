"""The sharded HTTP client spreads requests round-robin over its clients, each keeping its connections."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dapi.runtime.http_pool import ShardedClient
from dapi.runtime.serving import EmbeddedServer


async def test_requests_go_round_robin_and_each_shard_reuses_its_connection() -> None:
    async def who(request: Request) -> PlainTextResponse:
        assert request.client is not None
        return PlainTextResponse(str(request.client.port))

    server = EmbeddedServer(Starlette(routes=[Route("/who", who, methods=["GET", "POST"])]))
    await server.start()
    pool = ShardedClient(4, timeout=httpx.Timeout(5.0))
    try:
        ports = []
        for i in range(12):
            if i % 2:
                answer = await pool.post(server.url + "/who")
            else:
                answer = await pool.send(pool.build_request("GET", server.url + "/who"), stream=False)
            ports.append(answer.text)
        # Four connections, one per client, each used for every fourth request.
        assert Counter(ports) == dict.fromkeys(set(ports), 3) and len(set(ports)) == 4
        assert ports[:4] == ports[4:8] == ports[8:]
    finally:
        await pool.aclose()
        await server.stop()


def test_at_least_one_shard() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ShardedClient(0)
