"""The devnet chain's CometBFT RPC port: HTTP JSON-RPC 2.0 and the /websocket event subscription.

It is one piece because it is one server's method table: each JSON-RPC method is a short handler over
the ledger, and the HTTP and websocket paths share the same dispatch (JSON shapes live in
``comet_json``, event queries in ``event_query``).

Shapes are CometBFT 0.38's: heights and gas as decimal strings, hashes as uppercase hex, byte fields
base64 (hex in `abci_query` data), errors as JSON-RPC errors whose `data` says what went wrong
("tx (HASH) not found"). Methods: status, block, tx, broadcast_tx_sync (and _async), abci_query,
abci_info, health; POST "/" with named or positional params (batches too), GET "/<method>?..." in
CometBFT's URI style for people with curl, and the same methods over the websocket.

/websocket speaks JSON-RPC too: `subscribe` with a query such as tm.event='NewBlock' or
tm.event='Tx' AND message.module='inference' (conditions `key='value'` joined by AND, and
`key EXISTS`), `unsubscribe`, `unsubscribe_all`. Every connection has its own ordered queue, so a
subscriber sees every block exactly once and in height order; the runner publishes each block once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from dapi.devnet.ledger import Block, Ledger
from dapi.devnet.wire.comet_json import (
    block_json,
    block_results_json,
    comet_hash,
    events_json,
    flatten_events,
    new_block_event,
    tx_result_json,
)
from dapi.devnet.wire.event_query import EventQuery
from dapi.devnet.wire.queries import QueryError, QueryRouter, abci_error
from dapi.logs import get_logger
from dapi.runtime.serving import start_server

__all__ = ["CometRpcServer", "EventQuery", "block_json", "new_block_event", "tx_result_json"]

log = get_logger(__name__)

COMETBFT_VERSION = "0.38.17"
_PARSE_ERROR, _INVALID_REQUEST, _METHOD_NOT_FOUND, _INVALID_PARAMS, _INTERNAL = -32700, -32600, -32601, -32602, -32603


class _Server(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self) -> None: ...


class RpcError(Exception):
    """A JSON-RPC error answer: the code, message and data of CometBFT's error object."""

    def __init__(self, code: int, message: str, data: str = "") -> None:
        super().__init__(data or message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


def _internal(data: str) -> RpcError:
    return RpcError(_INTERNAL, "Internal error", data)


def _invalid_params(data: str) -> RpcError:
    return RpcError(_INVALID_PARAMS, "Invalid params", data)


# --- websocket connections -------------------------------------------------------------------------

_CLOSE = object()


@dataclass(eq=False)
class _Connection:
    websocket: WebSocket
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    subscriptions: dict[str, tuple[EventQuery, Any]] = field(default_factory=dict)  # query text -> (query, id)

    async def send_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if item is _CLOSE:
                # Going away: the client's reconnect logic must take over, as after a node restart.
                await self.websocket.close(code=1001)
                return
            await self.websocket.send_text(json.dumps(item))


def _log_sender_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError | OSError):
        log.error("devnet websocket sender crashed", error=repr(exc))


# --- the server ------------------------------------------------------------------------------------


def _param_names() -> dict[str, tuple[str, ...]]:
    return {
        "health": (),
        "status": (),
        "abci_info": (),
        "block": ("height",),
        "block_results": ("height",),
        "tx": ("hash", "prove"),
        "broadcast_tx_sync": ("tx",),
        "broadcast_tx_async": ("tx",),
        "abci_query": ("path", "data", "height", "prove"),
        "subscribe": ("query",),
        "unsubscribe": ("query",),
        "unsubscribe_all": (),
    }


class CometRpcServer:
    """HTTP + websocket on one port (0: the OS picks); `url` is the RPC URL clients configure."""

    def __init__(self, ledger: Ledger, router: QueryRouter, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ledger = ledger
        self.router = router
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._connections: set[_Connection] = set()
        self._params = _param_names()
        self._methods: dict[str, Callable[[dict[str, Any], bool], Any]] = {
            "health": lambda p, uri: {},
            "status": self._status,
            "abci_info": self._abci_info,
            "block": self._block,
            "block_results": self._block_results,
            "tx": self._tx,
            "broadcast_tx_sync": self._broadcast,
            "broadcast_tx_async": self._broadcast,
            "abci_query": self._abci_query,
        }
        self.node_id = comet_hash("node", ledger.chain_id)[:40].lower()
        self.app = Starlette(routes=[
            Route("/", self._post, methods=["POST"]),
            Route("/", self._index, methods=["GET"]),
            Route("/{method}", self._get, methods=["GET"]),
            WebSocketRoute("/websocket", self._websocket),
        ])

    # --- lifecycle ---

    async def start(self) -> None:
        self._server = await start_server(self.app, self.host, self._requested_port)

    async def stop(self) -> None:
        await self.drop_websockets()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("RPC server not started")
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.host}:{self.port}/websocket"

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def drop_websockets(self) -> int:
        """Close every websocket connection (a network failure, as the daemon sees it)."""
        dropped = list(self._connections)
        for conn in dropped:
            conn.queue.put_nowait(_CLOSE)
        return len(dropped)

    # --- events ---

    def publish(self, block: Block) -> None:
        """Queue this block's NewBlock event and its Tx events for every matching subscription."""
        if not self._connections:
            return
        value = new_block_event(self.ledger, block)
        block_events = {"tm.event": ["NewBlock"], **flatten_events(value["result_finalize_block"]["events"])}
        tx_events = []
        for record in block.txs:
            flat = {"tm.event": ["Tx"], "tx.hash": [record.hash], "tx.height": [str(record.height)],
                    **flatten_events(events_json(record.events))}
            tx_value = {"TxResult": {"height": str(record.height), "index": record.index,
                                     "tx": base64.b64encode(record.raw).decode(), "result": tx_result_json(record)}}
            tx_events.append((flat, tx_value))
        for conn in list(self._connections):
            for query, sub_id in conn.subscriptions.values():
                if query.matches(block_events):
                    conn.queue.put_nowait(self._event_frame(sub_id, query, "tendermint/event/NewBlock", value,
                                                            block_events))
                for flat, tx_value in tx_events:
                    if query.matches(flat):
                        conn.queue.put_nowait(self._event_frame(sub_id, query, "tendermint/event/Tx", tx_value, flat))

    @staticmethod
    def _event_frame(sub_id: Any, query: EventQuery, kind: str, value: Any, events: dict[str, list[str]]) -> Any:
        return {"jsonrpc": "2.0", "id": sub_id,
                "result": {"query": query.text, "data": {"type": kind, "value": value}, "events": events}}

    # --- HTTP ---

    async def _index(self, request: Request) -> Response:
        names = sorted(self._methods)
        return JSONResponse({"methods": names, "websocket": "/websocket"})

    async def _post(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse(self._error(None, RpcError(_PARSE_ERROR, "Parse error", "invalid JSON")))
        if isinstance(body, list):
            return JSONResponse([self._dispatch(item) for item in body])
        return JSONResponse(self._dispatch(body))

    async def _get(self, request: Request) -> Response:
        method = request.path_params["method"]
        params: dict[str, Any] = {}
        for key, value in request.query_params.items():
            # URI style: strings may come "quoted"; byte values as 0x-hex.
            params[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        frame = self._call_frame(-1, method, params, uri=True)
        return JSONResponse(frame, status_code=200 if "result" in frame else 500 if frame["error"]["code"] ==
                            _INTERNAL else 400)

    def _dispatch(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return self._error(None, RpcError(_INVALID_REQUEST, "Invalid Request", "not a JSON-RPC request object"))
        return self._call_frame(body.get("id"), body["method"], body.get("params"), uri=False)

    def _call_frame(self, req_id: Any, method: str, params: Any, *, uri: bool) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            return self._error(req_id, RpcError(_METHOD_NOT_FOUND, "Method not found", method))
        try:
            result = handler(self._named(method, params), uri)
        except RpcError as exc:
            return self._error(req_id, exc)
        except Exception:  # a devnet bug answers one request with an error, it never takes the port down
            log.exception("devnet RPC method failed", method=method)
            return self._error(req_id, _internal(f"{method} failed"))
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    def _named(self, method: str, params: Any) -> dict[str, Any]:
        if params is None:
            return {}
        if isinstance(params, dict):
            return params
        if isinstance(params, list):
            names = self._params.get(method, ())
            if len(params) > len(names):
                raise _invalid_params(f"too many positional params for {method}")
            return dict(zip(names, params, strict=False))
        raise _invalid_params("params must be an object or an array")

    @staticmethod
    def _error(req_id: Any, exc: RpcError) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": req_id, "error": exc.as_json()}

    # --- methods ---

    def _int_param(self, params: dict[str, Any], name: str, default: int | None) -> int | None:
        value = params.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _invalid_params(f"{name}: not an integer: {value!r}") from None

    @staticmethod
    def _bytes_param(params: dict[str, Any], name: str, *, uri: bool, hex_only: bool = False) -> bytes:
        value = params.get(name)
        if value is None:
            raise _invalid_params(f"{name} is required")
        if not isinstance(value, str):
            raise _invalid_params(f"{name}: must be a string")
        try:
            if value[:2] in ("0x", "0X"):
                return bytes.fromhex(value[2:])
            if hex_only or (uri and re.fullmatch(r"[0-9A-Fa-f]*", value)):
                return bytes.fromhex(value)
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise _invalid_params(f"{name}: not valid {'hex' if hex_only else 'base64'}") from None

    def _status(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        ledger = self.ledger
        latest, first = ledger.latest_block, ledger.block(1)
        validator_key = base64.b64encode(bytes.fromhex(comet_hash("validator", ledger.chain_id))).decode()
        return {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": "0"},
                "id": self.node_id,
                "listen_addr": "tcp://127.0.0.1:26656",
                "network": ledger.chain_id,
                "version": COMETBFT_VERSION,
                "channels": "40202122233038606100",
                "moniker": "dapi-devnet",
                "other": {"tx_index": "on", "rpc_address": self.url if self._server else ""},
            },
            "sync_info": {
                "latest_block_hash": latest.hash if latest else "",
                "latest_app_hash": latest.app_hash if latest else "",
                "latest_block_height": str(ledger.height),
                "latest_block_time": latest.time if latest else "",
                "earliest_block_hash": first.hash if first else "",
                "earliest_app_hash": first.app_hash if first else "",
                "earliest_block_height": str(1 if first else 0),
                "earliest_block_time": first.time if first else "",
                "catching_up": ledger.catching_up,
            },
            "validator_info": {
                "address": comet_hash("proposer", ledger.chain_id)[:40],
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": validator_key},
                "voting_power": "0",
            },
        }

    def _abci_info(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        latest = self.ledger.latest_block
        return {"response": {
            "data": "inference",
            "version": "devnet",
            "last_block_height": str(self.ledger.height),
            "last_block_app_hash": base64.b64encode(bytes.fromhex(latest.app_hash)).decode() if latest else "",
        }}

    def _stored_block(self, params: dict[str, Any]) -> Block:
        height = self._int_param(params, "height", None)
        current = self.ledger.height
        if height is None:
            height = current
        if height <= 0:
            if current == 0:
                raise _internal("height must be greater than 0, but got 0")
            raise _internal(f"height must be greater than 0, but got {height}")
        if height > current:
            raise _internal(f"height {height} must be less than or equal to the current blockchain height {current}")
        block = self.ledger.block(height)
        assert block is not None
        return block

    def _block(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        return block_json(self.ledger, self._stored_block(params))

    def _block_results(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        return block_results_json(self._stored_block(params))

    def _tx(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        raw_hash = self._bytes_param(params, "hash", uri=uri)
        if len(raw_hash) != 32:
            raise _invalid_params(f"hash: expected 32 bytes, got {len(raw_hash)}")
        hash_hex = raw_hash.hex().upper()
        record = self.ledger.tx(hash_hex)
        if record is None:
            raise _internal(f"tx ({hash_hex}) not found")
        return {"hash": record.hash, "height": str(record.height), "index": record.index,
                "tx_result": tx_result_json(record), "tx": base64.b64encode(record.raw).decode()}

    def _broadcast(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        raw = self._bytes_param(params, "tx", uri=uri)
        if not raw:
            raise _internal("tx is empty")
        result = self.ledger.check_tx(raw)
        return {"code": result.code, "data": "", "log": result.log, "codespace": result.codespace,
                "hash": result.hash}

    def _abci_query(self, params: dict[str, Any], uri: bool) -> dict[str, Any]:
        path = params.get("path")
        if not isinstance(path, str) or not path:
            raise _invalid_params("path is required")
        data = self._bytes_param(params, "data", uri=uri, hex_only=True) if params.get("data") else b""
        height = self._int_param(params, "height", 0) or 0
        response: dict[str, Any] = {"code": 0, "log": "", "info": "", "index": "0", "key": None, "value": None,
                                    "proofOps": None, "height": "0", "codespace": ""}
        try:
            value = self.router.handle(path, data, height)
        except QueryError as exc:
            error = abci_error(path, exc)
            response.update(code=error.code, log=error.log, codespace=error.codespace)
            return {"response": response}
        response["value"] = base64.b64encode(value).decode()
        response["height"] = str(height if height > 0 else self.ledger.height)
        return {"response": response}

    # --- websocket ---

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        conn = _Connection(websocket)
        self._connections.add(conn)
        sender = asyncio.create_task(conn.send_loop(), name="devnet-websocket-sender")
        sender.add_done_callback(_log_sender_end)
        receive: asyncio.Task[str] | None = None
        try:
            while True:
                receive = asyncio.create_task(websocket.receive_text(), name="devnet-websocket-receive")
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    return  # the sender closed the connection (dropped) or failed
                text = receive.result()
                receive = None
                conn.queue.put_nowait(self._ws_frame(conn, text))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away
        finally:
            self._connections.discard(conn)
            for task in (receive, sender):
                if task is not None and not task.done():
                    task.cancel()
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                        await task

    def _ws_frame(self, conn: _Connection, text: str) -> dict[str, Any]:
        try:
            body = json.loads(text)
        except ValueError:
            return self._error(None, RpcError(_PARSE_ERROR, "Parse error", "invalid JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return self._error(None, RpcError(_INVALID_REQUEST, "Invalid Request", "not a JSON-RPC request object"))
        req_id, method = body.get("id"), body["method"]
        try:
            params = self._named(method, body.get("params"))
            if method == "subscribe":
                query_text = params.get("query")
                if not isinstance(query_text, str):
                    raise _invalid_params("query is required")
                try:
                    query = EventQuery.parse(query_text)
                except ValueError as exc:
                    raise _internal(str(exc)) from None
                if query.text in conn.subscriptions:
                    raise _internal("failed to subscribe: already subscribed")
                conn.subscriptions[query.text] = (query, req_id)
                return {"jsonrpc": "2.0", "id": req_id, "result": {}}
            if method == "unsubscribe":
                query_text = str(params.get("query", "")).strip()
                if conn.subscriptions.pop(query_text, None) is None:
                    raise _internal("subscription not found")
                return {"jsonrpc": "2.0", "id": req_id, "result": {}}
            if method == "unsubscribe_all":
                if not conn.subscriptions:
                    raise _internal("subscription not found")
                conn.subscriptions.clear()
                return {"jsonrpc": "2.0", "id": req_id, "result": {}}
        except RpcError as exc:
            return self._error(req_id, exc)
        return self._call_frame(req_id, method, body.get("params"), uri=False)
