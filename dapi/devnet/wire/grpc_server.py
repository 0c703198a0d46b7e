"""The devnet chain's gRPC port: the query services and cosmos.tx.v1beta1.Service (BroadcastTx, GetTx).

Methods are served on raw bytes through a generic handler (like a Cosmos SDK node's gRPC router):
queries go to the shared QueryRouter, honouring the `x-cosmos-block-height` request metadata and
answering it in the response headers; an unknown method is UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from dapi.chain.messages import pack_any
from dapi.devnet.ledger import Ledger, TxRecord
from dapi.devnet.wire.queries import QueryError, QueryRouter
from dapi.gen.cosmos.base.abci.v1beta1 import abci_pb2
from dapi.gen.cosmos.tx.v1beta1 import service_pb2, tx_pb2
from dapi.gen.tendermint.abci import types_pb2
from dapi.logs import get_logger

__all__ = ["BROADCAST_TX", "GET_TX", "HEIGHT_METADATA", "DevnetGrpcServer", "decoded_tx", "tx_response"]

log = get_logger(__name__)

BROADCAST_TX = "/cosmos.tx.v1beta1.Service/BroadcastTx"
GET_TX = "/cosmos.tx.v1beta1.Service/GetTx"
HEIGHT_METADATA = "x-cosmos-block-height"

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def decoded_tx(record: TxRecord) -> tx_pb2.Tx:
    # CheckTx decoded these very bytes, so they parse.
    raw = tx_pb2.TxRaw.FromString(record.raw)
    return tx_pb2.Tx(
        body=tx_pb2.TxBody.FromString(raw.body_bytes),
        auth_info=tx_pb2.AuthInfo.FromString(raw.auth_info_bytes),
        signatures=list(raw.signatures),
    )


def tx_response(record: TxRecord) -> abci_pb2.TxResponse:
    """The SDK's TxResponse of an included tx (GetTx)."""
    tx = decoded_tx(record)
    return abci_pb2.TxResponse(
        height=record.height,
        txhash=record.hash,
        codespace=record.codespace,
        code=record.code,
        data=record.data.hex().upper(),
        raw_log=record.log,
        gas_wanted=record.gas_wanted,
        gas_used=record.gas_used,
        tx=pack_any(tx),
        timestamp=record.timestamp,
        events=[
            types_pb2.Event(type=e.type, attributes=[types_pb2.EventAttribute(key=k, value=v, index=True)
                                                     for k, v in e.attributes])
            for e in record.events
        ],
    )


def _requested_height(context: grpc.aio.ServicerContext) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == HEIGHT_METADATA:
            try:
                return int(value)
            except (TypeError, ValueError):
                raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {HEIGHT_METADATA} {value!r}") from None
    return 0


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, ledger: Ledger, router: QueryRouter) -> None:
        self._ledger = ledger
        self._router = router
        self._methods: dict[str, Handler] = {path: self._query(path) for path in router.paths}
        self._methods[BROADCAST_TX] = self._broadcast
        self._methods[GET_TX] = self._get_tx

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(handler_call_details.method)
        return grpc.unary_unary_rpc_method_handler(handler) if handler is not None else None

    def _query(self, path: str) -> Handler:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                height = _requested_height(context)
                answer = self._router.handle(path, request, height)
                answered = height if height > 0 else self._ledger.height
            except QueryError as exc:
                await context.abort(exc.status, exc.message)
            await context.send_initial_metadata(((HEIGHT_METADATA, str(answered)),))
            return answer

        return handle

    async def _broadcast(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            req = service_pb2.BroadcastTxRequest.FromString(request)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode BroadcastTxRequest")
        if not req.tx_bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid empty tx")
        if req.mode not in (service_pb2.BROADCAST_MODE_SYNC, service_pb2.BROADCAST_MODE_ASYNC):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unsupported broadcast mode {req.mode}; supported modes: SYNC, ASYNC")
        result = self._ledger.check_tx(req.tx_bytes)
        response = abci_pb2.TxResponse(txhash=result.hash, code=result.code, codespace=result.codespace,
                                       raw_log=result.log)
        return service_pb2.BroadcastTxResponse(tx_response=response).SerializeToString()

    async def _get_tx(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            req = service_pb2.GetTxRequest.FromString(request)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode GetTxRequest")
        text = req.hash.strip()
        try:
            valid = len(bytes.fromhex(text)) == 32
        except ValueError:
            valid = False
        if not valid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid tx hash {req.hash!r}")
        record = self._ledger.tx(text)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"tx not found: {text.upper()}")
        return service_pb2.GetTxResponse(tx=decoded_tx(record), tx_response=tx_response(record)).SerializeToString()


class DevnetGrpcServer:
    """A grpc.aio server on `host:port` (0: the OS picks); `target` is "host:port" for clients."""

    def __init__(self, ledger: Ledger, router: QueryRouter, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._ledger = ledger
        self._router = router
        self.host = host
        self._requested_port = port
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                          ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers([_Handlers(self._ledger, self._router)])
        address = f"{self.host}:{self._requested_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports a taken port this way; callers expect an OSError
            raise OSError(f"devnet gRPC: cannot bind {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"devnet gRPC: cannot bind {address}")
        await server.start()
        self._server, self.port = server, port
        log.info("devnet gRPC listening", target=self.target)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
