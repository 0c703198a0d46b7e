"""PoC fan-out to 1,000 ML nodes, and the daemon's memory with 1,000 registered nodes.

The ML nodes are 1,000 simulated nodes behind one server in a child process (path segments). The
figure runs from the PoC-start block handed to the block dispatcher until the last ML node has
received its init/generate. Floor: the same 1,000 init/generate POSTs fired directly with httpx
(one shared pool, all at once). Target: at most 1.5x the floor and under 2 s.

Memory: RSS of this process (broker, dispatcher, chain view and one ML node client per node; the HTTP
servers are not started here) before the broker exists, with 1,000 nodes registered and idle (before
any fan-out), and right after the PoC fan-out (which includes the floor's 1,000-connection pool).
The broker's connections from its last poll have been closed by the ML node server's keep-alive
timeout by the time PoC starts, as in production where polls are a minute apart.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Result, rss_mib, start_child, stop_child
from dapi.broker import Broker
from dapi.chain.epochs import EpochContext, EpochParams
from dapi.chain.view import ChainView
from dapi.config import BrokerConfig, NodeConfig
from dapi.event_listener.dispatcher import Dispatcher
from dapi.event_listener.subscription import NewBlock
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData
from dapi.gen.inference.inference.epoch_pb2 import Epoch
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.params_pb2 import EpochParams as EpochParamsPb
from dapi.gen.inference.inference.params_pb2 import Params
from dapi.gen.inference.inference.query_pb2 import QueryEpochInfoResponse
from dapi.logs import configure_logging
from dapi.mlnodeclient import build_init_dto, create_http_client

NODES = 1000
MODEL = "Qwen/Qwen2.5-7B-Instruct"
PARAMS = EpochParams(epoch_length=40, poc_stage_duration=6, poc_exchange_duration=2, poc_validation_delay=1,
                     poc_validation_duration=4, set_new_validators_delay=2)
POC_START = 40
BLOCK_HASH = "AB" * 32
PUBKEY = "02" + "cd" * 32


class Chain:
    """Just enough chain for the broker and the dispatcher: epoch 1's PoC is starting."""

    async def models_all(self) -> list[Model]:
        return [Model(id=MODEL, units_of_compute_per_token=100)]

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData:
        return EpochGroupData(epoch_index=epoch_index)

    async def current_epoch_group_data(self) -> EpochGroupData:
        return EpochGroupData(epoch_index=0)

    async def hardware_nodes(self, participant: str) -> HardwareNodes:
        return HardwareNodes(participant=participant)

    async def block_hash(self, height: int) -> str:
        return BLOCK_HASH

    async def status(self) -> Any:
        class Status:
            catching_up = False
            latest_block_height = POC_START

        return Status()

    async def epoch_info(self, height: int = 0) -> QueryEpochInfoResponse:
        params = Params(epoch_params=EpochParamsPb(
            epoch_length=PARAMS.epoch_length, poc_stage_duration=PARAMS.poc_stage_duration,
            poc_exchange_duration=PARAMS.poc_exchange_duration, poc_validation_delay=PARAMS.poc_validation_delay,
            poc_validation_duration=PARAMS.poc_validation_duration,
            set_new_validators_delay=PARAMS.set_new_validators_delay))
        return QueryEpochInfoResponse(block_height=POC_START, params=params,
                                      latest_epoch=Epoch(index=1, poc_start_block_height=POC_START))


async def generate_times(http: httpx.AsyncClient, base: str) -> list[float]:
    """Wall-clock times (as the ML node recorded them) of every init/generate each node received."""
    async def one(i: int) -> list[float]:
        calls = (await http.get(f"{base}/sim/nodes/n{i}/calls")).json()["calls"]
        return [c["time"] for c in calls if c["path"].endswith("/pow/init/generate")]

    per_node = await asyncio.gather(*(one(i) for i in range(NODES)))
    return [t for times in per_node for t in times]


async def reset(http: httpx.AsyncClient, base: str) -> None:
    await asyncio.gather(*(http.post(f"{base}/nodes/n{i}/api/v1/stop") for i in range(NODES)))
    await asyncio.gather(*(http.delete(f"{base}/sim/nodes/n{i}/calls") for i in range(NODES)))


async def main() -> list[Result]:
    configure_logging({"DAPI_LOG_LEVEL": "WARNING"})
    proc, ready = start_child("benchmarks.serve_mlnodes", "--nodes", str(NODES))
    base = f"http://127.0.0.1:{ready['port']}"
    http = create_http_client(max_connections=NODES)
    results: list[Result] = []
    try:
        rss_before = rss_mib(os.getpid())
        with tempfile.TemporaryDirectory() as tmp:
            chain = Chain()
            broker = Broker(chain=chain, participant_address="gonka1benchmark", participant_pubkey_hex=PUBKEY,
                            poc_callback_url="http://127.0.0.1:9", data_dir=Path(tmp),
                            settings=BrokerConfig(status_poll_interval=3600, hardware_sync_interval=3600),
                            tx_sink=None, reconcile_interval=3600)
            await broker.start()
            configs = [NodeConfig(id=f"n{i}", host="127.0.0.1", poc_port=ready["port"], poc_segment=f"/nodes/n{i}",
                                  inference_port=ready["port"], inference_segment=f"/nodes/n{i}",
                                  models={MODEL: {"args": []}}) for i in range(NODES)]
            registered = await broker.register_many(configs)
            assert all(not isinstance(r, Exception) for r in registered)
            await broker.poll_now(force=True)  # every node's current state is known, as after a minute of running
            rss_idle = rss_mib(os.getpid())
            # Floor: the 1,000 POSTs alone.
            dto = build_init_dto(block_height=POC_START, block_hash=BLOCK_HASH, public_key=PUBKEY, node_num=1,
                                 node_count=NODES + 1, callback_url="http://127.0.0.1:9").model_dump(mode="json")
            floors = []
            for _ in range(3):
                await reset(http, base)
                started = time.time()
                responses = await asyncio.gather(*(http.post(f"{base}/nodes/n{i}/api/v1/pow/init/generate",
                                                             json={**dto, "node_id": i + 1}) for i in range(NODES)))
                assert all(r.status_code == 200 for r in responses)
                floors.append(max(await generate_times(http, base)) - started)
            await reset(http, base)

            dispatcher = Dispatcher(rpc=chain, query=chain, broker=broker, view=ChainView(),  # type: ignore[arg-type]
                                    seeds=None, validator=None)
            started = time.time()
            await dispatcher.process(NewBlock(POC_START, BLOCK_HASH), False)
            deadline = time.monotonic() + 60
            while True:
                snapshot = (await http.get(f"{base}/sim/nodes")).json()["nodes"]
                if sum(1 for n in snapshot if n["state"] == "POW") == NODES or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            times = await generate_times(http, base)
            fanout = max(times) - started
            rss_poc = rss_mib(os.getpid())
            await broker.stop()
        ctx = EpochContext(1, POC_START, PARAMS)
        assert ctx.is_start_of_poc(POC_START)
        result = Result(f"PoC fan-out to {NODES} ML nodes", fanout * 1000, "ms", floor=min(floors) * 1000,
                        target="<= 1.5x floor and < 2000 ms", extra={"init_generate_received": len(times)})
        result.report()
        results.append(result)
        memory = Result(f"RSS with {NODES} registered nodes, idle", rss_idle, "MiB",
                        extra={"before_broker_mib": round(rss_before, 1), "after_poc_fanout_mib": round(rss_poc, 1)})
        memory.report()
        results.append(memory)
    finally:
        await http.aclose()
        stop_child(proc)
    return results


if __name__ == "__main__":
    asyncio.run(main())
