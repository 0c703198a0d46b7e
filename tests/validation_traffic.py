"""Inference traffic for the daemon to validate: the test acts as client and TA and a peer executes.

Until the daemon serves inference itself, the requests go straight to a simulated peer's executor: a
second peer is the Transfer Agent (it signs and sends MsgStartInference through the devnet's peer
simulator), the peer's sim ML nodes answer, and the peer's MsgFinishInference emits `inference_finished`,
which the daemon (another member of the model's sub-group) samples and validates.
"""

from __future__ import annotations

import json
from itertools import count

import httpx

from dapi.devnet import SimulatedNetwork
from dapi.devnet.genesis import ParticipantSpec
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.request_body import modify_request_body, prompt_hash, prompt_payload
from dapi.inference.signatures import dev_signed_bytes, sign, ta_signed_bytes

QWEN = "Qwen/Qwen2.5-7B-Instruct"
_counter = count(1)


async def execute(devnet: SimulatedNetwork, http: httpx.AsyncClient, *, executor: ParticipantSpec,
                  ta: ParticipantSpec, model: str = QWEN) -> str:
    """One request executed by `executor` with `ta` as Transfer Agent; returns the inference id once served."""
    client = devnet.genesis.clients[0]
    n = next(_counter)
    raw = json.dumps({"model": model, "messages": [{"role": "user", "content": f"validate me {n}"}],
                      "max_tokens": 12}).encode()
    ts = devnet.ledger.now_ns() + n
    inference_id = sign(client.key, dev_signed_bytes(raw, ts, ta.address))
    ta_signature = sign(ta.signer_key, ta_signed_bytes(raw, ts, ta.address, executor.address))
    seed = 1000 + n
    payload = prompt_payload(modify_request_body(raw, seed))
    start = itx.MsgStartInference(
        creator=ta.address, inference_id=inference_id, prompt_hash=prompt_hash(payload), prompt_payload=payload,
        model=model, requested_by=client.address, assigned_to=executor.address, max_tokens=12, prompt_token_count=8,
        request_timestamp=ts, transfer_signature=ta_signature, original_prompt=raw.decode(),
    )
    check = devnet.peers.submit(ta.name, "start_inference", start)
    assert check.ok, check
    headers = {
        "Content-Type": "application/json", "Authorization": inference_id, "X-Inference-Id": inference_id,
        "X-Seed": str(seed), "X-TA-Signature": ta_signature, "X-Requester-Address": client.address,
        "X-Transfer-Address": ta.address, "X-Timestamp": str(ts),
    }
    reply = await http.post(devnet.executors.url(executor.name) + "/v1/chat/completions", content=raw,
                            headers=headers)
    assert reply.status_code == 200, reply.text
    return inference_id
