"""The operator dashboard on the admin server: the page at ``/admin/ui`` and the JSON it polls.

The page is plain HTML, CSS and JavaScript shipped in the package (``ui/``), no build step, nothing
fetched from elsewhere; it polls ``GET /admin/v1/dashboard`` (now) and ``GET /admin/v1/dashboard/history``
(charts), both documented in the admin OpenAPI spec, and enables or disables nodes through the admin
API's own routes.

With ``api.admin_token`` set a browser cannot send a bearer header when it opens a page, so the page
takes the token once — ``/admin/ui?token=<token>`` or the login form the page shows without it — and
answers with a session cookie (HttpOnly, SameSite=Strict, path ``/admin``) holding an HMAC of the token,
never the token itself; changing the token ends every session. The cookie is accepted in place of the
bearer header for reads, and for writes only with the ``X-Dapi-UI: 1`` header the page sends: another
site cannot add that header without a CORS preflight the admin server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from dapi.server.common import ApiError, bearer_auth, error_responses

__all__ = ["COOKIE", "DashboardSource", "admin_auth", "install_dashboard", "session_value"]

COOKIE = "dapi_admin"
UI_HEADER = "x-dapi-ui"
_READS = ("GET", "HEAD")
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_PAGE_HEADERS = {
    # Everything the page needs comes from this server; nothing inline, no frames (the buttons change nodes).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class DashboardSource(Protocol):
    """What the dashboard routes ask of the daemon: the current picture and the chart history."""

    async def dashboard(self) -> dict[str, Any]: ...

    def history(self) -> dict[str, Any]: ...


# -- the JSON, as documented in the OpenAPI spec ---------------------------------------------------


class SegmentJson(BaseModel):
    """Blocks [start, end) of one phase."""

    phase: str
    start: int
    end: int


class BoundaryJson(BaseModel):
    """A named stage height of the epoch, and whether the chain is past it."""

    name: str
    height: int
    passed: bool


class PhaseBarJson(BaseModel):
    """From this epoch's PoC start to the next one: phases, current height, stage heights."""

    start: int
    end: int
    position: int
    segments: list[SegmentJson]
    boundaries: list[BoundaryJson]


class PolicyJson(BaseModel):
    """The phase command in force and how many nodes it sent to each duty (mine, keep serving, stop...)."""

    command: str | None
    decisions: dict[str, int]


class ChainJson(BaseModel):
    """Where the chain is: height, block age, sync, epochs, phase and its bar, epoch params."""

    height: int | None
    seconds_since_last_block: float | None
    synced: bool
    websocket_connected: bool
    epoch: int | None
    effective_epoch: int | None
    phase: str | None
    phase_bar: PhaseBarJson | None
    policy: PolicyJson
    epoch_params: dict[str, int] | None


class NodeRowJson(BaseModel):
    """One own ML node: statuses, epoch models and slots, failure and retry, admin state, load."""

    id: str
    node_num: int
    intended_status: str
    current_status: str
    poc_intended_status: str
    poc_current_status: str
    served_model: str | None
    epoch_models: list[str]
    pre_poc_slot: bool
    poc_slot: bool
    failure_reason: str
    failures: int
    retry_in_seconds: float | None
    decision: str | None
    decision_reason: str | None
    enabled: bool
    admin_epoch: int
    in_flight: int
    max_concurrent: int
    weight: int


class StageJson(BaseModel):
    """PoC batches of one stage (named by its start height): accepted, landed and dead-lettered."""

    stage: int
    accepted: int
    landed: int
    dead_lettered: int


class PocJson(BaseModel):
    """PoC batch totals since start and per recent stage."""

    accepted: int
    validated: int
    refused: int
    late: int
    landed: int
    dead_lettered: int
    stages: list[StageJson]


class RoleJson(BaseModel):
    """Inferences of one role (transfer agent or executor): successes, failures by reason, latency."""

    ok: int
    failed: dict[str, int]
    p50_ms: float | None = None
    p99_ms: float | None = None


class InferenceJson(BaseModel):
    """Inference as transfer agent and as executor (null while the daemon does not report it)."""

    serving: bool | None = None
    ta: RoleJson | None = None
    executor: RoleJson | None = None


class ValidationJson(BaseModel):
    """Inference validations of this participant (null while the daemon does not report them)."""

    enabled: bool = True
    selected: int = 0
    pending: int = 0
    sent: int = 0
    landed: int = 0
    failed: int = 0
    required: int = 0


class DeadLetterRowJson(BaseModel):
    """A message the chain rejected for good, with its code (and PoC stage for a batch)."""

    id: int
    type: str
    stage: str
    code: int
    codespace: str
    log: str
    failed_at: str
    poc_stage: int | None


class OutboxBoardJson(BaseModel):
    """Outbox counts per state, its depth (not yet landed) and the latest dead letters."""

    counts: dict[str, int]
    depth: int
    dead_letters: list[DeadLetterRowJson]


class DashboardJson(BaseModel):
    """Everything the dashboard shows at one moment."""

    generated_at: str
    account_address: str
    read_only: bool
    chain: ChainJson
    nodes: list[NodeRowJson]
    poc: PocJson
    inference: InferenceJson | None
    validation: ValidationJson | None
    outbox: OutboxBoardJson | None


class PointJson(BaseModel):
    """One chart point: request rate and latency (None without inference), PoC batches per second."""

    t: str
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    batches_per_s: float


class EpochRecordJson(BaseModel):
    """One recent epoch: the own weight, its rewards claim (sent, landed, amount paid), its validations."""

    epoch: int
    weight: int | None
    claim_sent: bool
    claim_landed: bool
    reward: int | None
    validations: dict[str, int] | None


class HistoryJson(BaseModel):
    """The last hour of chart points and the last few epochs."""

    point_seconds: float
    points: list[PointJson]
    epochs: list[EpochRecordJson]


# -- auth --------------------------------------------------------------------------------------------


def session_value(token: str) -> str:
    """The cookie a browser holds after logging in: an HMAC of the token, so the cookie is not the token."""
    return hmac.new(token.encode(), b"dapi admin ui session", hashlib.sha256).hexdigest()


class UiLoginRequired(Exception):
    """The page was asked for without a valid token or session: answered with the login form."""


def admin_auth(token: str) -> Callable[[Request], Awaitable[None]]:
    """The admin server's check: the bearer header, or the dashboard's session cookie (see the module doc)."""
    bearer = bearer_auth(token)
    session = session_value(token).encode() if token else b""

    async def check(request: Request) -> None:
        if not token:
            return
        path = request.url.path
        if path == "/admin/ui/login" and request.method == "POST":
            return  # the login itself checks the token it is given
        cookie = request.cookies.get(COOKIE, "").encode("latin-1", "replace")
        if cookie and hmac.compare_digest(cookie, session) and (
                request.method in _READS or request.headers.get(UI_HEADER) == "1"):
            return
        if path.startswith("/admin/ui") and request.method in _READS:
            given = request.query_params.get("token")
            if path == "/admin/ui" and given is not None and hmac.compare_digest(given.encode(), token.encode()):
                return
            if "authorization" not in request.headers:
                raise UiLoginRequired
        await bearer(request)

    return check


def _asset(name: str) -> bytes:
    return resources.files("dapi.server.admin").joinpath("ui", name).read_bytes()


def _session_response(token: str, location: str = "/admin/ui") -> Response:
    response = RedirectResponse(location, status_code=303)
    response.set_cookie(COOKIE, session_value(token), path="/admin", httponly=True, samesite="strict")
    return response


# -- routes ------------------------------------------------------------------------------------------


def install_dashboard(app: FastAPI, source: DashboardSource, token: str) -> None:
    """The page, its two assets, the login, and the two JSON routes the page polls."""
    page = _asset("index.html")
    login = _asset("login.html")
    assets = {name: _asset(name) for name in _ASSETS}
    auth = (401,) if token else ()

    async def login_required(_: Request, __: Exception) -> Response:
        return HTMLResponse(login, status_code=401, headers=_PAGE_HEADERS)

    app.add_exception_handler(UiLoginRequired, login_required)

    @app.get("/admin/ui", include_in_schema=False)
    async def ui(request: Request) -> Response:
        if token and "token" in request.query_params:
            return _session_response(token)  # admin_auth let it through: the token was right; drop it from the URL
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.post("/admin/ui/login", include_in_schema=False)
    async def ui_login(request: Request) -> Response:
        if not token:
            return RedirectResponse("/admin/ui", status_code=303)
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HTMLResponse(login, status_code=401, headers=_PAGE_HEADERS)
        return _session_response(token)

    @app.get("/admin/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> Response:
        if name not in assets:
            raise ApiError(404, f"no such dashboard file: {name[:60]}")
        return Response(assets[name], media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})

    @app.get("/admin/v1/dashboard", response_model=DashboardJson, responses=error_responses(*auth))
    async def dashboard() -> JSONResponse:
        """What the dashboard shows now: chain and epoch, own ML nodes, PoC, inference, validation, outbox.

        ``inference`` and ``validation`` are null while the daemon does not report them.
        """
        return JSONResponse(await source.dashboard())

    @app.get("/admin/v1/dashboard/history", response_model=HistoryJson, responses=error_responses(*auth))
    async def dashboard_history() -> JSONResponse:
        """The last hour of chart points (request rate, latency, PoC batches per second) and recent epochs."""
        return JSONResponse(source.history())
