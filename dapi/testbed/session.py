"""The simulated network plus the real daemon, in one process (what ``dapi devnet`` runs).

``DevnetSession`` starts a ``SimulatedNetwork``, writes the daemon config for its own participant, and runs the
real ``Daemon`` against it over the real wire protocols; ``dapi.testbed.health`` judges the run.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dapi.chain.epochs import EpochContext
from dapi.config import load_config
from dapi.daemon import Daemon, resolve_identity
from dapi.devnet.daemon_config import DaemonPorts
from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.network import SimulatedNetwork
from dapi.devnet.peers import Misbehaviour
from dapi.logs import get_logger
from dapi.testbed.load import InferenceLoad

log = get_logger(__name__)


class DevnetSession:
    """A devnet and the real daemon of its own participant, started by ``async with`` and stopped together.

    Args:
        participants: how many participants the devnet has, the own one included (without ``genesis``).
        nodes_per_participant: how many simulated ML nodes each participant has (without ``genesis``).
        block_time: seconds between devnet blocks; None takes the genesis' block time.
        ports: the daemon's public, ML callback and admin ports; None lets the OS choose all three.
        devnet_ports: the chain RPC, chain gRPC and simulated ML node ports; 0 lets the OS choose.
        work_dir: where the daemon config, signer key and data go; None uses a temporary folder, removed on exit.
        fast_polling: shorten the daemon's poll and sync intervals to a few blocks, to suit the devnet's
            seconds-long epochs.
        genesis: the devnet genesis to run (``--genesis`` and the command line's overrides); None builds
            the default one with the counts above.
        misbehaviour: peers told to break rules from the start, by peer name.
    """

    def __init__(
        self,
        *,
        participants: int = 3,
        nodes_per_participant: int = 4,
        block_time: float | None = 0.5,
        ports: DaemonPorts | None = None,
        devnet_ports: tuple[int, int, int] = (0, 0, 0),  # chain RPC, gRPC, sim ML nodes
        work_dir: Path | None = None,
        fast_polling: bool = True,
        genesis: DevnetGenesis | None = None,
        misbehaviour: Mapping[str, Misbehaviour] | None = None,
    ) -> None:
        rpc_port, grpc_port, ml_port = devnet_ports
        if genesis is not None:
            self.devnet = SimulatedNetwork(genesis, block_time=block_time, rpc_port=rpc_port, grpc_port=grpc_port,
                                           mlnode_port=ml_port)
        else:
            self.devnet = SimulatedNetwork(participants=participants, nodes_per_participant=nodes_per_participant,
                                           block_time=block_time, rpc_port=rpc_port, grpc_port=grpc_port,
                                           mlnode_port=ml_port)
        for peer, behaviour in (misbehaviour or {}).items():
            self.devnet.peers.set_misbehaviour(peer, behaviour)
        self.ports = ports or DaemonPorts(0, 0, 0)
        self._work_dir = work_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._fast = fast_polling
        self.daemon: Daemon
        self.config_path: Path
        self.load: InferenceLoad | None = None

    @property
    def public_url(self) -> str:
        return self.daemon.servers["public"].url

    @property
    def ml_url(self) -> str:
        return self.daemon.servers["ml"].url

    @property
    def admin_url(self) -> str:
        return self.daemon.servers["admin"].url

    async def __aenter__(self) -> DevnetSession:
        if self._work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dapi-devnet-")
            self._work_dir = Path(self._tmp.name)
        await self.devnet.start()
        try:
            self.config_path = self._work_dir / "config.yaml"
            self.devnet.write_daemon_config(self.config_path, ports=self.ports, data_dir=self._work_dir / "data")
            config = load_config(self.config_path, env={})
            if self._fast:
                # Seconds-long timers suit a real chain; the devnet runs an epoch in seconds.
                config.broker.status_poll_interval = max(0.2, self.devnet.block_time * 4)
                config.broker.hardware_sync_interval = max(0.2, self.devnet.block_time * 4)
                config.outbox.poll_interval = max(0.02, self.devnet.block_time / 2)
            self.daemon = Daemon(config, resolve_identity(config))
            await self.daemon.start()
            ta = self.daemon.inference.ta if self.daemon.inference is not None else None
            if self._fast and ta is not None:
                # The TA avoids an executor that failed for 30 s, about 5 blocks of a real chain; on the
                # devnet that would be several epochs (a participant refused once at a PoC boundary stayed
                # out of the draw through the next PoC). Keep it about 5 blocks here too.
                ta.avoid_seconds = max(0.5, 5 * self.devnet.block_time)
            # The config may have asked for OS-chosen ports: the chain must name the one really served.
            self.devnet.ledger.set_inference_url(self.devnet.own.address, self.public_url)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.devnet.stop()
            raise
        return self

    def start_load(self, rps: float, seed: int) -> InferenceLoad:
        """Seeded client traffic through the own daemon as TA (`dapi devnet --load`), from the first effective
        epoch on; stopped on exit."""
        devnet = self.devnet
        ledger = devnet.ledger

        def where() -> tuple[int, str]:
            height = ledger.height
            return height, str(EpochContext.for_epoch(ledger.latest_epoch(), ledger.params).phase_at(height))

        def finished(inference_id: str) -> bool:
            record = ledger.state.inferences.get(inference_id)
            return record is not None and bool(record.executed_by)

        self.load = InferenceLoad(url=self.public_url + "/v1", transfer_address=devnet.own.address,
                                  clients=devnet.genesis.clients, models=[m.id for m in devnet.genesis.models],
                                  rps=rps, seed=seed, where=where, finished=finished,
                                  # Until the first epoch is effective no participant exists to serve.
                                  ready=lambda: devnet.wait_until(lambda: ledger.effective_epoch().index >= 1,
                                                                  timeout=None, what="the first epoch"),
                                  settle_blocks=2 * max(1, devnet.genesis.validation_params.expiration_blocks))
        self.load.start()
        return self.load

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self.load is not None:
                await self.load.stop()
            await self.daemon.stop()
        finally:
            await self.devnet.stop()
            if self._tmp is not None:
                self._tmp.cleanup()

    def ready_info(self) -> dict[str, Any]:
        return {
            "event": "ready",
            "chain_rpc": self.devnet.rpc_url,
            "chain_grpc": self.devnet.grpc_target,
            "public_api": self.public_url,
            "ml_api": self.ml_url,
            "admin_api": self.admin_url,
            "account_address": self.devnet.own.address,
            "client": self.client_info(),
        }

    def client_info(self) -> dict[str, str]:
        """What gonka-openai needs: `GonkaOpenAI(gonka_private_key=..., endpoints=[Endpoint(url=endpoint,
        address=transfer_address)])` (DESIGN.md §8)."""
        client = self.devnet.genesis.clients[0]
        return {"address": client.address, "private_key": client.private_key.hex(),
                "endpoint": self.public_url + "/v1", "transfer_address": self.devnet.own.address}
