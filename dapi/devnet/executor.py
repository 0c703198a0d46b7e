"""Simulated peers as Executors (reference/http.md §1.13 executor path, reference/inference.md §5, §7.3).

Each peer serves `POST /v1/chat/completions` on its own HTTP server, whose URL is its participant
`inference_url` on the chain. Its ML nodes are simulated nodes (one `SimMLNodeServer` shared by all
peers, node `<peer>-<local id>`) serving the model they declare, except during PoC, when the nodes
without POC_SLOT mine (`PeerSimulator`) and so serve nothing.

The requests are served by the daemon's own executor (`dapi.inference.executor.InferenceExecutor`: both
signatures, timestamp window, replay, body modification, id rewrite, MsgFinishInference), over three
devnet adapters: the ledger as its chain facts, the peer's least busy sim node serving the model as its
node pool, and the peer's signed-tx path (CheckTx at once) as its message sink. The peers' validator
side (`dapi.devnet.validators.PeerValidators`) runs on the same sim ML nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dapi.chain.epochs import EpochContext
from dapi.devnet.capacity_wiring import apply_epoch_throughput
from dapi.devnet.genesis import DevnetGenesis, ParticipantSpec
from dapi.devnet.ledger import Block, Ledger
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.inference_msgs import START_INFERENCE_URL
from dapi.devnet.mlnode import SimMLNodeServer, SimNode
from dapi.devnet.peers import PeerSimulator
from dapi.devnet.validators import PeerValidators, least_busy
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.executor import InferenceExecutor
from dapi.logs import get_logger
from dapi.mlnodeclient.models import InferenceUpRequest
from dapi.runtime.serving import EmbeddedServer
from dapi.runtime.tasks import TaskOwner

__all__ = ["PeerExecutors"]

log = get_logger(__name__)

@dataclass(eq=False)
class _PeerServer:
    spec: ParticipantSpec
    server: EmbeddedServer | None = None


class PeerExecutors:
    """The simulated peers' executor side: one HTTP server per peer, their sim ML nodes, MsgFinishInference.

    The runner calls `start()` (which sets each peer's `inference_url` on the chain), `on_block` after every
    block (node states around PoC, capacity when an epoch becomes effective) and `stop()`.
    """

    def __init__(self, ledger: Ledger, genesis: DevnetGenesis, peers: PeerSimulator, *, host: str = "127.0.0.1",
                 block_time: float) -> None:
        self.ledger = ledger
        self.genesis = genesis
        self.peers = peers
        self.host = host
        self.block_time = block_time
        self.mlnodes = SimMLNodeServer(host=host)
        self.finished: list[tuple[str, str, int]] = []  # (peer, inference id, CheckTx code) of Finishes sent
        self._peers = {spec.name: _PeerServer(spec) for spec in genesis.peers}
        for spec in genesis.peers:
            for node in spec.nodes:
                self.mlnodes.add_node(self.node_name(spec.name, node.local_id))
        self._http: httpx.AsyncClient | None = None
        self._tasks = TaskOwner("devnet-executors")
        self._capacity_epoch = -1
        self.validators = PeerValidators(ledger, genesis, peers, self.mlnodes, nodes=self.nodes)

    @staticmethod
    def node_name(peer: str, local_id: str) -> str:
        return f"{peer}-{local_id}"

    def url(self, peer: str) -> str:
        server = self._peers[peer].server
        if server is None:
            raise RuntimeError("executors not started")
        return server.url

    def nodes(self, peer: str) -> dict[str, SimNode]:
        """The peer's sim ML nodes by local id."""
        spec = self._peers[peer].spec
        return {n.local_id: self.mlnodes.node(self.node_name(peer, n.local_id)) for n in spec.nodes}

    # --- lifecycle ---

    async def start(self) -> None:
        await self.mlnodes.start()
        await self.validators.start()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        for peer in self._peers.values():
            app = Starlette(routes=[Route("/v1/chat/completions", self._route(self._executor(peer)),
                                          methods=["POST"])])
            peer.server = EmbeddedServer(app, host=self.host)
            await peer.server.start()
            self.ledger.set_inference_url(peer.spec.address, peer.server.url)
        self._sync_nodes(self.ledger.height)

    async def stop_peer(self, peer: str) -> None:
        """Take one peer's executor server down (its URL then refuses connections), as a crashed peer."""
        server = self._peers[peer].server
        if server is not None:
            await server.stop()

    async def stop(self) -> None:
        for peer in self._peers.values():
            if peer.server is not None:
                await peer.server.stop()
        await self._tasks.stop()
        await self.validators.stop()
        if self._http is not None:
            await self._http.aclose()
        await self.mlnodes.stop()

    # --- blocks ---

    def on_block(self, block: Block) -> None:
        self._sync_nodes(block.height)
        effective = self.ledger.effective_epoch().index
        if effective != self._capacity_epoch:
            self._capacity_epoch = effective
            for name, peer in self._peers.items():
                apply_epoch_throughput(self.ledger, effective, peer.spec.address, self.mlnodes, self.block_time,
                                       prefix=self.node_name(name, ""))
        self.validators.on_block(block)

    def _in_poc(self, height: int) -> bool:
        latest, effective = self.ledger.latest_epoch(), self.ledger.effective_epoch()
        if latest.index <= effective.index:
            return False
        ctx = EpochContext.for_epoch(latest, self.ledger.params)
        return ctx.start_of_poc <= height < ctx.end_of_poc_validation

    def _sync_nodes(self, height: int) -> None:
        """Nodes serve their model, but during PoC only the POC_SLOT ones (the others mine); a peer misbehaving
        with `wrong_inference_output` has its nodes serve a wrong model."""
        in_poc = self._in_poc(height)
        for name, peer in self._peers.items():
            serving = self.peers.serving_nodes(name) if in_poc else None
            wrong = self.peers.misbehaviour(name).wrong_inference_output
            for spec in peer.spec.nodes:
                node = self.mlnodes.node(self.node_name(name, spec.local_id))
                node.wrong_output = wrong
                if serving is None or spec.local_id in serving:
                    if node.model != spec.models[0]:
                        self._tasks.spawn(node.inference_up(InferenceUpRequest(model=spec.models[0])),
                                          f"inference-up-{node.name}")
                elif node.model is not None:
                    node.inference_down()

    # --- the executor path: the daemon's own executor over the ledger and the sim nodes ---

    def _executor(self, peer: _PeerServer) -> InferenceExecutor:
        assert self._http is not None
        return InferenceExecutor(address=peer.spec.address, signer=peer.spec.signer_key,
                                 chain=_LedgerFacts(self.ledger, self.genesis), nodes=_PeerNodes(self, peer.spec.name),
                                 sink=_PeerSink(self, peer.spec.name), http=self._http)

    def _route(self, executor: InferenceExecutor) -> Any:
        async def chat(request: Request) -> Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            if "x-inference-id" not in headers or "x-seed" not in headers:
                if not headers.get("authorization"):
                    return JSONResponse({"error": "Authorization is required"}, status_code=401)
                return JSONResponse({"error": "simulated peers serve only as executors (X-Inference-Id and X-Seed)"},
                                    status_code=400)
            reply = await executor.serve(headers, await request.body())
            background = BackgroundTask(reply.after) if reply.after is not None else None
            if reply.stream is not None:
                return StreamingResponse(reply.stream, status_code=reply.status, headers=reply.headers,
                                         background=background)
            return Response(reply.body, status_code=reply.status, headers=reply.headers, background=background)
        return chat


class _LedgerFacts:
    """The chain facts the executor checks against, read from the ledger directly."""

    def __init__(self, ledger: Ledger, genesis: DevnetGenesis) -> None:
        self._ledger = ledger
        self._genesis = genesis

    @property
    def height(self) -> int:
        return self._ledger.height

    async def account_key(self, address: str) -> bytes | None:
        account = self._ledger.account(address)
        return account.public_key if account is not None and account.public_key else None

    async def transfer_keys(self, address: str) -> list[bytes]:
        ledger = self._ledger
        ctx = BlockContext(height=ledger.height, time_ns=ledger.now_ns(), accounts=ledger.accounts,
                           grants=ledger.grants)
        return list(ctx.keys_with_grantees(address, START_INFERENCE_URL))

    async def block_time_ns(self) -> int:
        return self._ledger.now_ns()

    def timestamp_window(self) -> tuple[int, int]:
        params = self._genesis.validation_params
        return params.timestamp_expiration, params.timestamp_advance


@dataclass(frozen=True, slots=True)
class _SimLease:
    url: str

    def release(self, ok: bool) -> None:
        """The sim node counts its own requests in flight; nothing to give back here."""


class _PeerNodes:
    """A peer's sim ML nodes as the executor's pool: the least busy one serving the model (POC_SLOT during PoC)."""

    def __init__(self, executors: PeerExecutors, peer: str) -> None:
        self._executors = executors
        self._peer = peer

    def lease(self, model: str) -> _SimLease | None:
        node = least_busy(self._executors.nodes(self._peer).values(), model)
        return None if node is None else _SimLease(self._executors.mlnodes.node_url(node.name))


class _PeerSink:
    """MsgFinishInference signed as the peer and passed through CheckTx at once."""

    def __init__(self, executors: PeerExecutors, peer: str) -> None:
        self._executors = executors
        self._peer = peer

    async def submit(self, msg: Message) -> object:
        assert isinstance(msg, itx.MsgFinishInference)
        result = self._executors.peers.submit(self._peer, "finish_inference", msg)
        self._executors.finished.append((self._peer, msg.inference_id, result.code))
        return result
