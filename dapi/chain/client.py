"""One chain connection: RPC (blocks, status, websocket URL), typed queries and a broadcaster.

gRPC is used for queries and broadcasts if and only if ``chain_node.grpc_url`` is set (DESIGN.md §4.6).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from dapi.chain.broadcast import Broadcaster, GrpcBroadcaster, RpcBroadcaster
from dapi.chain.query import AbciTransport, ChainQuery, GrpcTransport, QueryTransport
from dapi.chain.rpc import CometRPC
from dapi.config import ChainNodeConfig


@dataclass
class ChainClient:
    """The connections to one chain node, as :func:`connect` makes them from the ``chain_node`` config.

    Args:
        rpc: the CometBFT RPC client (status, blocks, the websocket URL).
        query: the typed queries, over gRPC when ``chain_node.grpc_url`` is set, else ABCI over RPC.
        broadcaster: sends signed txs and looks them up, over the same transport as the queries.
        http: the HTTP connection pool the RPC-side clients share; :meth:`aclose` closes it last.
    """

    rpc: CometRPC
    query: ChainQuery
    broadcaster: Broadcaster
    http: httpx.AsyncClient  # the one RPC connection pool, shared by the three

    async def aclose(self) -> None:
        await self.query.aclose()
        await self.broadcaster.aclose()
        await self.rpc.aclose()
        await self.http.aclose()


def connect(chain_node: ChainNodeConfig) -> ChainClient:
    http = httpx.AsyncClient(timeout=10.0)
    rpc = CometRPC(chain_node.url, http=http)
    transport: QueryTransport
    broadcaster: Broadcaster
    if chain_node.grpc_url:
        transport = GrpcTransport(chain_node.grpc_url)
        broadcaster = GrpcBroadcaster(chain_node.grpc_url)
    else:
        # The same RPC client: it does not own the shared pool, so closing one side leaves the others.
        transport = AbciTransport(rpc)
        broadcaster = RpcBroadcaster(rpc)
    return ChainClient(rpc=rpc, query=ChainQuery(transport), broadcaster=broadcaster, http=http)
