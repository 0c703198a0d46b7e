"""ML node callbacks: PoC batches in, chain messages durably queued out (reference/http.md §2, DESIGN.md §4.5).

Each ML node posts to its own URL, ``/n/<node secret>/v1/poc-batches/generated|validated``, given to it
in its InitDto. A batch there is the node's whatever ``node_id`` it claims, and must name this
participant's key (generated batches) and a PoC stage the node was started for. Anyone else who can
reach the port gets nothing signed: an unknown secret is 404 before the body is read. The reference's
shared routes (``/v1/poc-batches/...``, ``/mlnode/v1/...``), which trust the claimed node number and
check nothing, answer only when ``api.ml_legacy_callbacks`` is on.

A batch is answered 200 only once its message is committed to the outbox, so an answered batch is
never lost. The body is checked strictly and fast (a 100,000-nonce batch is a few MB of JSON): each
rule that fails answers 400 naming the field.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Path, Request
from google.protobuf.message import Message
from pydantic import BaseModel, Field
from starlette.responses import Response

from dapi.broker import Broker
from dapi.chain.epochs import EpochContext
from dapi.chain.keys import address_from_key_bytes, public_key_from_hex
from dapi.chain.outbox import OutboxClosed, TxSink
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitPocValidation
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.mlnodeclient.models import NODE_CALLBACK_PREFIX, POC_BATCHES_PATH
from dapi.poc.batches import DEFAULT_MAX_TX_BYTES, BatchTooLarge, split_batch
from dapi.server.common import ApiError, BodyLimit, HeadAsGet, error_responses, install_error_handlers, read_json_body

log = get_logger(__name__)


class NodeLookup(Protocol):
    """What the callback server asks the broker: which node a callback secret (or, on the shared routes, a
    node number) names, and the start block hash of each PoC stage the nodes were started for."""

    def node_id_by_secret(self, secret: str) -> str | None: ...

    def node_id_by_num(self, node_num: int) -> str | None: ...

    def poc_stage_hash(self, height: int) -> str | None: ...

    def closed_window(self, stage_height: int, *, validation: bool) -> tuple[int, int] | None:
        """(window end, processed height) when the stage's exchange window has closed, else None."""
        ...


class BrokerNodes:
    """The broker as the callback server sees it (a :class:`NodeLookup`): ids of nodes, hashes of PoC stages."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def node_id_by_secret(self, secret: str) -> str | None:
        return self.broker.callback_owner(secret)

    def node_id_by_num(self, node_num: int) -> str | None:
        node = self.broker.node_by_num(node_num)
        return node.id if node else None

    def poc_stage_hash(self, height: int) -> str | None:
        return self.broker.poc_stage_hash(height)

    def closed_window(self, stage_height: int, *, validation: bool) -> tuple[int, int] | None:
        # The next block the tx could join is processed + 1: once the daemon has processed the window's
        # last height, the chain will refuse the batch (code 1108), so it is not accepted.
        state = self.broker.epoch_state
        if state is None or not state.synced or stage_height <= 0:
            return None
        ctx = EpochContext(max(state.latest_epoch_index, 1), stage_height, state.epoch_params)
        end = (ctx.validation_exchange_window if validation else ctx.poc_exchange_window).end
        return (end, state.block_height) if state.block_height >= end else None


class BatchSink(TxSink, Protocol):
    """Where accepted batches go as chain messages (the durable outbox), and whether it can send at all."""

    @property
    def can_send(self) -> bool: ...

    async def submit_many(self, msgs: Iterable[Message]) -> list[int]: ...


INT64_MAX = 2**63 - 1
Handler = Callable[..., Awaitable[Response]]
SECRET = Path(description="The secret in the node's own callback URL (from its InitDto)")
NonNegative = Annotated[int, Field(ge=0, le=INT64_MAX)]
Distance = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ProofBatchBody(BaseModel):
    """A generated batch as the ML node sends it (documentation of the body; parsing is done by hand).

    Beyond what the schema can say: ``nonces`` and ``dist`` have the same length; on a node's own URL,
    ``public_key``, ``block_height`` and ``block_hash`` are those of the node's InitDto.
    """

    public_key: str = Field(pattern="^([0-9a-fA-F]{2})+$", description="Hex of the participant's public key")
    block_hash: str = Field(description="Hash of the PoC stage's start block (hex, any case)")
    block_height: int = Field(ge=1, le=2**63 - 1, description="PoC stage start height")
    nonces: list[NonNegative] = Field(min_length=1, description="Non-negative nonces, same length as dist")
    dist: list[Distance] = Field(min_length=1, description="Finite distances >= 0, same length as nonces")
    node_id: NonNegative = Field(0, description="The node number the API node gave this ML node (0 = unknown); "
                                                "on a node's own URL it is not trusted, the URL names the node")


class ValidatedBatchBody(ProofBatchBody):
    """A validated batch: ``public_key`` is the prover's; ``received_dist`` has the length of ``nonces``."""

    public_key: str = Field(pattern="^0[23][0-9a-fA-F]{64}$",
                            description="Hex of the prover's 33-byte compressed secp256k1 public key")
    received_dist: list[Distance]
    r_target: float = Field(allow_inf_nan=False)
    fraud_threshold: float = Field(allow_inf_nan=False)
    n_invalid: NonNegative
    probability_honest: float = Field(allow_inf_nan=False)
    fraud_detected: bool


def _field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in body:
        if required:
            raise ApiError(400, f"{name}: required")
        return None
    value = body[name]
    # bool is an int in Python but never a number in JSON.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"{name}: wrong type {type(value).__name__}")
    if not isinstance(value, kinds):
        raise ApiError(400, f"{name}: wrong type {type(value).__name__}")
    return value


def _nonces(body: dict[str, Any]) -> list[int]:
    nonces = _field(body, "nonces", list)
    if not nonces:
        raise ApiError(400, "nonces: must not be empty")
    for index, n in enumerate(nonces):
        if type(n) is not int or n < 0 or n >= 2**63:
            raise ApiError(400, f"nonces[{index}]: must be a non-negative 64-bit integer (got {_shown(n)})")
    return nonces


def _finite(value: Any) -> float | None:
    """The number as a float, or None when it is not a finite JSON number (an integer literal beyond the
    float range included: JSON allows any length of digits)."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _distances(body: dict[str, Any], name: str, *, non_negative: bool = True) -> list[float]:
    values = _field(body, name, list)
    numbers: list[float] = []
    for index, d in enumerate(values):
        number = _finite(d)
        if number is None or (non_negative and number < 0):
            raise ApiError(400, f"{name}[{index}]: must be a finite number >= 0 (got {_shown(d)})")
        numbers.append(number)
    return numbers


def _hex_key(body: dict[str, Any]) -> str:
    key = _field(body, "public_key", str)
    try:
        if not key or len(key) % 2:
            raise ValueError
        bytes.fromhex(key)
    except ValueError:
        raise ApiError(400, "public_key: must be a non-empty hex string") from None
    return key


def _number(body: dict[str, Any], name: str) -> float:
    value = _field(body, name, (int, float))
    number = _finite(value)
    if number is None:
        raise ApiError(400, f"{name}: must be a finite number (got {_shown(value)})")
    return number


_COMPRESSED_KEY_HEX = re.compile("0[23][0-9a-fA-F]{64}")


def _prover_key(key: str) -> bytes:
    """A validated batch names the prover by key; only a real compressed secp256k1 key names anyone."""
    problem = f"got {len(key) // 2} bytes"
    if _COMPRESSED_KEY_HEX.fullmatch(key):
        try:
            return public_key_from_hex(key)
        except ValueError:
            problem = "not a point on the curve"
    raise ApiError(400, f"public_key: must be the hex of a 33-byte compressed secp256k1 public key ({problem})")


def _common(body: Any) -> tuple[str, int, list[int], list[float]]:
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object")
    key = _hex_key(body)
    _field(body, "block_hash", str)
    height = _field(body, "block_height", int)
    if height <= 0 or height >= 2**63:
        raise ApiError(400, f"block_height: must be a positive 64-bit integer (got {_shown(height)})")
    nonces = _nonces(body)
    dist = _distances(body, "dist")
    if len(dist) != len(nonces):
        raise ApiError(400, f"dist: length {len(dist)} differs from nonces length {len(nonces)}")
    node_num = body.get("node_id", 0)
    if node_num is None:
        node_num = 0
    if type(node_num) is not int or not 0 <= node_num <= INT64_MAX:
        raise ApiError(400, f"node_id: must be a non-negative 64-bit integer (got {_shown(node_num)})")
    return key, height, nonces, dist


LEGACY_OFF = ("the shared callback routes are off: each ML node posts its batches to its own URL, given to it at "
              "PoC init (<api.poc_callback_url>/n/<node secret>/v1/poc-batches); set api.ml_legacy_callbacks: true "
              "(DAPI_API__ML_LEGACY_CALLBACKS=true) to turn them on")
UNKNOWN_URL = "unknown callback URL: no ML node of this API node was given it (a removed node's URL stops working)"


def _validation_msg(body: Any, account_address: str) -> MsgSubmitPocValidation:
    key, height, nonces, _ = _common(body)
    prover = _prover_key(key)
    received = _distances(body, "received_dist")
    if len(received) != len(nonces):
        raise ApiError(400, f"received_dist: length {len(received)} differs from nonces length {len(nonces)}")
    n_invalid = _field(body, "n_invalid", int)
    if not 0 <= n_invalid <= INT64_MAX:
        raise ApiError(400, f"n_invalid: must be a non-negative 64-bit integer (got {_shown(n_invalid)})")
    return MsgSubmitPocValidation(
        creator=account_address,
        participant_address=address_from_key_bytes(prover),
        poc_stage_start_block_height=height,
        # The arrays are left empty on purpose, as the reference does: the chain reads only the verdict.
        r_target=_number(body, "r_target"),
        fraud_threshold=_number(body, "fraud_threshold"),
        n_invalid=n_invalid,
        probability_honest=_number(body, "probability_honest"),
        fraud_detected=_field(body, "fraud_detected", bool),
    )


def _stage_problem(nodes: NodeLookup, body: dict[str, Any], height: int) -> str | None:
    """Why the batch does not name a PoC stage our nodes were started for (its start height and that block's
    hash), or None when it does.

    Only stages never sent to our nodes are refused; whether a batch of a recent stage is late is the
    chain's decision (its exchange window), not ours.
    """
    expected = nodes.poc_stage_hash(height)
    if expected is None:
        return f"block_height: {height} is not the start of a PoC stage this API node started its ML nodes for"
    given: str = body["block_hash"]
    if given.upper() != expected.upper():
        return f"block_hash: not the hash of block {height}, where that PoC stage started (got {_shown(given)})"
    return None


def create_mlnode_app(
    *, nodes: NodeLookup, outbox: BatchSink, account_address: str, participant_pubkey_hex: str,
    legacy_callbacks: bool = False, metrics: Metrics | None = None, body_limit: int = 64 * 1024 * 1024,
    max_tx_bytes: int = DEFAULT_MAX_TX_BYTES,
) -> FastAPI:
    """The callback app. ``participant_pubkey_hex`` is the key every own generated batch must carry;
    ``legacy_callbacks`` opens the shared reference routes (off: they answer 404 saying how to turn them on)."""
    app = FastAPI(title="dapi ML node callbacks", version="1", docs_url="/docs")
    install_error_handlers(app, domain={OutboxClosed: 503})
    own_key = participant_pubkey_hex.lower()

    async def queue(msg: Message, kind: str) -> Response:
        if not outbox.can_send:
            raise ApiError(503, "this API node has no signer key: batches cannot be submitted to the chain")
        msgs: Sequence[Message] = [msg]
        if isinstance(msg, MsgSubmitPocBatch):
            # Nothing is answered 200 that can never land: a batch too big for one transaction goes as
            # several messages, each its own batch id; only what no split fits is refused.
            try:
                msgs = split_batch(msg, max_tx_bytes=max_tx_bytes, new_batch_id=lambda: str(uuid.uuid4()))
            except BatchTooLarge as exc:
                raise ApiError(413, f"batch cannot fit a transaction of {max_tx_bytes} bytes: {exc}") from None
            if len(msgs) > 1:
                log.info("PoC batch split to fit the chain's transaction size", nonces=len(msg.nonces),
                         messages=len(msgs), node_id=msg.node_id)
        await outbox.submit_many(msgs)
        if metrics is not None:
            metrics.batches_accepted.labels(kind=kind).inc(len(msgs))
        return Response(status_code=200)

    def refused(kind: str, reason: str, status: int, message: str, **fields: Any) -> ApiError:
        if metrics is not None:
            metrics.batches_refused.labels(kind=kind, reason=reason).inc()
        log.warning("PoC batch refused", kind=kind, reason=reason, error=message, **fields)
        return ApiError(status, message)

    def late(lookup: NodeLookup, kind: str, stage_height: int, node_id: str) -> None:
        closed = lookup.closed_window(stage_height, validation=kind == "validated")
        if closed is not None:
            end, processed = closed
            raise refused(kind, "late", 410, f"the exchange window of the PoC stage at {stage_height} closed at "
                          f"block {end} (this API node is at {processed}): the chain would refuse it",
                          node_id=node_id)

    def owner(secret: str, kind: str, request: Request) -> str:
        node_id = nodes.node_id_by_secret(secret)
        if node_id is None:
            raise refused(kind, "unknown_url", 404, UNKNOWN_URL, client=request.client.host if request.client else None)
        return node_id

    # --- each node's own URL ---

    async def node_generated(secret: Annotated[str, SECRET], request: Request) -> Response:
        node_id = owner(secret, "generated", request)
        body = await read_json_body(request)
        key, height, nonces, dist = _common(body)
        if key.lower() != own_key:
            raise refused("generated", "public_key", 400,
                          "public_key: not this participant's public key (the one the node's InitDto gave)",
                          node_id=node_id)
        if (problem := _stage_problem(nodes, body, height)) is not None:
            raise refused("generated", "stage", 400, problem, node_id=node_id)
        late(nodes, "generated", height, node_id)
        claimed = body.get("node_id") or 0
        if claimed and nodes.node_id_by_num(claimed) != node_id:
            log.warning("PoC batch claims another node's number; attributed to the node whose URL it came on",
                        node_id=node_id, claimed_node_num=claimed)
        msg = MsgSubmitPocBatch(creator=account_address, poc_stage_start_block_height=height,
                                batch_id=str(uuid.uuid4()), nonces=nonces, dist=dist, node_id=node_id)
        return await queue(msg, "generated")

    async def node_validated(secret: Annotated[str, SECRET], request: Request) -> Response:
        node_id = owner(secret, "validated", request)
        body = await read_json_body(request)
        msg = _validation_msg(body, account_address)
        if (problem := _stage_problem(nodes, body, msg.poc_stage_start_block_height)) is not None:
            raise refused("validated", "stage", 400, problem, node_id=node_id)
        late(nodes, "validated", msg.poc_stage_start_block_height, node_id)
        return await queue(msg, "validated")

    # --- the reference's shared routes ---

    async def generated(request: Request) -> Response:
        if not legacy_callbacks:
            raise refused("generated", "legacy_off", 404, LEGACY_OFF)
        body = await read_json_body(request)
        _, height, nonces, dist = _common(body)
        node_num = body.get("node_id") or 0
        node_id = nodes.node_id_by_num(node_num) if node_num else None
        if node_id is None:
            # Old ML nodes and mocks send no node number: the batch still counts, for the participant.
            log.warning("PoC batch from an unknown node number; submitted without node id", node_num=node_num)
        msg = MsgSubmitPocBatch(creator=account_address, poc_stage_start_block_height=height,
                                batch_id=str(uuid.uuid4()), nonces=nonces, dist=dist, node_id=node_id or "")
        return await queue(msg, "generated")

    async def validated(request: Request) -> Response:
        if not legacy_callbacks:
            raise refused("validated", "legacy_off", 404, LEGACY_OFF)
        body = await read_json_body(request)
        return await queue(_validation_msg(body, account_address), "validated")

    routes: list[tuple[str, Handler, Handler, bool, str]] = [
        (f"{NODE_CALLBACK_PREFIX}/{{secret}}{POC_BATCHES_PATH}", node_generated, node_validated, False,
         "One ML node's own callback URL, given to it in its InitDto; the batch is that node's."),
        *((f"{prefix}/poc-batches", generated, validated, True,
           "The reference's shared route; off (404) unless api.ml_legacy_callbacks is true. The batch is "
           "attributed by the node number it claims.") for prefix in ("/v1", "/mlnode/v1")),
    ]
    for path, on_generated, on_validated, legacy, description in routes:
        statuses = (400, 404, 413, 503) if legacy else (400, 404, 410, 413, 503)
        for kind, handler, model in (("generated", on_generated, ProofBatchBody),
                                     ("validated", on_validated, ValidatedBatchBody)):
            doc = {"requestBody": {"required": True, "content": {"application/json": {
                "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
            app.add_api_route(f"{path}/{kind}", handler, methods=["POST"], status_code=200, openapi_extra=doc,
                              responses={200: {"description": "Durably queued"}, **error_responses(*statuses)},
                              summary=f"Submit a {kind} PoC batch" + (" (shared route)" if legacy else ""),
                              description=description, response_class=Response)
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(HeadAsGet)
    return app
