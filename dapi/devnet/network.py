"""The simulated network: ledger, wire servers, peers and the own participant's simulated ML nodes, on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dapi.chain.epochs import Epoch
from dapi.devnet.capacity_wiring import apply_epoch_throughput
from dapi.devnet.daemon_config import DaemonConfigFiles, DaemonPorts, write_daemon_config
from dapi.devnet.executor import PeerExecutors
from dapi.devnet.genesis import DEFAULT_GENESIS_PATH, DevnetGenesis, ParticipantSpec, load_genesis
from dapi.devnet.ledger import CODESPACE_SDK, Block, EpochReport, Ledger, SdkCode
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.devnet.peers import Misbehaviour, PeerSimulator
from dapi.devnet.schedule.records import Model
from dapi.devnet.wire.grpc_server import DevnetGrpcServer
from dapi.devnet.wire.queries import QueryRouter
from dapi.devnet.wire.rpc_server import CometRpcServer
from dapi.logs import get_logger
from dapi.runtime.tasks import TaskOwner

__all__ = ["SimulatedNetwork"]

log = get_logger(__name__)


class SimulatedNetwork:
    """A running devnet: `async with SimulatedNetwork(block_time=0.02) as devnet: ...` (ports chosen by the OS).

    Args:
        genesis: the network to simulate; None loads config/devnet.yaml (or the built-in defaults) with the
            counts and block time given here.
        participants: how many participants, the own one included (only without `genesis`).
        nodes_per_participant: how many ML nodes each participant has (only without `genesis`).
        block_time: seconds between blocks; None takes the genesis' block time.
        host: the address every server binds.
        rpc_port: the CometBFT RPC and websocket port; 0 lets the OS choose (as for the next two).
        grpc_port: the gRPC port of queries and broadcasts.
        mlnode_port: the one port of the own participant's simulated ML nodes.
        mlnode_batch_interval: seconds between the batches a generating sim ML node posts; None: the block time.
        mlnode_nonces_per_batch: nonces in each of those batches.
        produce_blocks: False starts with the block timer paused (use `step()` or `resume_blocks()`).

    Attributes: `genesis`, `ledger` (Ledger: state, stored batches/validations/seeds/claims, groups,
    tx results), `peers` (PeerSimulator), `executors` (PeerExecutors: the peers' inference servers at their
    inference_url, their sim ML nodes, the Finishes they sent), `mlnodes` (SimMLNodeServer with the own
    participant's nodes node1..nodeM), `own` (the own ParticipantSpec: address, account and signer keys, nodes),
    `rpc_url`, `websocket_url`, `grpc_target`, `mlnode_url`.

    Hooks for tests and the daemon's end-to-end tests:
    - `set_governance_model(model)` / `remove_governance_model(model_id)`: governance change now, mid-epoch;
    - `inject_checktx_fault(count, code=20, codespace="sdk", log="")`: the next `count` externally
      broadcast txs get that CheckTx answer (20 "mempool is full" is retriable; pass e.g. 4 for a
      non-retriable one) and are dropped; `clear_checktx_faults()` forgets the ones not used up;
    - `pause_blocks()` / `pause_at(h)` / `resume_blocks()` / `await step(n)`: stop the block timer (now, or
      right after block h), make blocks by hand;
    - `await drop_websockets()`: close every websocket connection (catch-up tests);
    - `set_catching_up(flag)`: what `status` reports as sync_info.catching_up;
    - `set_misbehaving(peer=None, mine_with_poc_slot_nodes=True, skip_seed=True, forge_batches=False)`
      (`None`: the first peer) and `set_misbehaving(peer, behave=True)` to restore;
    - `await wait_for_height(h)`, `await wait_for_epoch(k)` (epoch k effective), `await wait_for_formed(k)`,
      `await wait_until(predicate)` — each checked after every block, with a timeout (TimeoutError);
    - `report(k)` / `reports()`: per-epoch members, weights, allocations and (once settled) rewards;
    - read the ledger's store through `ledger`: `batches(stage)`, `validations(stage)`, `seeds(epoch)`,
      `claims()`, `epoch_groups(k)`, `active_participants(k)`, `tx(hash)`.
    - `write_daemon_config(path, ports=DaemonPorts(), use_grpc=True, data_dir=None)` and
      `ready_info(ports)` (the ready line of DESIGN.md §4.1) for `dapi devnet --no-daemon` and for tests
      that start the real daemon against the devnet.
    """

    def __init__(
        self,
        genesis: DevnetGenesis | None = None,
        *,
        participants: int | None = None,
        nodes_per_participant: int | None = None,
        block_time: float | None = None,
        host: str = "127.0.0.1",
        rpc_port: int = 0,
        grpc_port: int = 0,
        mlnode_port: int = 0,
        mlnode_batch_interval: float | None = None,
        mlnode_nonces_per_batch: int = 32,
        produce_blocks: bool = True,
    ) -> None:
        if genesis is None:
            path = DEFAULT_GENESIS_PATH if DEFAULT_GENESIS_PATH.exists() else None
            genesis = load_genesis(path, participants=participants, nodes_per_participant=nodes_per_participant,
                                   block_time=block_time)
        elif participants is not None or nodes_per_participant is not None:
            raise ValueError("pass participant counts either through the genesis or as arguments, not both")
        self.genesis = genesis
        self.block_time = block_time if block_time is not None else genesis.block_time
        if self.block_time <= 0:
            raise ValueError("block_time must be positive")
        self.host = host
        self.ledger = Ledger(genesis)
        self.peers = PeerSimulator(self.ledger, genesis)
        self.executors = PeerExecutors(self.ledger, genesis, self.peers, host=host, block_time=self.block_time)
        self.router = QueryRouter(self.ledger)
        self.rpc = CometRpcServer(self.ledger, self.router, host=host, port=rpc_port)
        self.grpc = DevnetGrpcServer(self.ledger, self.router, host=host, port=grpc_port)
        self.mlnodes = SimMLNodeServer(
            host=host,
            port=mlnode_port,
            batch_interval=mlnode_batch_interval if mlnode_batch_interval is not None else max(self.block_time, 0.01),
            nonces_per_batch=mlnode_nonces_per_batch,
        )
        for node in genesis.own.nodes:
            self.mlnodes.add_node(node.local_id)
        self._running = asyncio.Event()
        if produce_blocks:
            self._running.set()
        self._block_event = asyncio.Event()
        self._pause_at: int | None = None
        self._capacity_epoch = -1  # the effective epoch whose throughput the sim nodes serve at
        self._tasks = TaskOwner("devnet")
        self._crash: BaseException | None = None
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("devnet already started")
        self._started = True
        try:
            await self.mlnodes.start()
            await self.executors.start()
            await self.grpc.start()
            await self.rpc.start()
        except BaseException:
            await self.stop()
            raise
        self._tasks.spawn(self._block_loop(), "devnet-blocks").add_done_callback(self._on_block_task_done)
        log.info("devnet started", rpc=self.rpc_url, grpc=self.grpc_target, mlnodes=self.mlnode_url,
                 participants=len(self.genesis.participants), block_time=self.block_time)

    async def stop(self) -> None:
        await self._tasks.stop()
        await self.rpc.stop()
        await self.grpc.stop()
        await self.executors.stop()
        await self.mlnodes.stop()

    async def __aenter__(self) -> SimulatedNetwork:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_block_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # the task owner has logged it
            self._crash = exc
            self._pulse()  # wake waiters so they see the crash instead of timing out

    # --- blocks ------------------------------------------------------------------------------------

    async def _block_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.block_time
        while True:
            await self._running.wait()
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self._running.is_set():
                continue  # paused while waiting
            self._produce()
            # After a pause or a slow block, continue from now instead of bursting to catch up.
            next_at = max(next_at + self.block_time, loop.time())

    def _produce(self) -> Block:
        block = self.ledger.make_block()
        try:
            self.peers.on_block(block)
        except Exception:  # a peer bug must not stop the chain
            log.exception("devnet peers failed on a block", height=block.height)
        try:
            self.executors.on_block(block)
        except Exception:
            log.exception("devnet executors failed on a block", height=block.height)
        self._apply_capacity()
        self.rpc.publish(block)
        if self._pause_at is not None and block.height >= self._pause_at:
            self._pause_at = None
            self._running.clear()
        self._pulse()
        return block

    def _apply_capacity(self) -> None:
        """When an epoch becomes effective, every sim ML node serves at its chain throughput (DESIGN §6.1)."""
        epoch_index = self.ledger.effective_epoch().index
        if epoch_index == self._capacity_epoch:
            return
        self._capacity_epoch = epoch_index
        applied = apply_epoch_throughput(self.ledger, epoch_index, self.own.address, self.mlnodes, self.block_time)
        if applied:
            log.info("devnet sim nodes serve their chain throughput", epoch=epoch_index, tokens_per_block=applied)

    def _pulse(self) -> None:
        event, self._block_event = self._block_event, asyncio.Event()
        event.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause_blocks(self) -> None:
        self._running.clear()

    def resume_blocks(self) -> None:
        self._running.set()

    def pause_at(self, height: int) -> None:
        """Pause block production right after block `height` is made (deterministic, unlike a waiter)."""
        if height <= self.ledger.height:
            raise ValueError(f"height {height} is already made (chain at {self.ledger.height})")
        self._pause_at = height

    async def step(self, count: int = 1) -> list[Block]:
        """Make `count` blocks now; only while paused, so the timer cannot interleave its own."""
        if not self.paused:
            raise RuntimeError("step() needs paused block production (pause_blocks())")
        blocks = []
        for _ in range(count):
            blocks.append(self._produce())
            await asyncio.sleep(0)  # let websocket senders and servers run between blocks
        return blocks

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float | None = 60.0, what: str = "") -> None:
        """Wait until `predicate()` holds, checking after every block."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._block_event
                    if self._crash is not None:
                        raise RuntimeError("devnet block production crashed") from self._crash
                    if predicate():
                        return
                    await event.wait()
        except TimeoutError:
            raise TimeoutError(f"devnet: timed out after {timeout}s waiting for {what or predicate!r} "
                               f"(height {self.ledger.height})") from None

    async def wait_for_height(self, height: int, *, timeout: float = 60.0) -> Block:
        await self.wait_until(lambda: self.ledger.height >= height, timeout=timeout, what=f"height {height}")
        block = self.ledger.block(height)
        assert block is not None
        return block

    async def wait_for_epoch(self, epoch_index: int, *, timeout: float = 120.0) -> EpochReport | None:
        """Wait until epoch `epoch_index` is effective (formed and switched to); returns its report."""
        await self.wait_until(lambda: self.ledger.effective_epoch().index >= epoch_index, timeout=timeout,
                              what=f"epoch {epoch_index} effective")
        return self.ledger.report(epoch_index)

    async def wait_for_formed(self, epoch_index: int, *, timeout: float = 120.0) -> EpochReport:
        await self.wait_until(lambda: self.ledger.report(epoch_index) is not None, timeout=timeout,
                              what=f"epoch {epoch_index} formed")
        report = self.ledger.report(epoch_index)
        assert report is not None
        return report

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        return self.rpc.url

    @property
    def websocket_url(self) -> str:
        return self.rpc.websocket_url

    @property
    def grpc_target(self) -> str:
        return self.grpc.target

    @property
    def mlnode_url(self) -> str:
        return self.mlnodes.url

    @property
    def own(self) -> ParticipantSpec:
        return self.genesis.own

    @property
    def effective_epoch(self) -> Epoch:
        return self.ledger.effective_epoch()

    @property
    def latest_epoch(self) -> Epoch:
        return self.ledger.latest_epoch()

    # --- hooks -------------------------------------------------------------------------------------

    def set_governance_model(self, model: Model) -> None:
        self.ledger.set_governance_model(model)

    def remove_governance_model(self, model_id: str) -> None:
        self.ledger.remove_governance_model(model_id)

    def inject_checktx_fault(
        self, count: int, *, code: int = SdkCode.MEMPOOL_IS_FULL, codespace: str = CODESPACE_SDK, log: str = ""
    ) -> None:
        self.ledger.inject_checktx_fault(count, code=code, codespace=codespace, log=log)

    def clear_checktx_faults(self) -> None:
        self.ledger.clear_checktx_faults()

    async def drop_websockets(self) -> int:
        return await self.rpc.drop_websockets()

    def set_catching_up(self, catching_up: bool) -> None:
        self.ledger.catching_up = catching_up

    def set_misbehaving(
        self,
        peer: str | None = None,
        *,
        mine_with_poc_slot_nodes: bool = True,
        skip_seed: bool = True,
        forge_batches: bool = False,
        behave: bool = False,
    ) -> str:
        """Make a peer (default: the first) break the rules; `behave=True` restores it. Returns its name."""
        name = peer if peer is not None else self.peers.names[0]
        behaviour = Misbehaviour() if behave else Misbehaviour(
            mine_with_poc_slot_nodes=mine_with_poc_slot_nodes, skip_seed=skip_seed, forge_batches=forge_batches
        )
        self.peers.set_misbehaviour(name, behaviour)
        return name

    def report(self, epoch_index: int) -> EpochReport | None:
        return self.ledger.report(epoch_index)

    def reports(self) -> list[EpochReport]:
        return self.ledger.reports()

    # --- the daemon's side -------------------------------------------------------------------------

    def write_daemon_config(
        self,
        path: str | os.PathLike[str],
        *,
        ports: DaemonPorts | None = None,
        use_grpc: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> DaemonConfigFiles:
        """Write the daemon's config for this running devnet (see dapi.devnet.daemon_config).

        The default data_dir is new for every devnet run (`dapi-data/<chain id>-<genesis time>` beside
        the config): the chain starts from genesis each time, and a daemon's persisted seeds, node
        numbers and outbox from an earlier run belong to a chain that no longer exists.
        """
        config_path = Path(path).expanduser().resolve()
        if data_dir is None:
            seconds, nanos = divmod(self.ledger.genesis_time_ns, 1_000_000_000)
            stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%dT%H%M%S") + f".{nanos // 1_000_000:03d}Z"
            data_dir = config_path.parent / "dapi-data" / f"{self.genesis.chain_id}-{stamp}"
        files = write_daemon_config(
            config_path, self.genesis, chain_rpc=self.rpc_url, chain_grpc=self.grpc_target,
            mlnode_host=self.host, mlnode_port=self.mlnodes.port, ports=ports, use_grpc=use_grpc,
            data_dir=data_dir,
        )
        # The chain's participant record points at the daemon that config will start.
        self.ledger.set_inference_url(self.own.address, files.ports.public_api)
        return files

    def ready_info(self, ports: DaemonPorts | None = None) -> dict[str, Any]:
        """The `{"event": "ready", ...}` line of DESIGN.md §4.1 (daemon URLs: where its config serves)."""
        ports = ports or DaemonPorts()
        return {
            "event": "ready",
            "chain_rpc": self.rpc_url,
            "chain_grpc": self.grpc_target,
            "public_api": ports.public_api,
            "ml_api": ports.ml_api,
            "admin_api": ports.admin_api,
            "account_address": self.own.address,
            "signer_address": self.own.signer_address,
            "chain_id": self.genesis.chain_id,
            "mlnodes": self.mlnode_url,
        }
