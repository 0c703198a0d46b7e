"""Child processes of the inference benchmark: an instant ML node, an executor server and a TA server.

* ``--role mlnode``: a vLLM-shaped `/v1/chat/completions` that answers a fixed 200-token completion at
  once (JSON, or an SSE stream with one chunk per token, a usage chunk and ``[DONE]``). A bare asyncio
  protocol rather than an ASGI app, so that the node costs as little as possible and the hops in front
  of it are what is measured.
* ``--role executor``: the real public app with the inference routes and a real `InferenceExecutor`
  (its node pool leases the ML node above, `max_concurrent` out of reach; Finish messages go to an
  in-memory list, not the outbox).
* ``--role ta``: the real public app with a real `TransferAgent`; its directory draws from the
  ActiveParticipants served by the fake chain, whose one participant is the executor server.

Both daemon roles read the chain through `ChainFacts` / `ExecutorDirectory` over a `CometRPC` whose
`call` answers from memory and counts every query (`GET /bench/chain-queries`). The chain's height
and block time never change, so the per-block caches are warm after the first request: a query seen
during the measurement would be a query on the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

from google.protobuf.message import Message

from dapi.chain.epochs import Epoch, EpochParams
from dapi.chain.keys import SigningKey
from dapi.chain.query import INFERENCE_QUERY, AbciTransport, ChainQuery
from dapi.chain.rpc import CometRPC
from dapi.chain.store import STORE_KEY_PATH, active_participants_key
from dapi.chain.view import ChainSnapshot, ChainView
from dapi.gen.inference.inference import query_pb2 as q
from dapi.gen.inference.inference.activeparticipants_pb2 import ActiveParticipant, ActiveParticipants
from dapi.gen.inference.inference.params_pb2 import Params
from dapi.inference.service import build_inference, inference_http
from dapi.runtime.serving import EmbeddedServer
from dapi.server.public.app import create_public_app
from dapi.server.public.inference_routes import add_inference_routes

MODEL = "Qwen/QwQ-32B"
TOKENS = 200
CLIENT_KEY = SigningKey(b"\x11" * 32)
TA_KEY = SigningKey(b"\x22" * 32)
EXECUTOR_KEY = SigningKey(b"\x33" * 32)
# Epoch 1 started its PoC at 40; with the default epoch params its set-new-validators is at 61, so at
# height 70 epoch 1 is effective, the phase is Inference and no POC_SLOT filter applies.
HEIGHT = 70
EPOCH = Epoch(1, 40)
WINDOW_SECONDS = 3600  # timestamp window: requests are signed up to a few minutes before they are sent
BALANCE = 10**18  # escrow is reserved per request until the next block, which never comes here


# --- the instant ML node -----------------------------------------------------------------------------

def _completion() -> bytes:
    content = "".join(f" tok{i}" for i in range(TOKENS))
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": TOKENS, "total_tokens": 12 + TOKENS},
    }, separators=(",", ":")).encode()


def _stream() -> bytes:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": MODEL}
    events = [{**head, "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}]}
              for i in range(TOKENS)]
    events.append({**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": TOKENS,
                                                    "total_tokens": 12 + TOKENS}})
    text = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + "data: [DONE]\n\n"
    return text.encode()


def _http(body: bytes, content_type: str) -> bytes:
    return (f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


JSON_ANSWER = _http(_completion(), "application/json")
# Content-Length rather than chunked: the node writes the whole stream at once anyway, and the executor
# reads it line by line from the body either way.
SSE_ANSWER = _http(_stream(), "text/event-stream")


class InstantNode(asyncio.Protocol):
    """Keep-alive HTTP/1.1: every POST is answered with the precomputed JSON or SSE answer."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) \
                if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            assert self.transport is not None
            streamed = b'"stream":true' in body.replace(b" ", b"")
            self.transport.write(SSE_ANSWER if streamed else JSON_ANSWER)


# --- the fake chain ----------------------------------------------------------------------------------

class CountingRPC(CometRPC):
    """CometBFT RPC answered from memory: status, the inference queries (ABCI) and the participants key."""

    def __init__(self, executor_url: str) -> None:
        super().__init__("http://chain.invalid")
        self.block_time = time.time_ns()
        keys = {k.address: base64.b64encode(k.public_key).decode() for k in (CLIENT_KEY, TA_KEY, EXECUTOR_KEY)}
        self.keys = keys
        participant = ActiveParticipant(index=EXECUTOR_KEY.address, weight=1, inference_url=executor_url,
                                        models=[MODEL])
        self.participants = ActiveParticipants(participants=[participant], epoch_group_id=1,
                                               poc_start_block_height=EPOCH.poc_start_block_height)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        params = params or {}
        if method == "status":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.block_time // 10**9))
            return {"node_info": {"network": "bench"}, "sync_info": {
                "latest_block_height": str(HEIGHT), "latest_block_hash": "AB", "catching_up": False,
                "latest_block_time": f"{stamp}.{self.block_time % 10**9:09d}Z"}}
        if method == "abci_query":
            value = self._answer(params["path"], bytes.fromhex(params["data"]))
            return {"response": {"code": 0, "value": base64.b64encode(value.SerializeToString()).decode(),
                                 "height": str(HEIGHT)}}
        raise AssertionError(f"the benchmark's chain does not answer {method}")

    def _answer(self, path: str, data: bytes) -> Message:
        if path == STORE_KEY_PATH:
            assert data == active_participants_key(EPOCH.index), data
            return self.participants
        method = path.removeprefix(INFERENCE_QUERY)
        if method == "InferenceParticipant":
            address = q.QueryInferenceParticipantRequest.FromString(data).address
            return q.QueryInferenceParticipantResponse(pubkey=self.keys[address], balance=BALANCE)
        if method == "GranteesByMessageType":
            return q.QueryGranteesByMessageTypeResponse()  # the TA signs with its account key
        if method == "GetModelPerTokenPrice":
            return q.QueryGetModelPerTokenPriceResponse(price=1, found=True)
        raise AssertionError(f"the benchmark's chain does not answer {path}")


def snapshot() -> ChainSnapshot:
    params = Params()
    params.validation_params.timestamp_expiration = WINDOW_SECONDS
    params.validation_params.timestamp_advance = WINDOW_SECONDS
    params.validation_params.expiration_blocks = 20
    return ChainSnapshot(height=HEIGHT, block_hash="AB", latest_epoch=EPOCH, params=params,
                         epoch_params=EpochParams(), synced=True)


class _Lease:
    def __init__(self, pool: InstantPool) -> None:
        self._pool = pool

    @property
    def url(self) -> str:
        return self._pool.url

    def release(self, ok: bool) -> None:
        self._pool.in_use -= 1


class InstantPool:
    """The executor's node pool: one ML node whose `max_concurrent` is never reached."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.in_use = 0

    def lease(self, model: str) -> _Lease | None:
        self.in_use += 1
        return _Lease(self)


class ListSink:
    """Start/Finish messages kept in memory (the outbox's cost is the ingestion benchmark's subject)."""

    def __init__(self) -> None:
        self.messages = 0

    async def submit(self, msg: Message) -> object:
        self.messages += 1
        return None


async def serve_role(role: str, *, mlnode_url: str, executor_url: str) -> int:
    key = TA_KEY if role == "ta" else EXECUTOR_KEY
    rpc = CountingRPC(executor_url)
    view = ChainView()
    view.update(snapshot())
    sink = ListSink()
    # The daemon's own client (sharded httpx pools, idle connections dropped after 4 s).
    http: Any = inference_http()
    timeout: Any = None
    if os.environ.get("DAPI_BENCH_HTTPX2"):
        # Diagnosis only: httpx2 (a dependency of gonka-openai, so installed with the test extras) has
        # the connection-pool fixes that httpcore 1.0.9 lacks; its timeouts must be its own type.
        import httpx2
        limits = dict(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=4.0)
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(300.0, connect=5.0), limits=httpx2.Limits(**limits))
        timeout = httpx2.Timeout(300.0, connect=5.0)
    service = build_inference(address=key.address, signer=key, query=ChainQuery(AbciTransport(rpc)), rpc=rpc,
                              view=view, nodes=InstantPool(mlnode_url), sink=sink, http=http,
                              public_url="http://127.0.0.1", timeout=timeout)

    async def no_batches(height: int) -> list[Any]:
        return []

    app = create_public_app(cache=_NoModels(), chain=view, status=lambda: {}, poc_batches=no_batches,
                            inference=service)
    add_inference_routes(app, service)

    @app.get("/bench/chain-queries")
    async def chain_queries() -> dict[str, int]:
        return {"queries": rpc.calls, "messages": sink.messages}

    server = EmbeddedServer(app)
    await server.start()
    return server.port


class _NoModels:
    effective: tuple[()] = ()
    unit_of_compute_price = 1
    version = 1

    def models(self) -> tuple[()]:
        return ()

    def governance_models(self) -> tuple[()]:
        return ()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["mlnode", "executor", "ta"], required=True)
    parser.add_argument("--mlnode-url", default="")
    parser.add_argument("--executor-url", default="")
    args = parser.parse_args()
    if args.role == "mlnode":
        server = await asyncio.get_running_loop().create_server(InstantNode, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        port = await serve_role(args.role, mlnode_url=args.mlnode_url, executor_url=args.executor_url)
    print(json.dumps({"port": port}), flush=True)
    # The parent reads only the ready line: anything logged later goes to stderr, so that a full stdout
    # pipe can never stall a server in the middle of the measurement.
    os.dup2(2, 1)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if os.environ.get("DAPI_BENCH_PROFILE"):  # diagnosis: cProfile of each child, dumped when it is stopped
        import cProfile
        import signal
        profiler = cProfile.Profile()
        profiler.enable()

        def dump(*_: object) -> None:
            profiler.disable()
            profiler.dump_stats(f"/tmp/prof-{sys.argv[sys.argv.index('--role') + 1]}.out")
            os._exit(0)
        signal.signal(signal.SIGTERM, dump)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
