"""Validation of the other participants' PoC batches (reference/chain-io.md §2.11 step 4).

At the start of PoC validation: fetch every participant's batches of this PoC stage, sample each
participant's nonces deterministically, and hand each sample to one of the own ML nodes that is
VALIDATING (round robin, a few attempts). The ML node recomputes the distances and reports back
through the ``/validated`` callback, which turns into MsgSubmitPocValidation there.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dapi.chain.query import ChainQuery
from dapi.chain.rpc import CometRPC
from dapi.logs import get_logger
from dapi.mlnodeclient import MLNodeClient
from dapi.mlnodeclient.errors import MLNodeError
from dapi.mlnodeclient.models import ProofBatch

log = get_logger(__name__)

DEFAULT_SAMPLES_PER_BATCH = 200
ATTEMPTS_PER_BATCH = 5


def sample_seed(own_hex_pubkey: str, block_hash: str, block_height: int) -> int:
    """First 8 bytes (big-endian, signed) of sha256("<own pubkey>:<block hash>:<height>"), as the reference."""
    digest = hashlib.sha256(f"{own_hex_pubkey}:{block_hash}:{block_height}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices of ``range(total)`` chosen by ``seed`` (all of them if n >= total).

    Deterministic per validator and stage; bit-exact agreement with Go's math/rand is not needed
    because no other party recomputes this choice.
    """
    if n >= total:
        return list(range(total))
    return random.Random(seed).sample(range(total), n)


@dataclass
class ValidationReport:
    """What validating one PoC stage did: participants seen, samples sent, participants left unvalidated."""

    participants: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)  # participant addresses whose sample no node took


class BatchValidator:
    """Samples the participants' PoC batches of a stage and hands each sample to an own ML node that is validating.

    Args:
        query: where the stage's batches and the validation sample size are read.
        rpc: where the PoC start block's hash is read.
        validating_nodes: returns the clients of the ML nodes currently in PoC validation.
        own_hex_pubkey: the participant's public key in hex; it seeds the choice of sampled nonces.
        attempts: how many nodes (round robin) are tried with one sample before that participant counts as failed.
    """

    def __init__(
        self,
        query: ChainQuery,
        rpc: CometRPC,
        validating_nodes: Callable[[], Sequence[MLNodeClient]],
        *,
        own_hex_pubkey: str,
        attempts: int = ATTEMPTS_PER_BATCH,
    ) -> None:
        self._query = query
        self._rpc = rpc
        self._nodes = validating_nodes
        self._own_pubkey = own_hex_pubkey
        self._attempts = attempts
        self._next_node = 0  # shared round robin across participants, as the reference
        self.reports: list[ValidationReport] = []

    async def validate_stage(self, poc_start_height: int) -> ValidationReport:
        report = ValidationReport()
        self.reports.append(report)
        block_hash = (await self._rpc.block(poc_start_height)).hash
        groups = await self._query.poc_batches_for_stage(poc_start_height)
        nodes = list(self._nodes())
        if not nodes:
            log.error("no ML node is VALIDATING: other participants' batches are not validated",
                      poc_start=poc_start_height, participants=len(groups))
            report.failed = [g.participant for g in groups]
            return report
        params = await self._query.params()
        samples = params.poc_params.validation_sample_size or DEFAULT_SAMPLES_PER_BATCH
        seed = sample_seed(self._own_pubkey, block_hash, poc_start_height)
        for group in groups:
            report.participants += 1
            nonces = [n for batch in group.poc_batch for n in batch.nonces]
            dist = [d for batch in group.poc_batch for d in batch.dist]
            picked = sample_indices(len(nonces), samples, seed)
            sample = ProofBatch(
                public_key=group.hex_pub_key, block_hash=block_hash, block_height=poc_start_height,
                nonces=[nonces[i] for i in picked], dist=[dist[i] for i in picked],
            )
            if await self._send(sample, nodes):
                report.sent += 1
            else:
                report.failed.append(group.participant)
        log.info("PoC batches handed to validating nodes", poc_start=poc_start_height,
                 participants=report.participants, sent=report.sent, failed=len(report.failed))
        return report

    async def _send(self, sample: ProofBatch, nodes: Sequence[MLNodeClient]) -> bool:
        for _ in range(self._attempts):
            node = nodes[self._next_node % len(nodes)]
            self._next_node += 1
            try:
                await node.validate_batch(sample)
                return True
            except MLNodeError as exc:
                log.warning("a validating node refused a sample; trying the next", node=node.poc_url, error=str(exc))
        return False
