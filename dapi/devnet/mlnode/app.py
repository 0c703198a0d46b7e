"""The HTTP routes of the simulated ML nodes.

Under its segment `/nodes/<name>` each node serves the real ML node's management API
(reference/http.md §6.1, the 409 service-conflict rule included), and on its inference port what vLLM
serves there (`/health`, `/v1/models`, `/v1/chat/completions`, `/tokenize`; see `vllm`).

Outside `/nodes/`, `/sim/...` inspects and drives the simulation (list nodes, the calls each received,
the batches it posted, add nodes, set faults, capacity and wrong output) for a standalone
server (`python -m dapi.devnet.mlnode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from dapi.devnet.mlnode import vllm
from dapi.devnet.mlnode.faults import FaultSpec
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
    max_concurrent: int | None = Field(default=None, ge=1)
    tokens_per_second: float | None = Field(default=None, gt=0)


class NodePatch(BaseModel):
    """Body of `PATCH /sim/nodes/{name}`: the fields to change (capacity, wrong output)."""

    max_concurrent: int | None = Field(default=None, ge=1)
    tokens_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    queue_timeout: float | None = Field(default=None, ge=0)
    max_queue: int | None = Field(default=None, ge=0)
    wrong_output: bool | None = None


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
    app.include_router(vllm.router)
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


# --- /sim: inspect and drive the simulation ------------------------------------------------------

_sim = APIRouter(prefix=SIM_PREFIX)


@_sim.get("/nodes")
async def list_nodes(request: Request) -> dict[str, Any]:
    return {"nodes": [n.snapshot() for n in _server(request).nodes]}


@_sim.post("/nodes", status_code=201)
async def add_node(req: AddNodeRequest, request: Request) -> dict[str, Any]:
    server = _server(request)
    try:
        node = server.add_node(
            req.name,
            load_delay=req.load_delay,
            max_concurrent=req.max_concurrent,
            tokens_per_second=req.tokens_per_second,
        )
    except ValueError as exc:
        status = 409 if req.name in {n.name for n in server.nodes} else 400
        raise HTTPException(status, str(exc)) from exc
    return node.snapshot()


@_sim.get("/nodes/{name}")
async def get_node_info(node: SimNode = _ANY_NODE) -> dict[str, Any]:
    return node.snapshot()


@_sim.patch("/nodes/{name}")
async def patch_node(patch: NodePatch, node: SimNode = _ANY_NODE) -> dict[str, Any]:
    node.capacity.configure(
        max_concurrent=patch.max_concurrent,
        tokens_per_second=patch.tokens_per_second,
        queue_timeout=patch.queue_timeout,
        max_queue=patch.max_queue,
    )
    if patch.wrong_output is not None:
        node.wrong_output = patch.wrong_output
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
