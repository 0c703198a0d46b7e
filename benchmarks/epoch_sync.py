"""Epoch sync with 1,000 own ML nodes spread over 10 models: chain queries per sync and time per sync.

Each round forms a new epoch on an in-memory chain (a parent group listing 10 model sub-groups, each
holding the own participant's 100 ML nodes), then hands the broker the block at which the epoch's
validation ends. The sync that follows must cost exactly 1 + 10 chain queries; its time includes
applying the snapshots to the 1,000 nodes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result
from dapi.broker import Broker, EpochState
from dapi.chain.epochs import Epoch, EpochContext, EpochParams
from dapi.chain.errors import ChainNotFound
from dapi.config import BrokerConfig, NodeConfig
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData, MLNodeInfo, ValidationWeight
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.logs import configure_logging

NODES = 1000
MODELS = [f"org/model-{i}" for i in range(10)]
OWN = "gonka1benchmarkowner"
PARAMS = EpochParams(epoch_length=40, poc_stage_duration=6, poc_exchange_duration=2, poc_validation_delay=1,
                     poc_validation_duration=4, set_new_validators_delay=2)
ROUNDS = 20


class Chain:
    def __init__(self) -> None:
        self.formed: set[int] = set()
        self.queries = 0

    async def models_all(self) -> list[Model]:
        self.queries += 1
        return [Model(id=m, units_of_compute_per_token=100, model_args=["--tp", "1"]) for m in MODELS]

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData:
        self.queries += 1
        if epoch_index not in self.formed:
            if model_id:
                raise ChainNotFound("no such sub-group")
            return EpochGroupData(epoch_index=epoch_index)
        if not model_id:
            return EpochGroupData(epoch_index=epoch_index, sub_group_models=MODELS, unit_of_compute_price=100)
        k = MODELS.index(model_id)
        nodes = [MLNodeInfo(node_id=f"n{i}", poc_weight=10, throughput=1000, timeslot_allocation=[True, i % 2 == 0])
                 for i in range(k * 100, (k + 1) * 100)]
        return EpochGroupData(epoch_index=epoch_index, model_id=model_id, unit_of_compute_price=100,
                              model_snapshot=Model(id=model_id, units_of_compute_per_token=100),
                              validation_weights=[ValidationWeight(member_address=OWN, weight=1000, ml_nodes=nodes)])

    async def current_epoch_group_data(self) -> EpochGroupData:
        self.queries += 1
        return EpochGroupData(epoch_index=0)

    async def hardware_nodes(self, participant: str) -> HardwareNodes:
        return HardwareNodes(participant=participant)

    async def block_hash(self, height: int) -> str:
        return "AB" * 32


async def main() -> list[Result]:
    configure_logging({"DAPI_LOG_LEVEL": "WARNING"})
    chain = Chain()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(chain=chain, participant_address=OWN, participant_pubkey_hex="02" + "ab" * 32,
                        poc_callback_url="http://127.0.0.1:9", data_dir=Path(tmp), tx_sink=None,
                        settings=BrokerConfig(status_poll_interval=3600, hardware_sync_interval=3600),
                        reconcile_interval=3600)
        await broker.start()
        configs = [NodeConfig(id=f"n{i}", host="127.0.0.1", poc_port=9, inference_port=9,
                              models={MODELS[i // 100]: {"args": []}}) for i in range(NODES)]
        await broker.register_many(configs)
        per_sync: list[int] = []
        times: list[float] = []
        for epoch in range(1, ROUNDS + 1):
            ctx = EpochContext(epoch, epoch * PARAMS.epoch_length, PARAMS)
            # The PoC of the new epoch starts: its group exists, empty.
            broker.set_epoch_state(EpochState.at_height(Epoch(epoch, ctx.start_of_poc), PARAMS, ctx.start_of_poc))
            await broker.update_epoch_data()
            chain.formed.add(epoch)
            # End of validation: the chain formed the epoch in this block; the broker loads it.
            broker.set_epoch_state(EpochState.at_height(Epoch(epoch, ctx.start_of_poc), PARAMS,
                                                        ctx.end_of_poc_validation))
            before = chain.queries
            started = time.perf_counter()
            assert await broker.update_epoch_data()
            times.append(time.perf_counter() - started)
            per_sync.append(chain.queries - before)
        assert len(broker.node("n5").state.epoch_models) == 1  # type: ignore[union-attr]
        await broker.stop()
    assert set(per_sync) == {1 + len(MODELS)}, per_sync
    result = Result(f"epoch sync, {NODES} nodes x {len(MODELS)} models", min(times) * 1000, "ms",
                    target=f"chain queries = 1 + {len(MODELS)}",
                    extra={"chain_queries_per_sync": per_sync[0], "median_ms": round(sorted(times)[len(times) // 2] * 1000, 2)})
    result.report()
    return [result]


if __name__ == "__main__":
    asyncio.run(main())
