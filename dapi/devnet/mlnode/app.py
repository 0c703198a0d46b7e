"""The HTTP routes of the simulated ML nodes.

Under its segment `/nodes/<name>` each node serves the real ML node's management API
(reference/http.md §6.1, the 409 service-conflict rule included), and on its inference port `/health`,
`/v1/models`, `/v1/chat/completions` (a deterministic echo) and `/tokenize`.

Outside `/nodes/`, `/sim/...` inspects and drives the simulation (list nodes, the calls each received,
the batches it posted, add nodes, set faults) for a standalone server (`python -m dapi.devnet.mlnode`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from dapi.devnet.mlnode.faults import FaultSpec, json_or_none
from dapi.devnet.mlnode.node import NODES_PREFIX, PowInitRequest, PowPhase, SimNode
from dapi.mlnodeclient.models import InferenceUpRequest, MLNodeState, ProofBatch

if TYPE_CHECKING:
    from dapi.devnet.mlnode.server import SimMLNodeServer

SIM_PREFIX = "/sim"


class ProofBatchIn(BaseModel):
    """`/api/v1/pow/validate` body: the real node's ProofBatch dataclass, every field required."""

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int


class AddNodeRequest(BaseModel):
    """Body of `POST /sim/nodes`."""

    name: str
    load_delay: float | None = None


def build_app(server: SimMLNodeServer) -> FastAPI:
    """The routes of every node of `server` and its `/sim` API, as one FastAPI app."""
    # strict_content_type=False: the Go client posts JSON without a Content-Type, and the FastAPI of the
    # real node parses it anyway; recent FastAPI would answer 422.
    app = FastAPI(
        title="dapi simulated ML nodes",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        strict_content_type=False,
    )
    app.state.sim_server = server
    app.include_router(_management)
    app.include_router(_inference)
    app.include_router(_sim)
    return app


# --- dependencies: the node a route is about -----------------------------------------------------


def _server(request: Request) -> SimMLNodeServer:
    return cast("SimMLNodeServer", request.app.state.sim_server)


def _node(request: Request, name: str) -> SimNode:
    node = _server(request).find_node(name)
    if node is None:
        raise HTTPException(404, f"no simulated ML node {name!r}")
    return node


def _service_node(service: MLNodeState) -> Callable[[Request, str], SimNode]:
    # The real node's check_service_conflicts: a router of one service answers 409 while another runs.
    def guard(request: Request, name: str) -> SimNode:
        node = _node(request, name)
        if node.state not in (MLNodeState.STOPPED, service):
            raise HTTPException(
                409,
                f"Cannot run {service.value} because MLNode is currently in {node.state.value} mode. "
                f"Please stop {node.state.value} first.",
            )
        return node

    return guard


_ANY_NODE = Depends(_node)
_POW_NODE = Depends(_service_node(MLNodeState.POW))
_INFERENCE_NODE = Depends(_service_node(MLNodeState.INFERENCE))
_TRAIN_NODE = Depends(_service_node(MLNodeState.TRAIN))


# --- the management API (reference/http.md §6.1) -------------------------------------------------

_management = APIRouter(prefix=NODES_PREFIX + "/{name}/api/v1")


@_management.get("/state")
async def state(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    return {"state": node.state.value}


@_management.post("/stop")
async def stop(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    node.stop_all()
    return {"status": "OK"}


@_management.post("/pow/init")
async def pow_init(req: PowInitRequest, node: SimNode = _POW_NODE) -> dict[str, Any]:
    node.start_pow(req, PowPhase.IDLE)
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/pow/init/generate")
async def pow_init_generate(req: PowInitRequest, node: SimNode = _POW_NODE) -> dict[str, Any]:
    # The real node rejects only -1 ("not set"); the sim also rejects values that would make the
    # nonce space node_id + k·node_count degenerate, to surface such a dAPI bug loudly.
    if req.node_id == -1 or req.node_count == -1:
        raise HTTPException(400, "Node ID and node count must be set")
    if req.node_id < 0 or req.node_count < 1:
        raise HTTPException(400, f"invalid node_id {req.node_id} / node_count {req.node_count}")
    node.start_pow(req, PowPhase.GENERATE)
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/pow/init/validate")
async def pow_init_validate(req: PowInitRequest, node: SimNode = _POW_NODE) -> dict[str, Any]:
    node.start_pow(req, PowPhase.VALIDATE)
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/pow/phase/generate")
async def pow_phase_generate(node: SimNode = _POW_NODE) -> dict[str, Any]:
    init = node.pow_init
    if node.state is not MLNodeState.POW or init is None:
        raise HTTPException(400, "PoW is not running")
    if init.node_id < 0 or init.node_count < 1:
        raise HTTPException(400, "Node ID and node count must be set")
    node.pow_phase = PowPhase.GENERATE
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/pow/phase/validate")
async def pow_phase_validate(node: SimNode = _POW_NODE) -> dict[str, Any]:
    if node.state is not MLNodeState.POW or node.pow_init is None:
        raise HTTPException(400, "PoW is not running")
    node.pow_phase = PowPhase.VALIDATE
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/pow/validate")
async def pow_validate(batch: ProofBatchIn, node: SimNode = _POW_NODE) -> None:
    if node.state is not MLNodeState.POW:
        raise HTTPException(400, "PoW is not running")
    node.queue_for_validation(ProofBatch.model_validate(batch.model_dump()))


@_management.get("/pow/status")
async def pow_status(node: SimNode = _POW_NODE) -> dict[str, Any]:
    return node.pow_status()


@_management.post("/pow/stop")
async def pow_stop(node: SimNode = _POW_NODE) -> dict[str, Any]:
    node.stop_pow()
    return {"status": "OK", "pow_status": node.pow_status()}


@_management.post("/inference/up")
async def inference_up(req: InferenceUpRequest, node: SimNode = _INFERENCE_NODE) -> dict[str, Any]:
    return await node.inference_up(req)


@_management.post("/inference/down")
async def inference_down(node: SimNode = _INFERENCE_NODE) -> dict[str, Any]:
    node.inference_down()
    return {"status": "OK"}


@_management.post("/train/start")
async def train_start(config: dict[str, Any], node: SimNode = _TRAIN_NODE) -> dict[str, Any]:
    if node.state is MLNodeState.TRAIN:
        raise HTTPException(400, "Training is already running")
    node.training_config = config
    node.state = MLNodeState.TRAIN
    return {"status": "Training started"}


@_management.post("/train/stop")
async def train_stop(node: SimNode = _TRAIN_NODE) -> dict[str, Any]:
    if node.state is not MLNodeState.TRAIN:
        raise HTTPException(400, "Training is not running")
    node.training_config = None
    node.state = MLNodeState.STOPPED
    return {"status": "Training stopped"}


@_management.get("/train/status")
async def train_status(node: SimNode = _TRAIN_NODE) -> dict[str, Any]:
    return {"status": node.state is MLNodeState.TRAIN}


# --- the inference port: a deterministic echo of an OpenAI-compatible server ---------------------

_inference = APIRouter(prefix=NODES_PREFIX + "/{name}")


def _not_serving() -> Response:
    return JSONResponse({"detail": "no inference backend is running"}, status_code=503)


@_inference.get("/health")
async def health(node: SimNode = _ANY_NODE) -> Response:
    if not node.inference_ready:
        return _not_serving()
    return Response(status_code=200)


@_inference.get("/v1/models")
async def models(node: SimNode = _ANY_NODE) -> Response:
    if not node.inference_ready:
        return _not_serving()
    return JSONResponse({"object": "list", "data": [{"id": node.model, "object": "model", "owned_by": "sim"}]})


@_inference.post("/v1/chat/completions")
async def chat_completions(request: Request, node: SimNode = _ANY_NODE) -> Response:
    if not node.inference_ready:
        return _not_serving()
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"detail": "body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"detail": "body is not a JSON object"}, status_code=400)
    if body.get("model") != node.model:
        return JSONResponse(
            {
                "object": "error",
                "message": f"The model `{body.get('model')}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            },
            status_code=404,
        )
    return _echo_completion(body, node.model)


@_inference.post("/tokenize")
async def tokenize(request: Request, node: SimNode = _ANY_NODE) -> Response:
    if not node.inference_ready:
        return _not_serving()
    body = json_or_none(await request.body())
    prompt = body.get("prompt", "") if isinstance(body, dict) else ""
    tokens = list(range(len(str(prompt).split())))
    return JSONResponse({"count": len(tokens), "max_model_len": 4096, "tokens": tokens})


def _echo_completion(body: dict[str, Any], model: str | None) -> Response:
    """A chat completion (streamed if asked) whose answer is "echo: " and the last message's text."""
    messages = body.get("messages")
    text = f"echo: {_last_message_text(messages)}"
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
    completion_id = f"chatcmpl-sim-{digest}"
    created = int(time.time())
    if body.get("stream"):
        chunks = _echo_chunks(completion_id, created, model, text)
        return StreamingResponse(chunks, media_type="text/event-stream")
    prompt_tokens = (
        sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        if isinstance(messages, list)
        else 0
    )
    completion_tokens = len(text.split())
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def _last_message_text(messages: Any) -> str:
    last = messages[-1] if isinstance(messages, list) and messages else {}
    content = last.get("content", "") if isinstance(last, dict) else ""
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


async def _echo_chunks(completion_id: str, created: int, model: str | None, text: str) -> AsyncIterator[str]:
    for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


# --- /sim: inspect and drive the simulation ------------------------------------------------------

_sim = APIRouter(prefix=SIM_PREFIX)


@_sim.get("/nodes")
async def list_nodes(request: Request) -> dict[str, Any]:
    return {"nodes": [n.snapshot() for n in _server(request).nodes]}


@_sim.post("/nodes", status_code=201)
async def add_node(req: AddNodeRequest, request: Request) -> dict[str, Any]:
    server = _server(request)
    try:
        node = server.add_node(req.name, load_delay=req.load_delay)
    except ValueError as exc:
        status = 409 if req.name in {n.name for n in server.nodes} else 400
        raise HTTPException(status, str(exc)) from exc
    return node.snapshot()


@_sim.get("/nodes/{name}")
async def get_node_info(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    return node.snapshot()


@_sim.get("/nodes/{name}/calls")
async def get_calls(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    return {"calls": [c.to_json() for c in node.calls]}


@_sim.delete("/nodes/{name}/calls", status_code=204)
async def clear_calls(node: SimNode = _ANY_NODE) -> None:
    node.calls.clear()


@_sim.get("/nodes/{name}/batches")
async def get_batches(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    return {
        "generated": [b.model_dump(mode="json") for b in node.generated_posted],
        "validated": [b.model_dump(mode="json") for b in node.validated_posted],
    }


@_sim.put("/nodes/{name}/fault")
async def put_fault(spec: FaultSpec, node: SimNode = _ANY_NODE) -> dict[str, Any]:
    node.fault = spec if spec.label() else None
    return {"fault": node.fault.model_dump() if node.fault else None}


@_sim.delete("/nodes/{name}/fault", status_code=204)
async def delete_fault(node: SimNode = _ANY_NODE) -> None:
    node.fault = None
