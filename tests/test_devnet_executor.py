"""Simulated peers as Executors, on loopback: a TA-signed request sent to a peer's inference_url is answered
by the peer's sim ML nodes, and the peer's MsgFinishInference lands (reference/http.md §1.13, inference.md §5).

The test plays the client and the TA (the own participant, whose daemon does not run here): it signs the
request, sends MsgStartInference through the ledger and the request to the peer, as the TA would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from dapi.chain.tx import TxSigner
from dapi.devnet import SimulatedNetwork
from dapi.devnet.capacity_wiring import epoch_throughput
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.devnet.peers import Misbehaviour
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.request_body import modify_request_body, prompt_hash, prompt_payload
from dapi.inference.signatures import dev_signed_bytes, sign, ta_signed_bytes

QWEN = "Qwen/Qwen2.5-7B-Instruct"
READY = 55  # epoch 1 (the two peers) effective, Inference phase


@dataclass
class Sent:
    inference_id: str
    headers: dict[str, str]
    raw: bytes


def _request(devnet: SimulatedNetwork, *, stream: bool = False, forge_ta: bool = False, start: bool = True) -> Sent:
    """Sign a request as the client and the TA (own), for peer1; send MsgStartInference unless told not to."""
    genesis = devnet.genesis
    client, ta, peer = genesis.clients[0], genesis.own, genesis.peers[0]
    body = {"model": QWEN, "messages": [{"role": "user", "content": f"hello {devnet.ledger.height}"}],
            "max_tokens": 12, "stream": stream}
    raw = json.dumps(body).encode()
    ts = devnet.ledger.now_ns()
    inference_id = sign(client.key, dev_signed_bytes(raw, ts, ta.address))
    ta_key = client.key if forge_ta else ta.signer_key
    ta_signature = sign(ta_key, ta_signed_bytes(raw, ts, ta.address, peer.address))
    seed = 4242
    if start:
        payload = prompt_payload(modify_request_body(raw, seed))
        message = itx.MsgStartInference(
            creator=ta.address, inference_id=inference_id, prompt_hash=prompt_hash(payload), prompt_payload=payload,
            model=QWEN, requested_by=client.address, assigned_to=peer.address, max_tokens=12, prompt_token_count=8,
            request_timestamp=ts, transfer_signature=ta_signature, original_prompt=raw.decode(),
        )
        account = devnet.ledger.account(ta.signer_address)
        assert account is not None
        signer = TxSigner(ta.signer_key, chain_id=devnet.ledger.chain_id, account_number=account.account_number,
                          account_address=ta.address, clock_ns=devnet.ledger.now_ns)
        check = devnet.ledger.check_tx(signer.sign([message]).raw)
        assert check.ok, check
    headers = {
        "Content-Type": "application/json", "Authorization": inference_id, "X-Inference-Id": inference_id,
        "X-Seed": str(seed), "X-TA-Signature": ta_signature, "X-Requester-Address": client.address,
        "X-Transfer-Address": ta.address, "X-Timestamp": str(ts),
    }
    return Sent(inference_id, headers, raw)


async def _finished(devnet: SimulatedNetwork, inference_id: str) -> None:
    def done() -> bool:
        inference = devnet.ledger.state.inferences.get(inference_id)
        return inference is not None and inference.status is InferenceStatus.FINISHED
    await devnet.wait_until(done, timeout=30, what=f"inference {inference_id[:8]} finished")


async def test_a_peer_executes_a_request_and_its_finish_lands(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(READY)
    peer, client = devnet.genesis.peers[0], devnet.genesis.clients[0]
    url = devnet.executors.url(peer.name)
    assert devnet.ledger.participants[peer.address].inference_url == url
    before = devnet.ledger.state.balance(client.address)
    sent = _request(devnet)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(url + "/v1/chat/completions", content=sent.raw, headers=sent.headers)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == sent.inference_id and answer["model"] == QWEN
    assert answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["logprobs"]["content"]  # logprobs forced on (§5.1)
    await _finished(devnet, sent.inference_id)
    inference = devnet.ledger.state.inferences[sent.inference_id]
    assert (inference.executed_by, inference.assigned_to) == (peer.address, peer.address)
    assert inference.completion_token_count == answer["usage"]["completion_tokens"]
    # Paid: the cost, capped at the escrow (the estimate of 8 prompt tokens may be below the node's count).
    paid = min(inference.actual_cost, inference.escrow_amount)
    assert paid > 0
    assert devnet.ledger.state.work_of(peer.address).coin_balance == paid
    assert devnet.ledger.state.balance(client.address) == before - paid
    assert devnet.peers.rejected() == [] and devnet.peers.failed() == []

    # The peers' sim nodes serve at their chain throughput (DESIGN.md §6.1).
    for node_id, tokens_per_block in epoch_throughput(devnet.ledger, 1, peer.address).items():
        node = devnet.executors.nodes(peer.name)[node_id]
        assert node.capacity.tokens_per_second == pytest.approx(tokens_per_block / devnet.block_time)


async def test_a_stream_is_proxied_with_the_inference_id_and_finished(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(READY)
    peer = devnet.genesis.peers[0]
    sent = _request(devnet, stream=True)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(devnet.executors.url(peer.name) + "/v1/chat/completions", content=sent.raw,
                                headers=sent.headers)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    data = [line.removeprefix("data: ") for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks and all(c["id"] == sent.inference_id for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage forced (§5.1)
    await _finished(devnet, sent.inference_id)
    inference = devnet.ledger.state.inferences[sent.inference_id]
    assert inference.executed_by == peer.address
    # The payload lists every scanned line after the rewrite, blank ones included (§5.5).
    events = json.loads(inference.response_payload)["events"]
    assert events[-2:] == ["data: [DONE]", ""] and events.count("") == len(chunks) + 1


async def test_a_bad_ta_signature_is_401_and_nothing_is_served(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(READY)
    peer = devnet.genesis.peers[0]
    sent = _request(devnet, forge_ta=True, start=False)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(devnet.executors.url(peer.name) + "/v1/chat/completions", content=sent.raw,
                                headers=sent.headers)
        assert reply.status_code == 401
        assert "TransferSignature" in reply.json()["error"]
        no_seed = {k: v for k, v in sent.headers.items() if k != "X-Seed"}
        assert (await http.post(devnet.executors.url(peer.name) + "/v1/chat/completions", content=sent.raw,
                                headers=no_seed)).status_code == 400
    assert devnet.executors.finished == []


# --- the peers validate each other's inferences (inference.md §4.1-§4.4) -----------------------------------


async def _execute(devnet: SimulatedNetwork) -> Sent:
    sent = _request(devnet)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(devnet.executors.url(devnet.genesis.peers[0].name) + "/v1/chat/completions",
                                content=sent.raw, headers=sent.headers)
    assert reply.status_code == 200, reply.text
    return sent


async def _status(devnet: SimulatedNetwork, inference_id: str, status: InferenceStatus) -> None:
    def reached() -> bool:
        inference = devnet.ledger.state.inferences.get(inference_id)
        return inference is not None and inference.status is status
    await devnet.wait_until(reached, timeout=30, what=f"inference {inference_id[:8]} {status.name}")


async def test_the_other_peer_validates_an_honest_inference_and_claims_its_reward(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(READY)
    executor, validator = devnet.genesis.peers
    sent = await _execute(devnet)
    # Two members and no traffic: the other member must validate every inference (p = 1).
    await _status(devnet, sent.inference_id, InferenceStatus.VALIDATED)
    inference = devnet.ledger.state.inferences[sent.inference_id]
    assert inference.validated_by == (validator.address,)
    sent_by = [(v.peer, v.code) for v in devnet.executors.validators.sent if v.inference_id == sent.inference_id]
    assert sent_by == [(validator.name, 0)]
    assert [v.value for v in devnet.executors.validators.sent] == [1.0]
    assert list(devnet.ledger.state.epoch_validations[(inference.epoch_id, validator.address)]) == [sent.inference_id]
    assert devnet.peers.rejected() == [] and devnet.peers.failed() == []

    # The claim of epoch 1 (sent at 94) finds no missed validation and pays.
    await devnet.wait_for_height(96)
    claims = {c.participant: c for c in devnet.ledger.claims() if c.epoch_index == inference.epoch_id}
    assert claims[validator.address].amount > 0 and claims[executor.address].amount > 0


async def test_a_wrong_inference_output_fails_validation_and_is_refunded(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(READY - 2)
    executor, validator = devnet.genesis.peers
    devnet.peers.set_misbehaviour(executor.name, Misbehaviour.of_kinds(["wrong-inference-output"]))
    await devnet.wait_for_height(READY)
    assert all(node.wrong_output for node in devnet.executors.nodes(executor.name).values())
    client = devnet.genesis.clients[0]
    before = devnet.ledger.state.balance(client.address)
    sent = await _execute(devnet)
    await _status(devnet, sent.inference_id, InferenceStatus.INVALIDATED)
    failed = [v for v in devnet.executors.validators.sent if v.inference_id == sent.inference_id]
    assert [(v.peer, v.code) for v in failed] == [(validator.name, 0)]
    assert failed[0].value < 0.98  # below the model's validation threshold
    inference = devnet.ledger.state.inferences[sent.inference_id]
    assert inference.validated_by == ()
    # The client got its payment back (the refund of the actual cost), and the executor loses the cost it
    # was credited (at most the escrow) and more: coin_balance -= actual_cost (§4.4).
    assert devnet.ledger.state.balance(client.address) == before
    paid = min(inference.actual_cost, inference.escrow_amount)
    assert devnet.ledger.state.work_of(executor.address).coin_balance == paid - inference.actual_cost
