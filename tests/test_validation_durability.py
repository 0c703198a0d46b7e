"""SIGKILL with validations queued loses none: they run after the restart and land.

The daemon runs as a real ``dapi run`` process. Its own ML nodes answer every re-run with HTTP 500, so the
validations it selects stay queued (retried with backoff); it is killed with SIGKILL, the nodes heal, the
daemon starts again from the same data_dir, and every validation selected before the kill lands on chain.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import httpx
from test_durability import free_port, start_daemon
from validation_traffic import execute
from waiting import wait_for

from dapi.devnet import SimulatedNetwork
from dapi.devnet.daemon_config import DaemonPorts


def queued(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT inference_id, state FROM validations WHERE revalidation = 0").fetchall())


async def test_sigkill_with_validations_queued_loses_none(tmp_path: Path) -> None:
    async with SimulatedNetwork(block_time=0.05, participants=3, nodes_per_participant=2) as devnet:
        ports = DaemonPorts(free_port(), free_port(), free_port())
        config = tmp_path / "config.yaml"
        devnet.write_daemon_config(config, ports=ports, data_dir=tmp_path / "data")
        store = tmp_path / "data" / "validations.sqlite"
        for node in devnet.own.nodes:
            devnet.mlnodes.set_fault(node.local_id, status=500, path_prefix="/v1/chat/completions")
        daemon = start_daemon(config)  # from the start: it needs its seed of epoch 1 (sent at PoC start, 40)
        try:
            await devnet.wait_for_height(56, timeout=60)
            peers = devnet.genesis.peers
            async with httpx.AsyncClient(timeout=30) as http:
                for i in range(8):
                    await execute(devnet, http, executor=peers[i % 2], ta=peers[(i + 1) % 2])
            await wait_for(lambda: store.exists() and len(queued(store)) >= 2, timeout=60,
                           what="validations selected", ignore=(sqlite3.Error,))
            await wait_for(lambda: any(c.path.endswith("/v1/chat/completions") for n in devnet.own.nodes
                                       for c in devnet.mlnodes.calls(n.local_id)), timeout=30, what="a re-run tried")
            daemon.kill()  # SIGKILL
            daemon.wait(timeout=10)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        before = queued(store)
        assert before and set(before.values()) == {"queued"}  # nothing could run: none was sent
        own = devnet.own.address
        assert not devnet.ledger.state.epoch_validations.get((1, own))
        for node in devnet.own.nodes:
            devnet.mlnodes.clear_fault(node.local_id)
        daemon = start_daemon(config)
        try:
            def landed() -> bool:
                validated = set(devnet.ledger.state.epoch_validations.get((1, own), ()))
                return set(before) <= validated
            await wait_for(landed, timeout=60, what="every validation queued before the kill on chain")
            await wait_for(lambda: all(queued(store)[i] == "landed" for i in before), timeout=30,
                           what="recorded as landed", ignore=(sqlite3.Error,))
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)
