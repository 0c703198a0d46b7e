"""JSON shapes of the ML node API (reference/http.md §2.1, §4, §6).

Field order matters only for readability of captured traffic, but we keep the order the real ML node
sends (reference/http.md §6.2) so that logs and golden payloads line up with the reference's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MLNodeState(StrEnum):
    """`state` of `GET /api/v1/state`.

    UNKNOWN is ours: the broker maps any value it does not know to the chain status UNKNOWN, so the
    client hands such values over as UNKNOWN instead of failing the whole status poll.
    """

    POW = "POW"
    INFERENCE = "INFERENCE"
    TRAIN = "TRAIN"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def _missing_(cls, value: object) -> MLNodeState:
        return cls.UNKNOWN


class PowState(StrEnum):
    """`status` of `GET /api/v1/pow/status` (UNKNOWN is ours, as for MLNodeState)."""

    IDLE = "IDLE"
    NOT_LOADED = "NOT_LOADED"
    LOADING = "LOADING"
    GENERATING = "GENERATING"
    VALIDATING = "VALIDATING"
    STOPPED = "STOPPED"
    MIXED = "MIXED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def _missing_(cls, value: object) -> PowState:
        return cls.UNKNOWN


class PowStatus(BaseModel):
    """Body of `GET /api/v1/pow/status`.

    The real node omits `is_model_initialized` while no PoW controller exists (`{"status": "NOT_LOADED"}`);
    the Go client decodes that as false, so do we.
    """

    status: PowState
    is_model_initialized: bool = False

    @field_validator("status", mode="before")
    @classmethod
    def _status_is_a_string(cls, value: object) -> object:
        # PowState maps unknown *names* to UNKNOWN; a non-string is a broken answer, not a new state.
        if not isinstance(value, str):
            raise ValueError("status must be a string")
        return value


class PocModelParams(BaseModel):
    """PoC model parameters (Go `Params`, Python `Params`), sent inside InitDto."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim_multiplier: float
    multiple_of: int
    norm_eps: float
    # An int because Go's field is an int and sends `10000`, not `10000.0`; the Python node accepts both.
    rope_theta: int
    use_scaled_rope: bool
    seq_len: int


MAINNET_PARAMS = PocModelParams(
    dim=1792,
    n_layers=64,
    n_heads=64,
    n_kv_heads=64,
    vocab_size=8196,
    ffn_dim_multiplier=10.0,
    multiple_of=8192,
    norm_eps=1e-5,
    rope_theta=10000,
    use_scaled_rope=False,
    seq_len=256,
)

DEFAULT_BATCH_SIZE = 100
DEFAULT_R_TARGET = 1.4013564660458173
DEFAULT_FRAUD_THRESHOLD = 1e-7
POC_BATCHES_PATH = "/v1/poc-batches"
NODE_CALLBACK_PREFIX = "/n"  # <poc_callback_url>/n/<node secret>/v1/poc-batches: one node's own callback URL


class InitDto(BaseModel):
    """Body of `POST /api/v1/pow/init/generate` and `/init/validate` (reference/http.md §4.1)."""

    block_hash: str
    block_height: int
    public_key: str
    batch_size: int = DEFAULT_BATCH_SIZE
    r_target: float = DEFAULT_R_TARGET
    fraud_threshold: float = DEFAULT_FRAUD_THRESHOLD
    params: PocModelParams = Field(default_factory=lambda: MAINNET_PARAMS.model_copy())
    node_id: int
    node_count: int
    url: str


class ProofBatch(BaseModel):
    """Generated nonces of one node (`/generated` callback body and `/api/v1/pow/validate` body).

    `node_id` defaults to 0 because the testermint mock node omits it, and 0 is the reference's
    "unknown node" value (node numbers start at 1).
    """

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int = 0


class ValidatedBatch(ProofBatch):
    """`/validated` callback body: `dist` is recomputed by the validator, `received_dist` is the prover's claim."""

    received_dist: list[float]
    r_target: float
    fraud_threshold: float
    n_invalid: int
    probability_honest: float
    fraud_detected: bool


class InferenceUpRequest(BaseModel):
    """Body of `POST /api/v1/inference/up`."""

    model: str
    dtype: str = "float16"
    additional_args: list[str] = Field(default_factory=list)


class StartTrainingRequest(BaseModel):
    """Body of `POST /api/v1/train/start` (reference/http.md §4.2); the ML node accepts any JSON object."""

    model_config = ConfigDict(extra="allow")

    train_config: dict[str, Any]
    train_env: dict[str, str]


def build_init_dto(
    *,
    block_height: int,
    block_hash: str,
    public_key: str,
    node_num: int,
    node_count: int,
    callback_url: str,
    params: PocModelParams = MAINNET_PARAMS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    r_target: float = DEFAULT_R_TARGET,
    fraud_threshold: float = DEFAULT_FRAUD_THRESHOLD,
) -> InitDto:
    """InitDto as the reference's BuildInitDto, with DESIGN.md §4.5's node_count.

    `callback_url` is the node's own callback base (`node_callback_url`, DESIGN.md §4.5) or, in the
    reference's way, `api.poc_callback_url`; the ML node appends `/generated` or `/validated` to the
    `url` we send, which is why it gets the `/v1/poc-batches` suffix (the path real nodes expect).
    `block_hash` is passed through untouched (the chain's uppercase hex); `public_key` is lowercased
    because the callback server decodes it back into the prover's address and the contract is lowercase.
    """
    # node_count = highest NodeNum + 1 is what keeps nonce spaces (node_id + k*node_count) disjoint; a
    # smaller count would make two nodes mine the same nonces, so refuse it rather than send it.
    if node_num < 0 or node_count <= node_num:
        raise ValueError(f"node_num {node_num} must be in [0, node_count={node_count})")
    # The config carries the key as base64; catching a key that was never converted beats lowercasing it.
    try:
        bytes.fromhex(public_key)
    except ValueError as exc:
        raise ValueError(f"public_key must be hex, got {public_key!r}") from exc
    return InitDto(
        block_hash=block_hash,
        block_height=block_height,
        public_key=public_key.lower(),
        batch_size=batch_size,
        r_target=r_target,
        fraud_threshold=fraud_threshold,
        params=params.model_copy(),
        node_id=node_num,
        node_count=node_count,
        url=poc_batches_url(callback_url),
    )


def poc_batches_url(poc_callback_url: str) -> str:
    """`<callback base>/v1/poc-batches`, the `url` an InitDto carries."""
    return poc_callback_url.rstrip("/") + POC_BATCHES_PATH


def node_callback_url(poc_callback_url: str, secret: str) -> str:
    """`<api.poc_callback_url>/n/<secret>`: one node's callback base; only its batches are posted there."""
    if not secret:
        raise ValueError("a node's callback URL needs its secret")
    return f"{poc_callback_url.rstrip('/')}{NODE_CALLBACK_PREFIX}/{secret}"


def node_base_url(host: str, port: int, segment: str = "") -> str:
    """`http://{host}:{port}{segment}` as the reference builds PoCUrl and InferenceUrl.

    Bare IPv6 literals get brackets and a segment gets its leading slash: the reference concatenates
    blindly, and the URL it would produce for those inputs does not parse.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if segment and not segment.startswith("/"):
        segment = "/" + segment
    return f"http://{host}:{port}{segment}"
