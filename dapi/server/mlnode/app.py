"""ML node callbacks: PoC batches in, chain messages durably queued out (reference/http.md §2).

A batch is answered 200 only once its message is committed to the outbox, so an answered batch is
never lost. The body is checked strictly and fast (a 100,000-nonce batch is a few MB of JSON): each
rule that fails answers 400 naming the field.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request
from google.protobuf.message import Message
from pydantic import BaseModel, Field
from starlette.responses import Response

from dapi.chain.keys import address_from_key_bytes, public_key_from_hex
from dapi.chain.outbox import OutboxClosed, TxSink
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitPocValidation
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.server.common import ApiError, BodyLimit, HeadAsGet, error_responses, install_error_handlers, read_json_body

log = get_logger(__name__)


class NodeLookup(Protocol):
    """Node number → node id, for tagging a batch with the ML node that made it."""

    def node_id_by_num(self, node_num: int) -> str | None: ...


class BatchSink(TxSink, Protocol):
    """Where accepted batches go as chain messages (the durable outbox), and whether it can send at all."""

    @property
    def can_send(self) -> bool: ...


INT64_MAX = 2**63 - 1
NonNegative = Annotated[int, Field(ge=0, le=INT64_MAX)]
Distance = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ProofBatchBody(BaseModel):
    """A generated batch as the ML node sends it (documentation of the body; parsing is done by hand).

    Beyond what the schema can say: ``nonces`` and ``dist`` have the same length.
    """

    public_key: str = Field(pattern="^([0-9a-fA-F]{2})+$", description="Hex of the participant's public key")
    block_hash: str
    block_height: int = Field(ge=1, le=2**63 - 1, description="PoC stage start height")
    nonces: list[NonNegative] = Field(min_length=1, description="Non-negative nonces, same length as dist")
    dist: list[Distance] = Field(min_length=1, description="Finite distances >= 0, same length as nonces")
    node_id: NonNegative = Field(0, description="The node number the API node gave this ML node (0 = unknown)")


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


def create_mlnode_app(
    *, nodes: NodeLookup, outbox: BatchSink, account_address: str, metrics: Metrics | None = None,
    body_limit: int = 64 * 1024 * 1024,
) -> FastAPI:
    app = FastAPI(title="dapi ML node callbacks", version="1", docs_url="/docs")
    install_error_handlers(app, domain={OutboxClosed: 503})

    async def queue(msg: Message, kind: str) -> Response:
        if not outbox.can_send:
            raise ApiError(503, "this API node has no signer key: batches cannot be submitted to the chain")
        await outbox.submit(msg)
        if metrics is not None:
            metrics.batches_accepted.labels(kind=kind).inc()
        return Response(status_code=200)

    generated_doc: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ProofBatchBody.model_json_schema(ref_template="#/components/schemas/{model}")}}},
    }
    validated_doc: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ValidatedBatchBody.model_json_schema(ref_template="#/components/schemas/{model}")}}},
    }
    errors = error_responses(400, 413, 503)

    async def generated(request: Request) -> Response:
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
        body = await read_json_body(request)
        key, height, nonces, _ = _common(body)
        prover = _prover_key(key)
        received = _distances(body, "received_dist")
        if len(received) != len(nonces):
            raise ApiError(400, f"received_dist: length {len(received)} differs from nonces length {len(nonces)}")
        n_invalid = _field(body, "n_invalid", int)
        if not 0 <= n_invalid <= INT64_MAX:
            raise ApiError(400, f"n_invalid: must be a non-negative 64-bit integer (got {_shown(n_invalid)})")
        msg = MsgSubmitPocValidation(
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
        return await queue(msg, "validated")

    for prefix in ("/v1", "/mlnode/v1"):
        app.add_api_route(f"{prefix}/poc-batches/generated", generated, methods=["POST"], status_code=200,
                          openapi_extra=generated_doc, responses={200: {"description": "Durably queued"}, **errors},
                          summary="Submit a generated PoC batch", response_class=Response)
        app.add_api_route(f"{prefix}/poc-batches/validated", validated, methods=["POST"], status_code=200,
                          openapi_extra=validated_doc, responses={200: {"description": "Durably queued"}, **errors},
                          summary="Submit a validated PoC batch", response_class=Response)
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(HeadAsGet)
    return app
