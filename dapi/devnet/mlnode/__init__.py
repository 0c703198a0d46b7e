"""Simulated ML nodes: one HTTP server on loopback hosting many nodes, each under its own path segment.

The pieces, from the bottom up:

- `pocmath`: the simulated PoW (distances of nonces, the validator's binomial test), shared with the
  simulated peers;
- `inference`: the simulated language model (deterministic answers and logprobs, the `enforced_str` re-run);
- `capacity`: a node's finite capacity (request slots, a waiting room, a token rate);
- `node`: one node's state machine (the real node's management API rules) and its batch Sender;
- `faults`: fault injection (latency, status, timeout, refused connection) and call recording, as raw
  ASGI in front of the routes;
- `chatrequest`, `vllm`: the inference port, answering like vLLM's OpenAI-compatible server;
- `app`: the routes: the real node's management API, the inference port, and `/sim/...` to drive it;
- `server`: `SimMLNodeServer`, the uvicorn server that owns the nodes;
- `__main__`: the standalone server (`python -m dapi.devnet.mlnode`).
"""

from dapi.devnet.mlnode.capacity import CapacityExceeded, NodeCapacity, tokens_per_second_of
from dapi.devnet.mlnode.faults import FaultSpec
from dapi.devnet.mlnode.node import (
    DEFAULT_BATCH_INTERVAL,
    NODES_PREFIX,
    PowInitRequest,
    PowPhase,
    RecordedCall,
    SimNode,
)
from dapi.devnet.mlnode.pocmath import DIST_SCALE, INVALID_NONCE_P, probability_honest, sim_dist, validate_proof_batch
from dapi.devnet.mlnode.server import SimMLNodeServer, start_sim_mlnodes

__all__ = [
    "DEFAULT_BATCH_INTERVAL",
    "DIST_SCALE",
    "INVALID_NONCE_P",
    "NODES_PREFIX",
    "CapacityExceeded",
    "FaultSpec",
    "NodeCapacity",
    "PowInitRequest",
    "PowPhase",
    "RecordedCall",
    "SimMLNodeServer",
    "SimNode",
    "probability_honest",
    "sim_dist",
    "start_sim_mlnodes",
    "tokens_per_second_of",
    "validate_proof_batch",
]
