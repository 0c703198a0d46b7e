"""The daemon's inference path against the devnet over the real wire (reference/inference.md §7, http.md §1.9,
§1.11, §1.13; DESIGN.md §8): the TA's refusals with the reference's status and message, a request served in full
with Start and Finish on chain, the read routes, the executor path, node locks held for a whole stream, and the
TA's retry before the first byte.

One devnet for the module (3 participants with 2 nodes each, 0.1 s blocks): client accounts hold 10^9 ngonka, so
a large `max_tokens` cannot be escrowed, and the TA bandwidth is tiny (90 KB per block for all TAs), so a request
of 3000 tokens is over it while 20 tokens are not. The tests run in file order; the last one stops a peer's
executor server for good.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from inference_msgs import QWQ
from waiting import wait_for

from dapi.chain.epochs import EpochContext, Phase
from dapi.chain.keys import SigningKey
from dapi.chain.rpc import CometRPC
from dapi.devnet.genesis import ParticipantSpec, load_genesis
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.inference.directory import ExecutorDirectory
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign, ta_signed_bytes
from dapi.inference.transfer_agent import TransferAgent
from dapi.testbed.session import DevnetSession

pytestmark = pytest.mark.asyncio(loop_scope="module")

BLOCK = 0.1
READY = 56  # epoch 1 effective (set new validators at 53), Inference phase
CLIENT_BALANCE = 10**9
S = 1_000_000_000
DONE = (InferenceStatus.FINISHED, InferenceStatus.VALIDATED)
STRANGER = SigningKey(b"\x42" * 32)  # an account the chain has never seen


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[DevnetSession]:
    genesis = load_genesis(None, participants=3, nodes_per_participant=2, block_time=BLOCK, overrides={
        "clients": {"balance": CLIENT_BALANCE},
        "bandwidth_limits_params": {"estimated_limits_per_block_kb": 90},
    })
    async with DevnetSession(genesis=genesis, block_time=BLOCK) as s:
        s.devnet.ledger.set_inference_url(s.devnet.own.address, s.public_url)
        await s.devnet.wait_for_height(READY, timeout=60)
        await wait_for(lambda: s.daemon.view.snapshot is not None and s.daemon.view.snapshot.height >= READY,
                       timeout=30, what="daemon at the ready height")
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        yield client


def client_key(s: DevnetSession) -> SigningKey:
    return s.devnet.genesis.clients[0].key


_n = iter(range(1, 10**6))


def chat_body(*, model: str = QWQ, max_tokens: int = 20, stream: bool = False, **extra: Any) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"Hello {next(_n)}"}],
                            "max_tokens": max_tokens, **extra}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def client_headers(s: DevnetSession, body: bytes, *, key: SigningKey | None = None, ts: int | None = None,
                   requester: str | None = None, scheme: ClientScheme = ClientScheme.RAW) -> dict[str, str]:
    """What a client sends to the own daemon as TA (no X-Transfer-Address: the TA is the daemon's account)."""
    key = key or client_key(s)
    ts = s.devnet.ledger.now_ns() if ts is None else ts
    return {"authorization": sign(key, dev_signed_bytes(body, ts, s.devnet.own.address, scheme)),
            "x-requester-address": requester or key.address, "x-timestamp": str(ts),
            "content-type": "application/json"}


def executor_headers(s: DevnetSession, body: bytes, *, ta_key: SigningKey | None = None,
                     seed: int = 7) -> dict[str, str]:
    """What the own TA sends its own executor: the client's headers plus the TA's."""
    own = s.devnet.own
    headers = client_headers(s, body)
    ts = int(headers["x-timestamp"])
    signed = ta_signed_bytes(body, ts, own.address, own.address)
    return {**headers, "x-inference-id": headers["authorization"], "x-seed": str(seed),
            "x-transfer-address": own.address, "x-ta-signature": sign(ta_key or own.signer_key, signed)}


async def chat(s: DevnetSession, http: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await http.post(s.public_url + "/v1/chat/completions", content=body, headers=headers)


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


async def landed(s: DevnetSession, inference_id: str) -> Any:
    """The inference record once both Start and Finish are on chain."""
    inferences = s.devnet.ledger.state.inferences

    def done() -> bool:
        record = inferences.get(inference_id)
        return record is not None and record.status in DONE and bool(record.requested_by)

    await s.devnet.wait_until(done, timeout=30, what=f"inference {inference_id[:12]} finished on chain")
    return inferences[inference_id]


# --- the TA's refusals (inference.md §7.1) -----------------------------------------------------------


async def test_ta_refuses_with_the_references_status_and_message(session: DevnetSession,
                                                                http: httpx.AsyncClient) -> None:
    s = session
    body = chat_body()
    no_auth = client_headers(s, body)
    del no_auth["authorization"]
    assert error_of(await chat(s, http, body, no_auth)) == (401, "Authorization is required")

    stranger = STRANGER
    wrong_key = client_headers(s, body, key=stranger, requester=client_key(s).address)
    assert error_of(await chat(s, http, body, wrong_key)) == (
        401, "Unable to validate request against PubKey:invalid signature")
    tampered = body.replace(b"Hello", b"Howdy")  # signed bytes no longer match
    assert error_of(await chat(s, http, tampered, client_headers(s, body))) == (
        401, "Unable to validate request against PubKey:invalid signature")
    status, message = error_of(await chat(s, http, body, client_headers(s, body, key=stranger)))
    assert status == 401 and message.startswith("Unable to validate request against PubKey:")

    huge = chat_body(max_tokens=2_000_000)  # escrow 2·10^9 > the client's 10^9
    assert error_of(await chat(s, http, huge, client_headers(s, huge))) == (402, "Insufficient balance")

    now = s.devnet.ledger.now_ns()
    old, ahead = chat_body(), chat_body()
    assert error_of(await chat(s, http, old, client_headers(s, old, ts=now - 61 * S))) == (
        400, "Request timestamp is too old")  # the chain's 60 s, not the 10 s fallback
    assert error_of(await chat(s, http, ahead, client_headers(s, ahead, ts=now + 31 * S))) == (
        400, "Request timestamp is in the future")

    big = chat_body(max_tokens=3000)  # 1920 KB: over the TA's bandwidth of 21 blocks x 90/3 KB
    status, message = error_of(await chat(s, http, big, client_headers(s, big)))
    assert (status, message) == (429, "Transfer Agent capacity reached. Try another TA from "
                                      f"{s.daemon.config.api.public_url}/v1/epochs/current/participants")

    oversized = b'{"model":"' + QWQ.encode() + b'","messages":[],"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = await chat(s, http, oversized, client_headers(s, oversized))
    assert response.status_code == 413

    # A body the executor's modification cannot take is the client's fault: 400, nothing forwarded.
    odd = chat_body(stream_options="yes", stream=True)
    status, message = error_of(await chat(s, http, odd, client_headers(s, odd)))
    assert status == 400 and "stream_options" in message


async def test_replayed_authorization_is_refused(session: DevnetSession, http: httpx.AsyncClient) -> None:
    s = session
    body = chat_body()
    headers = client_headers(s, body)
    first = await chat(s, http, body, headers)
    assert first.status_code == 200, first.text
    assert error_of(await chat(s, http, body, headers)) == (
        400, "AuthKey has already been used for a transfer request")


# --- served in full ----------------------------------------------------------------------------------


async def test_a_signed_request_is_served_and_lands_start_and_finish(session: DevnetSession,
                                                                    http: httpx.AsyncClient) -> None:
    s = session
    body = chat_body()
    headers = client_headers(s, body)
    inference_id = headers["authorization"]
    response = await chat(s, http, body, headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == inference_id and answer["choices"][0]["message"]["content"]
    record = await landed(s, inference_id)
    assert record.assigned_to == record.executed_by != ""
    assert (record.requested_by, record.transferred_by, record.model) == (
        client_key(s).address, s.devnet.own.address, QWQ)
    assert record.original_prompt == body.decode()
    assert record.completion_token_count == answer["usage"]["completion_tokens"]
    # The chain's record through the daemon (the id is base64: '/' and '+' are escaped in the path).
    got = await http.get(s.public_url + "/v1/chat/completions/" + quote(inference_id, safe=""))
    assert got.status_code == 200, got.text
    shown = got.json()
    assert (shown["inference_id"], shown["executed_by"], shown["assigned_to"]) == (
        inference_id, record.executed_by, record.assigned_to)
    missing = await http.get(s.public_url + "/v1/chat/completions/" + quote("A" * 86 + "==", safe=""))
    assert error_of(missing) == (404, "Inference not found")


async def test_a_stream_is_served_with_the_inference_id_and_lands(session: DevnetSession,
                                                                 http: httpx.AsyncClient) -> None:
    s = session
    body = chat_body(stream=True)
    headers = client_headers(s, body, scheme=ClientScheme.SHA256_HEX)  # gonka-openai >= 0.2.4
    inference_id = headers["authorization"]
    chunks = []
    async with http.stream("POST", s.public_url + "/v1/chat/completions", content=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[len("data: "):]))
    assert chunks and all(c["id"] == inference_id for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage was forced
    record = await landed(s, inference_id)
    assert record.assigned_to == record.executed_by
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content and record.completion_token_count == chunks[-1]["usage"]["completion_tokens"]


# --- the read routes (http.md §1.9, §1.11) -----------------------------------------------------------


async def test_participant_and_epoch_participants(session: DevnetSession, http: httpx.AsyncClient) -> None:
    s = session
    client = client_key(s)
    found = await http.get(f"{s.public_url}/v1/participants/{client.address}")
    assert found.status_code == 200
    shown = found.json()
    assert shown["pubkey"] == base64.b64encode(client.public_key).decode()
    assert 0 < shown["balance"] <= CLIENT_BALANCE
    unknown = await http.get(f"{s.public_url}/v1/participants/{STRANGER.address}")
    assert unknown.status_code == 404

    current = await http.get(f"{s.public_url}/v1/epochs/current/participants")
    assert current.status_code == 200
    body = current.json()
    assert body["excluded_participants"] == []
    participants = body["active_participants"]["participants"]
    effective = s.devnet.ledger.effective_epoch().index
    assert effective >= 1 and body["active_participants"]["epoch_id"] == effective
    addresses = {p["index"] for p in participants}
    assert addresses <= {p.address for p in s.devnet.genesis.participants} and len(addresses) >= 2
    assert all(p["inference_url"].startswith("http://") and p["models"] for p in participants)
    assert len(body["addresses"]) == len(participants)
    numbered = await http.get(f"{s.public_url}/v1/epochs/{effective}/participants")
    assert numbered.json()["active_participants_bytes"] == body["active_participants_bytes"]
    # 400 as the reference, though not with its messages: the path pattern (kept for the OpenAPI fuzz test's
    # "schema-valid request rejected" check) refuses 0 and numbers over 19 digits before the handler runs.
    assert (await http.get(f"{s.public_url}/v1/epochs/0/participants")).status_code == 400
    assert (await http.get(f"{s.public_url}/v1/epochs/{2**64}/participants")).status_code == 400
    assert error_of(await http.get(f"{s.public_url}/v1/epochs/{effective + 5}/participants")) == (
        404, "No active participants found for the specified epoch. Looks like PoC failed!")


# --- the executor path (inference.md §7.3) -----------------------------------------------------------


async def test_executor_refuses_a_bad_ta_signature_and_a_model_it_cannot_serve(
        session: DevnetSession, http: httpx.AsyncClient) -> None:
    s = session
    body = chat_body()
    forged = executor_headers(s, body, ta_key=SigningKey(b"\x44" * 32))
    assert error_of(await chat(s, http, body, forged)) == (
        401, "Unable to validate request against TransferSignature:invalid signature")
    nobody = chat_body(model="no/such-model")
    response = await chat(s, http, nobody, executor_headers(s, nobody))
    assert error_of(response) == (503, "no nodes available for inference")
    assert "retry-after" in response.headers


def own_node_serving(s: DevnetSession, model: str) -> str:
    broker = s.daemon.broker
    assert broker is not None
    [node] = [n.node.id for n in broker.nodes() if model in n.node.config.models]
    return node


async def in_inference_phase(s: DevnetSession, model: str) -> None:
    """Wait for a block of the Inference phase at which an own node can take `model`, then pause the chain."""
    broker = s.daemon.broker
    assert broker is not None
    params = s.devnet.genesis.epoch_params

    def ready() -> bool:
        latest = s.devnet.ledger.latest_epoch()
        ctx = EpochContext(latest.index, latest.poc_start_block_height, params)
        height = s.devnet.ledger.height
        if ctx.phase_at(height) is not Phase.INFERENCE or height <= ctx.set_new_validators + 1:
            return False
        try:
            node = broker.lock_node(model)
        except Exception:
            return False
        broker.release_node(node.id)
        return True

    await s.devnet.wait_until(ready, timeout=30, what="an own node serving in the Inference phase")
    s.devnet.pause_blocks()
    await wait_for(lambda: s.daemon.view.snapshot is not None
                   and s.daemon.view.snapshot.height == s.devnet.ledger.height, timeout=10, what="daemon caught up")


async def test_node_lock_is_held_until_a_stream_ends(session: DevnetSession, http: httpx.AsyncClient) -> None:
    s = session
    broker = s.daemon.broker
    assert broker is not None
    await in_inference_phase(s, QWQ)
    node_id = own_node_serving(s, QWQ)
    node = broker.node(node_id)
    assert node is not None
    sim = s.devnet.mlnodes.node(node_id).capacity
    rate = sim.tokens_per_second
    node.node.config.max_concurrent = 1
    sim.configure(tokens_per_second=20.0)  # 200 tokens take seconds: the stream is open while we look
    try:
        body = chat_body(stream=True, max_tokens=200)
        async with http.stream("POST", s.public_url + "/v1/chat/completions", content=body,
                               headers=executor_headers(s, body)) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()
            assert (await anext(lines)).startswith("data: {")
            assert broker.node(node_id).state.lock_count == 1  # type: ignore[union-attr]
            second = chat_body(stream=True)
            refused = await chat(s, http, second, executor_headers(s, second))
            assert error_of(refused) == (503, "no nodes available for inference")
        # The client went away mid-stream: the lease comes back.
        await wait_for(lambda: broker.node(node_id).state.lock_count == 0,  # type: ignore[union-attr]
                       timeout=10, what="the node lock released after the client left")
        sim.configure(tokens_per_second=rate)
        third = chat_body(stream=True)
        async with http.stream("POST", s.public_url + "/v1/chat/completions", content=third,
                               headers=executor_headers(s, third)) as r:
            assert r.status_code == 200
            assert "data: [DONE]" in [line async for line in r.aiter_lines()]
        await wait_for(lambda: broker.node(node_id).state.lock_count == 0,  # type: ignore[union-attr]
                       timeout=10, what="the node lock released at the end of the stream")
    finally:
        node.node.config.max_concurrent = 500
        sim.configure(tokens_per_second=rate)
        s.devnet.resume_blocks()


async def test_the_chains_draw_is_the_fallback_when_the_participants_cannot_be_read(
        session: DevnetSession) -> None:
    """A TA whose store reads fail (its directory's RPC is unreachable) asks GetRandomExecutor instead."""
    s = session
    service = s.daemon.inference
    assert service is not None and service.ta is not None and s.daemon._http is not None
    own = s.devnet.own
    blind = ExecutorDirectory(CometRPC("http://127.0.0.1:9", timeout=1.0), s.daemon.view)
    ta = TransferAgent(address=own.address, signer=own.signer_key, chain=service.ta.chain, directory=blind,
                       local=None, sink=service.ta.sink, http=s.daemon._http, public_url=s.public_url)
    body = chat_body()
    headers = client_headers(s, body)
    reply = await ta.serve(headers, body)
    assert reply.status == 200, reply.body
    async for _ in reply.stream or _no_chunks():
        pass
    if reply.after is not None:
        await reply.after()
    record = await landed(s, headers["authorization"])
    assert record.assigned_to == record.executed_by and record.transferred_by == own.address


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""


# --- retry before the first byte (DESIGN.md §8 point 2) ----------------------------------------------


async def test_ta_retries_elsewhere_when_a_drawn_executor_is_down(session: DevnetSession,
                                                                 http: httpx.AsyncClient) -> None:
    s = session
    ta = s.daemon.inference.ta if s.daemon.inference else None
    assert ta is not None
    down: ParticipantSpec = s.devnet.genesis.peers[0]
    await s.devnet.executors.stop_peer(down.name)
    retried = ta.stats.retried
    served: list[str] = []
    for _ in range(40):
        body = chat_body()
        headers = client_headers(s, body)
        response = await chat(s, http, body, headers)
        assert response.status_code == 200, response.text
        served.append(headers["authorization"])
        if ta.stats.retried > retried:  # this one's first draw was the stopped peer
            break
    else:
        pytest.fail(f"{down.name} was never drawn in 40 requests")
    # The request whose draw hit the stopped peer was served by another, and its Start names that one.
    record = await landed(s, served[-1])
    assert record.assigned_to == record.executed_by != down.address
    for inference_id in served[:-1]:
        assert (await landed(s, inference_id)).assigned_to != down.address
