"""The admin API (reference/http.md §3): ML nodes, and a view of the transaction outbox.

Bound to loopback by default (``api.admin_bind_host``); with ``api.admin_token`` set every call needs
``Authorization: Bearer <token>`` (or the operator dashboard's session cookie, see ``dashboard.py``).
Changes the reference got wrong are answered properly: a duplicate id is 409 (the existing node
untouched), non-governance models are 400 naming them, unknown ids 404. The operator dashboard
(``/admin/ui``) is served here too. Added and removed nodes are recorded in ``data_dir`` and survive a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from dapi.broker.errors import (
    BrokerError,
    DuplicateNode,
    GovernanceUnavailable,
    InvalidModels,
    InvalidNodeConfig,
    NodeNotFound,
)
from dapi.broker.state import AdminState, Node, NodeResponse, node_response_json
from dapi.chain.outbox import OutboxClosed
from dapi.chain.outbox_store import DeadLetter, OutboxRow
from dapi.config import NODE_ID_MAX_LENGTH, NODE_ID_PATTERN, NodeConfig, StrictNodeConfig
from dapi.logs import get_logger
from dapi.node_store import NodeStore
from dapi.runtime.tasks import TaskOwner
from dapi.server.admin.dashboard import DashboardSource, admin_auth, install_dashboard
from dapi.server.admin.feed import DaemonParts, DashboardFeed
from dapi.server.common import HeadAsGet, error_responses, install_error_handlers, json_bytes

log = get_logger(__name__)

_STATUS_OF: dict[type[Exception], int] = {
    DuplicateNode: 409,
    InvalidModels: 400,
    InvalidNodeConfig: 400,
    NodeNotFound: 404,
    GovernanceUnavailable: 503,
}


class NodeAdmin(Protocol):
    """What the admin API asks of the broker: register, remove, enable and disable ML nodes, list them."""

    async def register(self, config: NodeConfig) -> Node: ...

    async def register_many(self, configs: Sequence[NodeConfig]) -> list[Node | BrokerError]: ...

    async def remove(self, node_id: str) -> bool: ...

    def set_admin_state(self, node_id: str, enabled: bool) -> AdminState: ...

    def nodes(self) -> list[NodeResponse]: ...


# An id in a path is held to the rule a new node's id is held to; anything else is 400, not a lookup.
NodeId = Annotated[str, Path(min_length=1, max_length=NODE_ID_MAX_LENGTH, pattern=NODE_ID_PATTERN,
                             description="The node id")]


class OutboxInspector(Protocol):
    """Read-only access to the outbox: counts per state, pending rows and dead letters."""

    async def counts(self) -> dict[str, int]: ...

    async def pending(self, limit: int = 100) -> list[OutboxRow]: ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...


class NodeJson(BaseModel):
    """A registered ML node: its config, and the node number the API node gave it."""

    id: str
    host: str
    inference_port: int
    inference_segment: str
    poc_port: int
    poc_segment: str
    max_concurrent: int
    models: dict[str, dict[str, list[str]]]
    hardware: list[dict[str, Any]]
    version: str
    node_num: int


class NodeItemJson(BaseModel):
    """An ML node and its state: intended and current status, failure reason, epoch models and ML nodes."""

    node: NodeJson
    state: dict[str, Any]


class AdminMessage(BaseModel):
    """Confirmation of an enable or disable, naming the node."""

    message: str
    node_id: str


class OutboxJson(BaseModel):
    """Outbox messages counted by state, and the messages not yet on chain."""

    counts: dict[str, int]
    pending: list[dict[str, Any]]


class DeadLettersJson(BaseModel):
    """Messages the chain rejected for good, each with the code and log it gave."""

    dead_letters: list[dict[str, Any]]


def create_admin_app(*, broker: NodeAdmin, store: NodeStore, outbox: OutboxInspector | None = None,
                     token: str = "", dashboard: DashboardSource | None = None, daemon: DaemonParts | None = None,
                     tasks: TaskOwner | None = None) -> FastAPI:
    """The admin app and its dashboard: ``dashboard``, or a feed over ``daemon`` sampled as a task of ``tasks``."""
    if dashboard is None and daemon is not None and tasks is not None:
        dashboard = DashboardFeed.started(daemon, tasks)
    app = FastAPI(title="dapi admin API", version="1", dependencies=[Depends(admin_auth(token))])
    install_error_handlers(app, domain={**_STATUS_OF, OutboxClosed: 503})
    auth = (401,) if token else ()

    @app.get("/admin/v1/nodes", response_model=list[NodeItemJson], responses=error_responses(*auth))
    async def list_nodes() -> Response:
        """Every registered ML node with its state, epoch models and epoch ML node records, by node number."""
        items = sorted(broker.nodes(), key=lambda r: r.node.node_num)
        return Response(json_bytes([node_response_json(r) for r in items]), media_type="application/json")

    @app.post("/admin/v1/nodes", response_model=NodeJson, responses=error_responses(400, 409, 503, *auth))
    async def add_node(config: StrictNodeConfig) -> JSONResponse:
        """Register an ML node; its models must be governance models. It gets the next node number."""
        node = await broker.register(config)
        await store.record_added([config])
        return JSONResponse(node.to_json())

    @app.post("/admin/v1/nodes/batch", status_code=201, response_model=list[NodeJson],
              responses=error_responses(400, *auth))
    async def add_nodes(configs: list[StrictNodeConfig]) -> JSONResponse:
        """Register several ML nodes; answers the ones accepted (a rejected one is logged with its reason)."""
        results = await broker.register_many(configs)
        accepted = [r for r in results if isinstance(r, Node)]
        for config, result in zip(configs, results, strict=True):
            if isinstance(result, BrokerError):
                log.warning("node in a batch rejected", node_id=config.id, reason=str(result))
        if accepted:
            await store.record_added([n.config for n in accepted])
        return JSONResponse([n.to_json() for n in accepted], status_code=201)

    @app.delete("/admin/v1/nodes/{node_id}", response_model=bool, responses=error_responses(400, *auth))
    async def delete_node(node_id: NodeId) -> JSONResponse:
        """Unregister a node: ``true`` if it existed. Its running job is cancelled."""
        existed = await broker.remove(node_id)
        if existed:
            await store.record_removed(node_id)
        return JSONResponse(existed)

    @app.post("/admin/v1/nodes/{node_id}/enable", response_model=AdminMessage,
              responses=error_responses(400, 404, *auth))
    async def enable_node(node_id: NodeId) -> JSONResponse:
        """Enable a node: at once during the Inference phase, fully from the next epoch."""
        broker.set_admin_state(node_id, True)
        return JSONResponse({"message": "node enabled successfully", "node_id": node_id})

    @app.post("/admin/v1/nodes/{node_id}/disable", response_model=AdminMessage,
              responses=error_responses(400, 404, *auth))
    async def disable_node(node_id: NodeId) -> JSONResponse:
        """Disable a node: it keeps its duties until the epoch ends, then stops."""
        broker.set_admin_state(node_id, False)
        return JSONResponse({"message": "node disabled successfully", "node_id": node_id})

    @app.get("/admin/v1/outbox", response_model=OutboxJson, responses=error_responses(503, *auth))
    async def outbox_view() -> JSONResponse:
        """Counts of the transaction outbox and the messages not yet on chain."""
        if outbox is None:
            return JSONResponse({"counts": {}, "pending": []})
        rows = await outbox.pending(200)
        return JSONResponse({"counts": await outbox.counts(), "pending": [
            {"id": r.id, "type_url": r.type_url, "state": r.state, "attempts": r.attempts, "tx_hash": r.tx_hash,
             "last_error": r.last_error, "created_at": r.created_at} for r in rows]})

    @app.get("/admin/v1/outbox/dead-letters", response_model=DeadLettersJson,
             responses=error_responses(503, *auth))
    async def dead_letters() -> JSONResponse:
        """Messages the chain rejected for good, with the code and log it gave."""
        if outbox is None:
            return JSONResponse({"dead_letters": []})
        rows = await outbox.dead_letters(200)
        return JSONResponse({"dead_letters": [
            {"id": d.id, "type_url": d.type_url, "stage": d.stage, "code": d.code, "codespace": d.codespace,
             "log": d.log, "tx_hash": d.tx_hash, "attempts": d.attempts, "failed_at": d.failed_at} for d in rows]})

    if dashboard is not None:
        install_dashboard(app, dashboard, token)
    app.add_middleware(HeadAsGet)
    return app
