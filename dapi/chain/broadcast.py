"""Sending signed txs and looking them up, over gRPC (``cosmos.tx.v1beta1.Service``) or CometBFT RPC.

Both answer with the same small results: ``BroadcastResult`` (the CheckTx code and log) and
``TxResult`` (the DeliverTx code once the tx is in a block); a tx not yet in a block is ``ChainNotFound``.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from dapi.chain.errors import ChainBadResponse, ChainNotFound
from dapi.chain.query import grpc_error
from dapi.chain.rpc import BroadcastResult, CometRPC, TxResult
from dapi.gen.cosmos.tx.v1beta1 import service_pb2

BROADCAST_TX = "/cosmos.tx.v1beta1.Service/BroadcastTx"
GET_TX = "/cosmos.tx.v1beta1.Service/GetTx"


def _hex_data(text: str) -> bytes:
    """``TxResponse.data``: the SDK prints the TxMsgData bytes as hex there."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


class Broadcaster(Protocol):
    """Sends signed txs to the chain node and looks them up by hash; one implementation per transport."""

    async def broadcast(self, raw: bytes) -> BroadcastResult: ...

    async def get_tx(self, hash_hex: str) -> TxResult: ...

    async def aclose(self) -> None: ...


class RpcBroadcaster:
    """Broadcasts with CometBFT RPC ``broadcast_tx_sync`` and finds txs with RPC ``tx`` (no gRPC URL set)."""

    def __init__(self, rpc: CometRPC) -> None:
        self.rpc = rpc

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        return await self.rpc.broadcast_tx_sync(raw)

    async def get_tx(self, hash_hex: str) -> TxResult:
        return await self.rpc.tx(hash_hex)

    async def aclose(self) -> None:
        await self.rpc.aclose()


class GrpcBroadcaster:
    """Broadcasts and finds txs through ``cosmos.tx.v1beta1.Service`` on the chain node's gRPC port."""

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(target)

    async def _call(self, path: str, request: bytes) -> bytes:
        try:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(path)
            return await call(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise grpc_error(path, exc) from exc

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        request = service_pb2.BroadcastTxRequest(tx_bytes=raw, mode=service_pb2.BROADCAST_MODE_SYNC)
        data = await self._call(BROADCAST_TX, request.SerializeToString())
        try:
            response = service_pb2.BroadcastTxResponse.FromString(data).tx_response
        except Exception as exc:
            raise ChainBadResponse(f"{BROADCAST_TX}: undecodable response") from exc
        return BroadcastResult(
            code=response.code, log=response.raw_log, hash=response.txhash.upper(), codespace=response.codespace
        )

    async def get_tx(self, hash_hex: str) -> TxResult:
        data = await self._call(GET_TX, service_pb2.GetTxRequest(hash=hash_hex).SerializeToString())
        try:
            response = service_pb2.GetTxResponse.FromString(data).tx_response
        except Exception as exc:
            raise ChainBadResponse(f"{GET_TX}: undecodable response") from exc
        if response.height == 0:
            raise ChainNotFound(f"tx {hash_hex} not found")
        return TxResult(
            hash=response.txhash.upper(),
            height=response.height,
            code=response.code,
            log=response.raw_log,
            codespace=response.codespace,
            data=_hex_data(response.data),
        )

    async def aclose(self) -> None:
        await self._channel.close()
