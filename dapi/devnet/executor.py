"""Simulated peers as Executors (reference/http.md §1.13 executor path, reference/inference.md §5, §7.3).

Each peer serves `POST /v1/chat/completions` on its own HTTP server, whose URL is its participant
`inference_url` on the chain. Its ML nodes are simulated nodes (one `SimMLNodeServer` shared by all
peers, node `<peer>-<local id>`) serving the model they declare, except during PoC, when the nodes
without POC_SLOT mine (`PeerSimulator`) and so serve nothing. A request is checked (dev and TA
signatures, timestamp window, replay), its body modified (§5.1), proxied to the least busy node serving
the model with `"id"` replaced by the inference id (JSON or SSE), and once the answer has been sent the
peer submits MsgFinishInference (§5.5) through the same signed-tx path as its other txs. The peers'
validator side (`dapi.devnet.validators.PeerValidators`) runs on the same sim ML nodes.

Deliberately small: the daemon's own executor code is meant to replace this later. Deviations: a body
the reference's handler would panic on gets 400; a `prompt_tokens` of 0 is sent as it is (the sim ML
nodes always report usage, as `include_usage` is forced).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
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
from dapi.inference.request_body import RequestBodyError, decode_go, go_marshal, modify_request_body
from dapi.inference.signatures import sign, ta_signed_bytes, verify_dev_signature, verify_ta_signature
from dapi.logs import get_logger
from dapi.mlnodeclient.models import InferenceUpRequest
from dapi.runtime.serving import EmbeddedServer
from dapi.runtime.tasks import TaskOwner

__all__ = ["PeerExecutors"]

log = get_logger(__name__)

NO_NODES = "no nodes available for inference"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass(frozen=True, slots=True)
class _Call:
    """One checked executor request: the headers it was signed with and the modified body."""

    inference_id: str
    requester: str
    transfer_address: str
    timestamp: int
    ta_signature: str
    raw: bytes
    body: dict[str, Any]


@dataclass(eq=False)
class _PeerServer:
    spec: ParticipantSpec
    server: EmbeddedServer | None = None
    used_ids: set[str] = field(default_factory=set)  # Authorization values already served (replay)


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
        for name, peer in self._peers.items():
            app = Starlette(routes=[Route("/v1/chat/completions", self._route(name), methods=["POST"])])
            peer.server = EmbeddedServer(app, host=self.host)
            await peer.server.start()
            self.ledger.set_inference_url(peer.spec.address, peer.server.url)
        self._sync_nodes(self.ledger.height)

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

    # --- the executor path ---

    def _route(self, peer: str) -> Any:
        async def chat(request: Request) -> Response:
            return await self._chat(self._peers[peer], request)
        return chat

    def _check(self, peer: _PeerServer, request: Request, raw: bytes) -> _Call | Response:
        h = request.headers
        auth = h.get("Authorization", "")
        if not auth:
            return _error(401, "Authorization is required")
        inference_id, seed_text = h.get("X-Inference-Id"), h.get("X-Seed")
        if inference_id is None or seed_text is None:
            return _error(400, "simulated peers serve only as executors (X-Inference-Id and X-Seed)")
        requester, transfer = h.get("X-Requester-Address", ""), h.get("X-Transfer-Address", "")
        ta_signature = h.get("X-TA-Signature", "")
        try:
            timestamp = int(h.get("X-Timestamp", ""))
        except ValueError:
            return _error(400, "Bad Request")
        account = self.ledger.account(requester)
        if account is None or verify_dev_signature(account.public_key, raw, timestamp, transfer, auth) is None:
            return _error(401, "Unable to validate request against PubKey:signature does not verify")
        ctx = BlockContext(height=self.ledger.height, time_ns=self.ledger.now_ns(), accounts=self.ledger.accounts,
                           grants=self.ledger.grants)
        keys = ctx.keys_with_grantees(transfer, START_INFERENCE_URL)
        if verify_ta_signature(keys, raw, timestamp, transfer, peer.spec.address, ta_signature) is None:
            return _error(401, "Unable to validate request against TransferSignature:signature does not verify")
        params = self.genesis.validation_params
        offset = self.ledger.now_ns() - timestamp
        if offset > params.timestamp_expiration * 1_000_000_000:
            return _error(400, "Request timestamp is too old")
        if offset < -params.timestamp_advance * 1_000_000_000:
            return _error(400, "Request timestamp is in the future")
        if auth in peer.used_ids:
            return _error(400, "AuthKey has already been used for an executor request")
        try:
            seed = int(seed_text)
            body = modify_request_body(raw, seed)
        except (ValueError, RequestBodyError):
            return _error(400, "Bad Request")
        peer.used_ids.add(auth)
        return _Call(inference_id, requester, transfer, timestamp, ta_signature, raw, body)

    async def _chat(self, peer: _PeerServer, request: Request) -> Response:
        raw = await request.body()
        call = self._check(peer, request, raw)
        if isinstance(call, Response):
            return call
        # during PoC only the POC_SLOT nodes serve
        node = least_busy(self.nodes(peer.spec.name).values(), call.body.get("model"))
        if node is None:
            return _error(500, NO_NODES)
        assert self._http is not None
        upstream = self._http.build_request(
            "POST", self.mlnodes.node_url(node.name) + "/v1/chat/completions", content=go_marshal(call.body),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")})
        reply = await self._http.send(upstream, stream=True)
        if not reply.is_success:
            text = (await reply.aread()).decode("utf-8", errors="replace")
            await reply.aclose()
            return _error(500, f"Inference node response with an error. code = {reply.status_code}. error = {text}.")
        headers = {k: v for k, v in reply.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection")}
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(self._stream(peer, call, reply), status_code=reply.status_code, headers=headers)
        try:
            answer = decode_go(await reply.aread())
        finally:
            await reply.aclose()
        answer["id"] = call.inference_id
        payload = go_marshal(answer)
        choices = answer.get("choices") or []
        content = "".join(c.get("message", {}).get("content") or "" for c in choices)
        usage = answer.get("usage") or {}
        finish = BackgroundTask(self._finish, peer, call, content, payload.decode("utf-8"),
                                usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                str(answer.get("model", "")))
        return Response(payload, status_code=reply.status_code, headers=headers, background=finish)

    async def _stream(self, peer: _PeerServer, call: _Call, reply: httpx.Response) -> AsyncIterator[bytes]:
        events: list[str] = []
        content: list[str] = []
        usage: dict[str, Any] = {}
        model = ""
        try:
            async for line in reply.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = decode_go(line[len("data: "):].encode("utf-8"))
                    chunk["id"] = call.inference_id
                    line = "data: " + go_marshal(chunk).decode("utf-8")
                    model = model or str(chunk.get("model", ""))
                    for choice in chunk.get("choices") or []:
                        content.append((choice.get("delta") or {}).get("content") or "")
                    found = chunk.get("usage") or {}
                    if not usage and (found.get("prompt_tokens") or found.get("completion_tokens")):
                        usage = found
                events.append(line)
                yield (line + "\n").encode("utf-8")
        finally:
            await reply.aclose()
        payload = go_marshal({"events": events}).decode("utf-8")
        await self._finish(peer, call, "".join(content), payload, usage.get("prompt_tokens", 0),
                           usage.get("completion_tokens", 0), model)

    async def _finish(self, peer: _PeerServer, call: _Call, content: str, payload: str, prompt_tokens: float,
                      completion_tokens: float, model: str) -> None:
        """MsgFinishInference (inference.md §5.5); none for an empty answer or zero usage, as the reference."""
        if not content or not (prompt_tokens or completion_tokens):
            log.warning("devnet executor sends no finish", peer=peer.spec.name, inference_id=call.inference_id)
            return
        address = peer.spec.address
        signed = ta_signed_bytes(call.raw, call.timestamp, call.transfer_address, address)
        message = itx.MsgFinishInference(
            creator=address, inference_id=call.inference_id,
            response_hash=hashlib.sha256(content.encode("utf-8")).hexdigest(), response_payload=payload,
            prompt_token_count=int(prompt_tokens), completion_token_count=int(completion_tokens),
            executed_by=address, transferred_by=call.transfer_address, transfer_signature=call.ta_signature,
            executor_signature=sign(peer.spec.signer_key, signed), request_timestamp=call.timestamp,
            requested_by=call.requester, original_prompt=call.raw.decode("utf-8", errors="replace"), model=model,
        )
        result = self.peers.submit(peer.spec.name, "finish_inference", message)
        self.finished.append((peer.spec.name, call.inference_id, result.code))
