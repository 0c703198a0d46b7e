"""The broker's two seams to the chain: what it reads (ChainReader) and where its transactions go (TxSink)."""

from __future__ import annotations

from typing import Protocol

from dapi.chain.outbox import TxSink
from dapi.chain.query import ChainQuery
from dapi.chain.rpc import CometRPC
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model

__all__ = ["ChainReader", "QueryChainReader", "TxSink"]


class ChainReader(Protocol):
    """Exactly the chain reads the broker makes; every method raises a `dapi.chain.errors.ChainError`."""

    async def models_all(self) -> list[Model]: ...

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData: ...

    async def current_epoch_group_data(self) -> EpochGroupData: ...

    async def hardware_nodes(self, participant: str) -> HardwareNodes: ...

    async def block_hash(self, height: int) -> str:
        """The block's hash as CometBFT prints it (uppercase hex)."""
        ...


class QueryChainReader:
    """ChainReader over the daemon's query client and CometBFT RPC client (neither is closed here)."""

    def __init__(self, query: ChainQuery, rpc: CometRPC) -> None:
        self._query = query
        self._rpc = rpc

    async def models_all(self) -> list[Model]:
        return await self._query.models_all()

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData:
        return await self._query.epoch_group_data(epoch_index, model_id)

    async def current_epoch_group_data(self) -> EpochGroupData:
        return await self._query.current_epoch_group_data()

    async def hardware_nodes(self, participant: str) -> HardwareNodes:
        return await self._query.hardware_nodes(participant)

    async def block_hash(self, height: int) -> str:
        return (await self._rpc.block(height)).hash
