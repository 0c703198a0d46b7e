"""The executor queues MsgFinishInference before the client has the whole answer (answered ⇒ lands).

A real simulated ML node serves; the chain facts are fixed values and the sink a list, so the order can be
observed exactly: a JSON answer is handed back only once its Finish is queued, and a stream's
`data: [DONE]` comes only after it, while every chunk before it came first.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.protobuf.message import Message
from test_sim_mlnode_inference import MODEL, load

from dapi.chain.keys import SigningKey
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.executor import InferenceExecutor
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign, ta_signed_bytes

CLIENT, OWN = SigningKey(b"\x05" * 32), SigningKey(b"\x06" * 32)


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": 0.05, "nodes": ("n1",)}


class _Chain:
    height = 10

    async def account_key(self, address: str) -> bytes | None:
        return {CLIENT.address: CLIENT.public_key, OWN.address: OWN.public_key}.get(address)

    async def transfer_keys(self, address: str) -> list[bytes]:
        return [OWN.public_key] if address == OWN.address else []

    async def block_time_ns(self) -> int:
        return time.time_ns()

    def timestamp_window(self) -> tuple[int, int]:
        return 60, 30


class _Lease:
    def __init__(self, url: str) -> None:
        self.url = url

    def release(self, ok: bool) -> None:
        pass


class _Nodes:
    def __init__(self, url: str) -> None:
        self._url = url

    def lease(self, model: str) -> _Lease | None:
        return _Lease(self._url)


class _Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def submit(self, msg: Message) -> object:
        self.messages.append(msg)
        return len(self.messages)


def _request(stream: bool) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"model": MODEL, "max_tokens": 6, "stream": stream,
                       "messages": [{"role": "user", "content": "in order"}]}).encode()
    ts = time.time_ns()
    auth = sign(CLIENT, dev_signed_bytes(body, ts, OWN.address, ClientScheme.RAW))
    return {"authorization": auth, "x-requester-address": CLIENT.address, "x-timestamp": str(ts),
            "x-transfer-address": OWN.address, "x-inference-id": auth, "x-seed": "5",
            "x-ta-signature": sign(OWN, ta_signed_bytes(body, ts, OWN.address, OWN.address))}, body


async def _executor(sim: SimMLNodeServer, http: httpx.AsyncClient, sink: _Sink) -> InferenceExecutor:
    return InferenceExecutor(address=OWN.address, signer=OWN, chain=_Chain(), nodes=_Nodes(await load(http, sim, "n1")),
                             sink=sink, http=http)


async def test_a_json_answer_comes_back_only_once_its_finish_is_queued(sim: SimMLNodeServer) -> None:
    sink = _Sink()
    async with httpx.AsyncClient(timeout=30) as http:
        executor = await _executor(sim, http, sink)
        headers, body = _request(stream=False)
        reply = await executor.serve(headers, body)
    assert reply.status == 200 and reply.stream is None and reply.after is None
    assert [type(m) for m in sink.messages] == [itx.MsgFinishInference]
    assert json.loads(reply.body)["id"] == headers["x-inference-id"]


async def test_a_streams_done_line_comes_only_after_its_finish_is_queued(sim: SimMLNodeServer) -> None:
    sink = _Sink()
    queued_when: list[tuple[bool, int]] = []  # per chunk: has [DONE], messages queued by then
    async with httpx.AsyncClient(timeout=30) as http:
        executor = await _executor(sim, http, sink)
        headers, body = _request(stream=True)
        reply = await executor.serve(headers, body)
        assert reply.status == 200 and reply.stream is not None
        stream: AsyncIterator[bytes] = reply.stream
        async for chunk in stream:
            queued_when.append((b"data: [DONE]" in chunk, len(sink.messages)))
    assert queued_when[-1] == (True, 1)
    assert all(count == 0 for done, count in queued_when[:-1]) and len(queued_when) > 1
    finish = sink.messages[0]
    assert isinstance(finish, itx.MsgFinishInference) and finish.inference_id == headers["x-inference-id"]
