"""The inference port of a simulated node: what a vLLM OpenAI-compatible server answers.

Under `/nodes/<name>`: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` and `POST /tokenize`,
in the shapes of reference/inference.md §5.4 (vLLM's, as the dAPI proxies them).

A chat request goes through the checks in the order the real stack makes them:

1. the node is INFERENCE with a model loaded, else 503 (the real node's proxy has no backend);
2. the body is a JSON object of the right types, else 400 in vLLM's error shape
   `{"object": "error", "message", "type": "BadRequestError", "param": null, "code": 400}`;
3. `model` is the served one (or absent), else 404 `NotFoundError`, "The model `x` does not exist.";
4. vLLM's own rules (max_tokens ≥ 1, temperature ≥ 0, top_logprobs within 0..20 and only with logprobs,
   stream_options only with stream, prompt + max_tokens within the context length), else 400;
5. a slot of the node's capacity (`capacity`), else 503 `ServiceUnavailableError` (the sim's choice).

The answer comes from the simulated model (`inference`): `generate` from (model, seed, messages), or
with `enforced_str` the validation re-run `enforce` along that text. `max_completion_tokens` wins over
`max_tokens` (as in vLLM); `seed` absent or null samples at random, as vLLM does. `ignore_eos` is
honoured; `stop`, `top_p`, `top_k` and other sampling fields are accepted and ignored. Tokens come at
the node's rate: a stream sends each as it is made, a plain answer is sent once all are made. If the
model goes away meanwhile (inference/down, stop, a new inference/up, the server stopping), a plain
request gets 502 (the real node's proxy on an upstream failure) and a stream is cut off.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from dapi.devnet.mlnode.capacity import CapacityExceeded, Slot
from dapi.devnet.mlnode.chatrequest import (
    ChatJob,
    TokenizeRequest,
    bad_request,
    completion_json,
    error_response,
    model_not_found,
    parse_chat,
)
from dapi.devnet.mlnode.inference import MAX_MODEL_LEN, prompt_tokens, token_id, tokenize
from dapi.devnet.mlnode.node import NODES_PREFIX, SimNode

router = APIRouter(prefix=NODES_PREFIX + "/{name}")


class BackendGone(Exception):
    """The model went away while a stream was being sent; the connection is dropped (see `faults`)."""


# --- responses -----------------------------------------------------------------------------------


def _not_serving() -> JSONResponse:
    return JSONResponse({"detail": "no inference backend is running"}, status_code=503)


def _node(request: Request, name: str) -> SimNode | None:
    return cast("SimNode | None", request.app.state.sim_server.find_node(name))


def _no_such_node(name: str) -> JSONResponse:
    return JSONResponse({"detail": f"no simulated ML node {name!r}"}, status_code=404)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


class _SlotStreamingResponse(StreamingResponse):
    # The slot is given back when the response ends however it ends, even if the body never started.
    def __init__(self, content: AsyncIterator[str], slot: Slot) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


# --- routes --------------------------------------------------------------------------------------


@router.get("/health")
async def health(request: Request, name: str) -> Response:
    node = _node(request, name)
    if node is None:
        return _no_such_node(name)
    return Response(status_code=200) if node.inference_ready else _not_serving()


@router.get("/v1/models")
async def models(request: Request, name: str) -> Response:
    node = _node(request, name)
    if node is None:
        return _no_such_node(name)
    if not node.inference_ready:
        return _not_serving()
    card = {
        "id": node.model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": node.model,
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
    }
    return JSONResponse({"object": "list", "data": [card]})


@router.post("/tokenize")
async def tokenize_route(request: Request, name: str) -> Response:
    node = _node(request, name)
    if node is None:
        return _no_such_node(name)
    if not node.inference_ready or node.model is None:
        return _not_serving()
    try:
        req = TokenizeRequest.model_validate_json(await request.body() or b"null")
    except ValidationError as exc:
        return bad_request(str(exc))
    if req.model is not None and req.model != node.model:
        return model_not_found(req.model)
    if req.messages is not None:
        tokens = prompt_tokens([m.model_dump() for m in req.messages])
    elif req.prompt is not None:
        tokens = tokenize(req.prompt)
    else:
        return bad_request("either `prompt` or `messages` must be given")
    ids = [token_id(t) for t in tokens]
    return JSONResponse({"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, name: str) -> Response:
    node = _node(request, name)
    if node is None:
        return _no_such_node(name)
    if not node.inference_ready or node.model is None:
        return _not_serving()
    job = parse_chat(await request.body(), node.model, honest=not node.wrong_output)
    if isinstance(job, Response):
        return job
    run = node.serving_run
    try:
        slot = await node.capacity.acquire()
    except CapacityExceeded as exc:
        return error_response(503, str(exc), "ServiceUnavailableError")
    if node.serving_run != run or not node.inference_ready:
        slot.release()  # the model went away while the request waited
        return _not_serving()
    try:
        # The model's work runs off the event loop, so a long answer does not stall the other requests.
        job = await asyncio.to_thread(job.answered)
    except BaseException:
        slot.release()
        raise
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if job.stream:
        return _SlotStreamingResponse(_stream(node, run, job, slot, completion_id, created), slot)
    try:
        await _work(node, run, job.prompt_tokens)
        async for _ in _decode(node, run, job):
            pass
    except BackendGone:
        return JSONResponse({"detail": "the inference backend went away"}, status_code=502)
    finally:
        slot.release()
    return JSONResponse(completion_json(job, completion_id, created))


# --- producing and sending -----------------------------------------------------------------------


async def _work(node: SimNode, run: int, tokens: int) -> None:
    """Make `tokens` tokens on the node's clock, in turns; BackendGone if the model goes away meanwhile."""
    per_turn = node.capacity.tokens_per_turn
    while tokens > 0:
        turn = min(per_turn, tokens)
        made = await node.capacity.produce(turn, node.server.sleep_unless_closing)
        if not made or node.serving_run != run:
            raise BackendGone
        tokens -= turn


async def _decode(node: SimNode, run: int, job: ChatJob) -> AsyncIterator[list[tuple[int, int]]]:
    """The completion tokens as they are made: groups of (choice, step), the choices taking turns."""
    longest = max(c.completion_tokens for c in job.choices)
    order = [(j, i) for i in range(longest) for j, c in enumerate(job.choices) if i < c.completion_tokens]
    per_turn = node.capacity.tokens_per_turn
    for start in range(0, len(order), per_turn):
        group = order[start : start + per_turn]
        await _work(node, run, len(group))
        yield group


async def _stream(
    node: SimNode, run: int, job: ChatJob, slot: Slot, completion_id: str, created: int
) -> AsyncIterator[str]:
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": job.model}
    try:
        await _work(node, run, job.prompt_tokens)
        for j in range(len(job.choices)):
            delta = {"role": "assistant", "content": ""}
            yield _sse({**head, "choices": [{"index": j, "delta": delta, "logprobs": None, "finish_reason": None}]})
        async for group in _decode(node, run, job):
            for j, i in group:
                completion = job.choices[j]
                step = completion.steps[i]
                choice: dict[str, Any] = {
                    "index": j,
                    "delta": {"content": step.text},
                    "logprobs": job.logprobs([step]),
                    "finish_reason": None,
                }
                if i == completion.completion_tokens - 1:
                    choice.update(finish_reason=completion.finish_reason, stop_reason=None)
                yield _sse({**head, "choices": [choice]})
        if job.include_usage:
            yield _sse({**head, "choices": [], "usage": job.usage()})
        yield "data: [DONE]\n\n"
    finally:
        slot.release()
