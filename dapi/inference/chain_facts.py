"""What the inference path reads of the chain, at most once per block (DESIGN.md §8 point 1).

A request never waits for more than the first query of its kind in a block: requester pubkey and
balance, a transfer agent's keys (account key plus its MsgStartInference grantees) and the per-token
prices are each fetched once per processed height and shared by every
request of that block (concurrent misses wait for the same fetch). Params (timestamp window,
expiration, bandwidth) and the latest block time come from the chain view, which the dispatcher
refreshes every block (a replayed block has no block time there: then one /status per block).

The balance is the spendable balance minus the escrow of requests this daemon accepted since it was
read, so a burst inside one block cannot promise more than the requester has.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dapi.chain.errors import ChainNotFound
from dapi.chain.query import ChainQuery
from dapi.chain.rpc import CometRPC
from dapi.chain.view import ChainView
from dapi.gen.inference.inference.params_pb2 import BandwidthLimitsParams, Params

__all__ = ["START_INFERENCE_TYPE", "ChainFacts", "Requester"]

START_INFERENCE_TYPE = "/inference.inference.MsgStartInference"
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Requester:
    """A requester's compressed pubkey (empty if the account has none yet) and spendable ngonka."""

    public_key: bytes
    balance: int


class _PerBlock(Generic[K, V]):
    """Values fetched at most once per height; a failed fetch is not kept."""

    def __init__(self) -> None:
        self._height = -1
        self._values: dict[K, asyncio.Future[V]] = {}

    async def get(self, height: int, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        if height != self._height:
            self._height, self._values = height, {}
        future = self._values.get(key)
        if future is None:
            future = asyncio.ensure_future(fetch())
            self._values[key] = future
            future.add_done_callback(functools.partial(self._forget_failure, height, key))
        return await asyncio.shield(future)

    def _forget_failure(self, height: int, key: K, future: asyncio.Future[V]) -> None:
        if height == self._height and not future.cancelled() and future.exception() is not None:
            self._values.pop(key, None)


def _decode_key(b64: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except ValueError:
        return b""


class ChainFacts:
    """The chain as the TA and the executor see it, cached per processed block."""

    def __init__(self, query: ChainQuery, rpc: CometRPC, view: ChainView) -> None:
        self._query = query
        self._rpc = rpc
        self._view = view
        self._requesters: _PerBlock[str, Requester] = _PerBlock()
        self._transfer_keys: _PerBlock[str, list[bytes]] = _PerBlock()
        self._prices: _PerBlock[str, int | None] = _PerBlock()
        self._time: _PerBlock[str, int] = _PerBlock()
        self._reserved: dict[str, int] = {}
        self._reserved_height = -1

    @property
    def height(self) -> int:
        return self._view.snapshot.height if self._view.snapshot else 0

    @property
    def params(self) -> Params:
        return self._view.snapshot.params if self._view.snapshot else Params()

    # -- accounts --

    async def requester(self, address: str) -> Requester:
        """Pubkey and balance (less this daemon's escrow this block); ChainNotFound for an unknown account."""
        async def fetch() -> Requester:
            answer = await self._query.inference_participant(address)
            return Requester(_decode_key(answer.pubkey), answer.balance)
        found = await self._requesters.get(self.height, address, fetch)
        return Requester(found.public_key, found.balance - self._reserved_for(address))

    def reserve(self, address: str, amount: int) -> None:
        """Count `amount` as promised until the balance is read again (next block)."""
        self._reserved_for(address)
        self._reserved[address] = self._reserved.get(address, 0) + amount

    def unreserve(self, address: str, amount: int) -> None:
        if address in self._reserved:
            self._reserved[address] = max(0, self._reserved[address] - amount)

    def _reserved_for(self, address: str) -> int:
        if self._reserved_height != self.height:
            self._reserved_height, self._reserved = self.height, {}
        return self._reserved.get(address, 0)

    async def account_key(self, address: str) -> bytes | None:
        try:
            key = (await self.requester(address)).public_key
        except ChainNotFound:
            return None
        return key or None

    async def transfer_keys(self, address: str) -> list[bytes]:
        """The TA's account key and the keys of its MsgStartInference grantees."""
        async def fetch() -> list[bytes]:
            keys = [_decode_key(k) for k in await self._query.grantee_pubkeys(address, START_INFERENCE_TYPE)]
            own = await self.account_key(address)
            return [k for k in ([own] if own else []) + keys if k]
        return await self._transfer_keys.get(self.height, address, fetch)

    async def random_executor(self, model: str) -> tuple[str, str]:
        """The chain's own executor draw (address, inference_url): the fallback of the local one."""
        executor = await self._query.random_executor(model)
        return executor.address, executor.inference_url

    # -- prices, time, params --

    async def price(self, model: str, default: int) -> int:
        """The model's per-token price the chain locks at Start, or `default` when it has none."""
        async def fetch() -> int | None:
            return await self._query.model_per_token_price(model)
        price = await self._prices.get(self.height, model, fetch)
        return default if price is None else price

    async def block_time_ns(self) -> int:
        """The latest block time: as the dispatcher read it with this block, else one /status per block."""
        snapshot = self._view.snapshot
        if snapshot is not None and snapshot.block_time_ns:
            return snapshot.block_time_ns

        async def fetch() -> int:
            return (await self._rpc.status()).latest_block_time_ns
        return await self._time.get(self.height, "", fetch)

    def timestamp_window(self) -> tuple[int, int]:
        v = self.params.validation_params
        return v.timestamp_expiration, v.timestamp_advance

    @property
    def expiration_blocks(self) -> int:
        return self.params.validation_params.expiration_blocks

    @property
    def bandwidth(self) -> BandwidthLimitsParams:
        return self.params.bandwidth_limits_params
