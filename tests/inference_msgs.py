"""Inference messages as the three parties of a request sign them (reference/inference.md §6), for tests."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from dapi.chain.keys import SigningKey
from dapi.devnet.genesis import ClientSpec, ParticipantSpec
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign, ta_signed_bytes

QWQ = "Qwen/QwQ-32B"
QWEN = "Qwen/Qwen2.5-7B-Instruct"

@dataclass
class Request:
    """One client request as the three parties sign it (inference.md §6)."""

    body: str
    timestamp: int
    requester: str
    ta: str
    executor: str
    inference_id: str
    ta_signature: str
    executor_signature: str


_counter = count(1)


def make_request(client: ClientSpec | SigningKey, ta: ParticipantSpec, executor: ParticipantSpec, *,
                 model: str = QWQ, scheme: ClientScheme = ClientScheme.RAW, nonce: int | None = None) -> Request:
    """`nonce` fixes the body and timestamp (so the inference id); None takes the next of a process-wide count."""
    key = client.key if isinstance(client, ClientSpec) else client
    first, second = (nonce, nonce + 1) if nonce is not None else (next(_counter), next(_counter))
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"hi {first}"}}]}}'
    ts = 1_700_000_000_000_000_000 + second
    raw = body.encode()
    signed = ta_signed_bytes(raw, ts, ta.address, executor.address)
    return Request(
        body=body, timestamp=ts, requester=key.address, ta=ta.address, executor=executor.address,
        inference_id=sign(key, dev_signed_bytes(raw, ts, ta.address, scheme)),
        ta_signature=sign(ta.signer_key, signed),  # the TA signs with its signer key (a grantee)
        executor_signature=sign(executor.signer_key, signed),
    )


def start_msg(req: Request, *, model: str = QWQ, max_tokens: int = 100, prompt_tokens: int = 10,
              **overrides: object) -> itx.MsgStartInference:
    fields: dict[str, object] = dict(
        creator=req.ta, inference_id=req.inference_id, prompt_hash="ab" * 32, prompt_payload=req.body + "\n",
        model=model, requested_by=req.requester, assigned_to=req.executor, node_version="",
        max_tokens=max_tokens, prompt_token_count=prompt_tokens, request_timestamp=req.timestamp,
        transfer_signature=req.ta_signature, original_prompt=req.body,
    )
    fields.update(overrides)
    return itx.MsgStartInference(**fields)  # type: ignore[arg-type]


def finish_msg(req: Request, *, model: str = QWQ, prompt_tokens: int = 12, completion_tokens: int = 50,
               **overrides: object) -> itx.MsgFinishInference:
    fields: dict[str, object] = dict(
        creator=req.executor, inference_id=req.inference_id, response_hash="cd" * 32,
        response_payload='{"choices":[]}', prompt_token_count=prompt_tokens,
        completion_token_count=completion_tokens, executed_by=req.executor, transferred_by=req.ta,
        request_timestamp=req.timestamp, transfer_signature=req.ta_signature,
        executor_signature=req.executor_signature, requested_by=req.requester, original_prompt=req.body, model=model,
    )
    fields.update(overrides)
    return itx.MsgFinishInference(**fields)  # type: ignore[arg-type]
