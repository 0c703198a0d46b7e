"""The simulated PoW, shared by the simulated ML nodes and the simulated peers.

PoW is simulated without a GPU: the distance of a nonce is a hash of (public_key, block_hash, block_height,
nonce) scaled to [0, DIST_SCALE), so the validator of a batch recomputes exactly what the prover found
and a forged distance is caught. Pure functions over plain data; no I/O.
"""

from __future__ import annotations

import hashlib
import math

from dapi.mlnodeclient.models import ProofBatch, ValidatedBatch

# Simulated distances are uniform in [0, DIST_SCALE); with the MainNet r_target (~1.40) about 70% of
# the nonces a node tries end up in its batches.
DIST_SCALE = 2.0
# The real node's p for the binomial test of invalid nonces (pow/data.py ValidatedBatch).
INVALID_NONCE_P = 5e-4


def sim_dist(public_key: str, block_hash: str, block_height: int, nonce: int) -> float:
    """The simulated distance of a nonce: deterministic, so prover and validator agree on it.

    The strings are used as sent (no case folding): the real node seeds its model from them, so a
    dAPI that sends a different case to prover and validator must see fraud here too.
    """
    digest = hashlib.sha256(f"{public_key}:{block_hash}:{block_height}:{nonce}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * DIST_SCALE


def probability_honest(n_invalid: int, n: int, p: float = INVALID_NONCE_P) -> float:
    """P(X >= n_invalid) for X ~ Binomial(n, p): the real node's one-sided binomial test p-value."""
    if n_invalid <= 0:
        return 1.0
    if n_invalid > n:
        return 0.0
    # Summed in log space term by term from k upwards: 1 - cdf(k-1) would cancel to 0 for the small
    # tails that matter here (a few invalid nonces out of hundreds).
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(n_invalid, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        term = math.exp(log_term)
        total += term
        if term < total * 1e-17:
            break
    return min(total, 1.0)


def validate_proof_batch(batch: ProofBatch, *, r_target: float, fraud_threshold: float) -> ValidatedBatch:
    """What an honest validator node reports for `batch` (the real ValidatedBatch.__post_init__)."""
    recomputed = [sim_dist(batch.public_key, batch.block_hash, batch.block_height, n) for n in batch.nonces]
    n_invalid = sum(1 for d in recomputed if d > r_target)
    p_honest = probability_honest(n_invalid, len(recomputed))
    return ValidatedBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=list(batch.nonces),
        dist=recomputed,
        node_id=batch.node_id,
        received_dist=list(batch.dist),
        r_target=r_target,
        fraud_threshold=fraud_threshold,
        n_invalid=n_invalid,
        probability_honest=p_honest,
        fraud_detected=p_honest < fraud_threshold,
    )
