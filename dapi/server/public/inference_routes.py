"""The inference routes of the public API (reference/http.md §1.9, §1.11, §1.13; DESIGN.md §8).

* `POST /v1/chat/completions`: no `Authorization` → 401; `X-Inference-Id` and `X-Seed` both present →
  this node is the Executor, otherwise the Transfer Agent. The raw body is passed on byte for byte.
* `GET /v1/chat/completions/{id}`: the chain's `Inference` record, bare.
* `GET /v1/participants/{address}`: `{pubkey, balance}` of an account.
* `GET /v1/epochs/{epoch}/participants`: the epoch's stored ActiveParticipants (`current` = the effective
  epoch, from the last processed block rather than a chain query); `excluded_participants` is always
  present (gonka-openai ≥ 0.2.5 reads it). No proof is attached (`proof_ops`, `block`: null).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from dapi.chain.errors import ChainError, ChainNotFound, ChainRejected
from dapi.gen.inference.inference.activeparticipants_pb2 import ActiveParticipants
from dapi.inference.directory import NoExecutor, effective_epoch_index
from dapi.inference.executor import Reply
from dapi.inference.service import InferenceService
from dapi.server.common import ApiError, error_responses, go_json, json_bytes, path_int

__all__ = ["add_inference_routes"]

JSON = "application/json"
NO_PARTICIPANTS = "No active participants found for the specified epoch. Looks like PoC failed!"
NO_SIGNER = "this API node has no signer key, so it cannot take part in inference"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatCompletionRequest(_Open):
    """An OpenAI chat completion request; signed, so it is forwarded byte for byte."""

    model: str
    messages: list[dict[str, Any]]


class ParticipantKeyResponse(_Open):
    """An account's base64 compressed secp256k1 pubkey and spendable ngonka (zero values omitted)."""

    pubkey: str | None = None
    balance: int | None = None


class EpochParticipantsResponse(_Open):
    """The stored ActiveParticipants of an epoch, their CometBFT validator addresses and the raw bytes (hex)."""

    active_participants: dict[str, Any]
    addresses: list[str]
    active_participants_bytes: str
    excluded_participants: list[dict[str, Any]]


def validator_address(validator_key_b64: str) -> str:
    try:
        key = base64.b64decode(validator_key_b64, validate=True)
    except ValueError:
        return ""
    return hashlib.sha256(key).digest()[:20].hex().upper()


def to_response(reply: Reply) -> Response:
    background = BackgroundTask(reply.after) if reply.after is not None else None
    if reply.stream is not None:
        return StreamingResponse(reply.stream, status_code=reply.status, headers=reply.headers,
                                 background=background)
    return Response(reply.body, status_code=reply.status, headers=reply.headers, background=background)


def render_participants(stored: ActiveParticipants, raw: bytes) -> bytes:
    body = {
        "active_participants": go_json(stored),
        "addresses": [validator_address(p.validator_key) for p in stored.participants],
        "active_participants_bytes": raw.hex(),
        "proof_ops": None,
        "validators": [],
        "block": None,
        "excluded_participants": [],
    }
    return json_bytes(body)


def add_inference_routes(app: FastAPI, service: InferenceService) -> None:
    @app.post("/v1/chat/completions", response_model=None,
              openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": {
                  "$ref": "#/components/schemas/ChatCompletionRequest"}}}}},
              responses={200: {"description": "The chat completion (JSON, or SSE when `stream` is true)"},
                         **error_responses(400, 401, 402, 413, 429, 502, 503)})
    async def post_chat_completions(request: Request) -> Response:
        """Serve a signed chat completion: as Transfer Agent, or as Executor when the TA's headers are present."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not headers.get("authorization"):
            raise ApiError(401, "Authorization is required")
        raw = await request.body()
        executor_call = "x-inference-id" in headers and "x-seed" in headers
        role = service.executor if executor_call else service.ta
        if role is None:
            raise ApiError(503, NO_SIGNER)
        return to_response(await role.serve(headers, raw))

    # The request model is documented without FastAPI reading the body (the raw bytes are signed).
    _document(app, ChatCompletionRequest)

    @app.get("/v1/chat/completions/{inference_id:path}", response_model=None,
             responses={200: {"description": "The chain's Inference record"}, **error_responses(400, 404, 503)})
    async def get_chat_completion(inference_id: str) -> Response:
        """The chain's record of an inference (its id is the client's Authorization signature)."""
        if not inference_id:
            raise ApiError(400, "Invalid inference ID")
        try:
            inference = await service.query.inference(inference_id)
        except ChainNotFound:
            raise ApiError(404, "Inference not found") from None
        except ChainError as exc:
            raise ApiError(503, f"chain query failed: {exc}") from None
        return Response(json_bytes(go_json(inference)), media_type=JSON)

    @app.get("/v1/participants/{address}", response_model=None,
             responses={200: {"model": ParticipantKeyResponse}, **error_responses(400, 404, 503)})
    async def get_participant(address: str) -> Response:
        """An account's pubkey and spendable balance, as the chain's InferenceParticipant query answers."""
        try:
            answer = await service.query.inference_participant(address)
        except ChainNotFound:
            raise ApiError(404, f"participant {address} not found") from None
        except ChainRejected as exc:  # not an address: no such participant either
            raise ApiError(404, f"participant {address!r} not found: {exc.log or exc}") from None
        except ChainError as exc:
            raise ApiError(503, f"chain query failed: {exc}") from None
        body: dict[str, Any] = {}
        if answer.pubkey:
            body["pubkey"] = answer.pubkey
        if answer.balance:
            body["balance"] = answer.balance
        return Response(json_bytes(body), media_type=JSON)

    @app.get("/v1/epochs/{epoch}/participants", response_model=None,
             responses={200: {"model": EpochParticipantsResponse}, **error_responses(400, 404, 503)})
    async def get_epoch_participants(
        epoch: Annotated[str, Path(description="`current` or an epoch index (from 1)",
                                   pattern=r"^(current|[1-9][0-9]{0,18})$")],
    ) -> Response:
        """The participants of an epoch with their inference URLs, weights, models and ML nodes."""
        if epoch == "current":
            snapshot = service.view.snapshot
            if snapshot is None:
                raise ApiError(503, "no block processed yet: the current epoch is not known")
            index = effective_epoch_index(snapshot)
            if index == 0:  # the genesis epoch has no participants: none formed yet
                raise ApiError(404, NO_PARTICIPANTS)
        else:
            index = path_int("epoch", epoch, maximum=2**64 - 1, problem="Invalid epoch id")
        if index == 0:
            raise ApiError(400, "Epoch enumeration starts with 1")
        try:
            found = await service.directory.epoch(index)
        except ChainNotFound:
            raise ApiError(404, NO_PARTICIPANTS) from None
        except (ChainError, NoExecutor) as exc:
            raise ApiError(503, f"chain query failed: {exc}") from None
        return Response(render_participants(found.stored.value, found.stored.raw), media_type=JSON)


def _document(app: FastAPI, model: type[BaseModel]) -> None:
    """Register `model` in the OpenAPI components (the route reads the raw body, not a parsed model)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})[model.__name__] = \
                model.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
