"""CometBFT RPC client (JSON-RPC 2.0 over HTTP POST): status, block, block_results, tx, broadcast_tx_sync, abci_query.

Only the JSON shapes of CometBFT 0.38 are relied on: heights are decimal strings, byte fields are
base64 in requests and responses, hashes are uppercase hex, a missing tx is a JSON-RPC error whose
text says "not found", a pruned height is a JSON-RPC error whose text says "height X is not available,
lowest height is Y".
"""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dapi.chain.errors import (
    ChainBadResponse,
    ChainError,
    ChainNotFound,
    ChainUnavailable,
    pruned_height_error,
)

_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|z|[+-]\d{2}:\d{2})")


@dataclass(frozen=True, slots=True)
class ChainNodeStatus:
    """CometBFT ``status`` of the chain node: network (chain id), latest block, whether it is catching up."""

    network: str
    latest_block_height: int
    latest_block_hash: str
    catching_up: bool
    latest_block_time_ns: int = 0  # unix ns; 0 when the node did not say


def parse_rfc3339_ns(text: str) -> int:
    """Unix nanoseconds of a CometBFT RFC 3339 time (`2024-01-02T03:04:05.123456789Z`); 0 if unreadable."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return 0
    date, fraction, zone = match.group(1), match.group(2) or "", match.group(3)
    try:
        seconds = datetime.fromisoformat(date + ("+00:00" if zone in ("Z", "z") else zone)).timestamp()
    except ValueError:
        return 0
    return int(seconds) * 1_000_000_000 + int((fraction[1:] + "000000000")[:9])


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A block's height and hash."""

    height: int
    hash: str  # uppercase hex, as CometBFT prints it


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """The CheckTx answer to a broadcast: code 0 means the tx entered the mempool; ``hash`` names the tx."""

    code: int
    log: str
    hash: str
    codespace: str = ""


@dataclass(frozen=True, slots=True)
class TxResult:
    """A tx found in a block: the block height and the tx's result code and log (code 0: executed)."""

    hash: str
    height: int
    code: int
    log: str
    codespace: str = ""
    data: bytes = b""  # the tx's result data: a TxMsgData with one response per message


@dataclass(frozen=True, slots=True)
class TxEvent:
    """One event of a tx result: its type and its attributes in order (a key may repeat)."""

    type: str
    attributes: tuple[tuple[str, str], ...]

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.attributes if k == key]


@dataclass(frozen=True, slots=True)
class BlockTxResult:
    """A tx result of ``block_results``: its code and its events (only code 0 txs changed any state)."""

    code: int
    events: tuple[TxEvent, ...]


@dataclass(frozen=True, slots=True)
class AbciQueryResult:
    """An ``abci_query`` answer: result code and log, the response bytes, and the height they were read at."""

    code: int
    log: str
    value: bytes
    height: int
    codespace: str = ""


def websocket_url(rpc_url: str) -> str:
    """``http://node:26657`` → ``ws://node:26657/websocket`` (``https`` → ``wss``, unlike the reference)."""
    parts = urlsplit(rpc_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, "/websocket", parts.query, ""))


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ChainBadResponse(f"{what}: expected an integer, got {value!r}") from None


def _b64(value: Any, what: str) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except (ValueError, TypeError):
        raise ChainBadResponse(f"{what}: not base64") from None


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise ChainBadResponse(f"missing {'.'.join(path)} in RPC response")
        obj = obj[key]
    return obj


class CometRPC:
    """JSON-RPC client of one CometBFT node; every method raises a ``ChainError`` subclass on failure.

    Args:
        url: the RPC base URL (``chain_node.url``); the websocket URL is derived from it.
        http: a connection pool to share with other clients; the caller then owns it and :meth:`aclose`
            leaves it open. None: the client makes its own pool.
        timeout: seconds per request, for the pool made here when ``http`` is None.
    """

    def __init__(self, url: str, *, http: httpx.AsyncClient | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._ids = itertools.count(1)
        self.calls = 0  # every request sent, for metrics and the zero-query benchmarks

    @property
    def websocket_url(self) -> str:
        return websocket_url(self.url)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or {}}
        self.calls += 1
        try:
            response = await self._http.post(self.url, json=payload)
        except (httpx.TransportError, OSError) as exc:
            raise ChainUnavailable(f"{method}: chain RPC {self.url} unreachable: {exc!r}") from exc
        if response.status_code >= 500 and not response.content.startswith(b"{"):
            raise ChainUnavailable(f"{method}: chain RPC answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainBadResponse(f"{method}: chain RPC answered non-JSON (HTTP {response.status_code})") from exc
        if not isinstance(body, dict):
            raise ChainBadResponse(f"{method}: chain RPC answered a non-object")
        error = body.get("error")
        if error:
            if isinstance(error, dict):
                text = f"{error.get('message', '')} {error.get('data', '')}".strip()
            else:
                text = str(error)
            if (pruned := pruned_height_error(text, where=method)) is not None:
                raise pruned
            if "not found" in text.lower():
                raise ChainNotFound(f"{method}: {text}")
            raise ChainError(f"{method}: {text}")
        if "result" not in body:
            raise ChainBadResponse(f"{method}: chain RPC answer has neither result nor error")
        return body["result"]

    async def status(self) -> ChainNodeStatus:
        result = await self.call("status")
        sync = _dig(result, "sync_info")
        return ChainNodeStatus(
            network=str(_dig(result, "node_info", "network")),
            latest_block_height=_int(sync.get("latest_block_height"), "latest_block_height"),
            latest_block_hash=str(sync.get("latest_block_hash", "")),
            catching_up=bool(sync.get("catching_up", False)),
            latest_block_time_ns=parse_rfc3339_ns(str(sync.get("latest_block_time", ""))),
        )

    async def block(self, height: int | None = None) -> BlockInfo:
        params = {} if height is None else {"height": str(height)}
        result = await self.call("block", params)
        return BlockInfo(
            height=_int(_dig(result, "block", "header", "height"), "block.header.height"),
            hash=str(_dig(result, "block_id", "hash")).upper(),
        )

    async def broadcast_tx_sync(self, tx: bytes) -> BroadcastResult:
        result = await self.call("broadcast_tx_sync", {"tx": base64.b64encode(tx).decode()})
        return BroadcastResult(
            code=_int(result.get("code", 0), "code"),
            log=str(result.get("log", "")),
            hash=str(result.get("hash", "")).upper(),
            codespace=str(result.get("codespace", "")),
        )

    async def tx(self, tx_hash: str) -> TxResult:
        """Raises ``ChainNotFound`` while the tx is not in a block."""
        raw_hash = bytes.fromhex(tx_hash)
        result = await self.call("tx", {"hash": base64.b64encode(raw_hash).decode(), "prove": False})
        tx_result = _dig(result, "tx_result")
        return TxResult(
            hash=str(result.get("hash", tx_hash)).upper(),
            height=_int(result.get("height"), "height"),
            code=_int(tx_result.get("code", 0), "tx_result.code"),
            log=str(tx_result.get("log", "")),
            codespace=str(tx_result.get("codespace", "")),
            data=_b64(tx_result.get("data"), "tx_result.data"),
        )

    async def block_results(self, height: int) -> list[BlockTxResult]:
        """The results of the txs of block ``height``, with their events (CometBFT 0.38: plain-text attributes)."""
        result = await self.call("block_results", {"height": str(height)})
        found: list[BlockTxResult] = []
        for tx_result in (result.get("txs_results") if isinstance(result, dict) else None) or []:
            events = []
            for event in tx_result.get("events") or []:
                attributes = tuple((str(a.get("key", "")), str(a.get("value", "")))
                                   for a in event.get("attributes") or [] if isinstance(a, dict))
                events.append(TxEvent(str(event.get("type", "")), attributes))
            found.append(BlockTxResult(code=_int(tx_result.get("code", 0), "txs_results.code"), events=tuple(events)))
        return found

    async def abci_query(self, path: str, data: bytes, height: int = 0) -> AbciQueryResult:
        result = await self.call(
            "abci_query", {"path": path, "data": data.hex(), "height": str(height), "prove": False}
        )
        response = _dig(result, "response")
        value = response.get("value") or ""
        try:
            decoded = base64.b64decode(value, validate=True)
        except (ValueError, TypeError) as exc:
            raise ChainBadResponse(f"abci_query {path}: response.value is not base64") from exc
        return AbciQueryResult(
            code=_int(response.get("code", 0), "response.code"),
            log=str(response.get("log", "")),
            value=decoded,
            height=_int(response.get("height", 0), "response.height"),
            codespace=str(response.get("codespace", "")),
        )
