"""The reward claim waits for the epoch's validations, and its answer is read, not assumed.

On the real chain a claim with a required validation missing still succeeds (tx code 0) but pays nothing:
``MsgClaimRewardsResponse{amount: 0, result: "Inference not validated"}`` (inference.md §4.5; ErrValidationsMissed
is only logged). So:

* :meth:`ClaimGate.may_claim` (asked by the SeedManager at claim money, and again on every tick while a claim
  waits) allows the claim once the sampler has scanned every height up to the claim and every *required*
  validation of the epoch has landed (or its inference is gone). Until the claim's deadline (a few blocks
  before the next PoC start) it waits; at the deadline it allows it anyway, loudly (an error log, the
  claim marked ``forced`` with the number missing in ``/v1/status``, ``dapi_validation_claims_forced_total``):
  a late claim that may pay nothing beats no claim at all;
* once the claim's tx lands, its result data (``TxMsgData``, the claim response possibly inside a
  ``MsgExecResponse``) is read and the amount and result are recorded; a claim that landed with code 0 and
  amount 0 is logged as an error and shown as unpaid, not as a success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from google.protobuf.message import DecodeError

from dapi.chain.errors import ChainError
from dapi.chain.rpc import TxResult
from dapi.chain.view import ChainView
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.gen.inference.inference.tx_pb2 import MsgClaimRewardsResponse
from dapi.inference.validation_queue import ValidationQueue
from dapi.inference.validator import ValidationSink
from dapi.logs import get_logger

__all__ = ["ClaimGate", "TxLookup", "claim_response"]

log = get_logger(__name__)

CLAIM_RESPONSE_URL = "/inference.inference.MsgClaimRewardsResponse"
EXEC_RESPONSE_URL = "/cosmos.authz.v1beta1.MsgExecResponse"
PAID = "Rewards claimed successfully"


class TxLookup(Protocol):
    """Finds a tx by hash with its result data (the outbox's broadcaster)."""

    async def get_tx(self, hash_hex: str) -> TxResult: ...


def claim_response(data: bytes) -> MsgClaimRewardsResponse | None:
    """The MsgClaimRewardsResponse in a tx's result data (direct, or the first inside a MsgExecResponse)."""
    try:
        msg_data = TxMsgData.FromString(data)
        for response in msg_data.msg_responses:
            if response.type_url == CLAIM_RESPONSE_URL:
                return MsgClaimRewardsResponse.FromString(response.value)
            if response.type_url == EXEC_RESPONSE_URL:
                for inner in MsgExecResponse.FromString(response.value).results:
                    return MsgClaimRewardsResponse.FromString(inner)
    except DecodeError:
        return None
    return None


class ClaimGate:
    """Holds the epoch's claim until its required validations landed; records what the claim paid.

    Args:
        queue: the validation queue (its counts, the scan cursor and the claims table).
        view: the chain as the dispatcher last saw it (height, the epoch's next PoC start).
        outbox: where the claim's tx went (its row's fate and tx hash).
        lookup: finds the landed claim tx to read its result data.
        deadline_blocks: the claim goes out anyway this many blocks before the next PoC start.
        on_forced: called when a claim goes out with validations missing (a metric).
    """

    def __init__(self, *, queue: ValidationQueue, view: ChainView, outbox: ValidationSink, lookup: TxLookup | None,
                 deadline_blocks: int = 5, on_forced: Callable[[], None] | None = None) -> None:
        self._queue = queue
        self._view = view
        self._outbox = outbox
        self._lookup = lookup
        self._deadline_blocks = deadline_blocks
        self._on_forced = on_forced
        self._forcing: dict[int, int] = {}  # epoch -> required validations missing when it was let go
        self._announced: set[int] = set()
        self.claim: Callable[[], Awaitable[bool]] | None = None  # the SeedManager's claim, asked again on tick
        self.waiting: dict[str, int] | None = None  # for /v1/status while a claim waits

    async def may_claim(self, epoch_index: int) -> bool:
        q = self._queue
        snapshot = self._view.snapshot
        if snapshot is None:
            return False
        height = snapshot.height
        await q.run(q.s.open_claim, epoch_index, height, snapshot.context.next_poc_start - self._deadline_blocks)
        claim = await q.run(q.s.claim, epoch_index)
        assert claim is not None
        scanned = await q.run(q.s.scanned)
        counts = await q.run(q.s.epoch_counts, epoch_index)
        caught_up = scanned is not None and scanned >= claim.opened_at - 1
        pending = counts["required_pending"]
        if caught_up and pending == 0:
            self.waiting = None
            return True
        if height >= claim.deadline:
            self._forcing[epoch_index] = pending
            self.waiting = None
            log.error("claim window closing with required validations missing: claiming anyway, it may pay nothing",
                      epoch=epoch_index, missing=pending, scanned_to=scanned, deadline=claim.deadline)
            if self._on_forced is not None:
                self._on_forced()
            return True
        self.waiting = {"epoch": epoch_index, "required_pending": pending, "deadline": claim.deadline,
                        "scanned_to": scanned or 0}
        if epoch_index not in self._announced:
            self._announced.add(epoch_index)
            log.warning("reward claim waits for the epoch's validations", epoch=epoch_index, required_pending=pending,
                        scanned_to=scanned, deadline=claim.deadline)
        return False

    async def claim_sent(self, epoch_index: int, outbox_row: int | None) -> None:
        q = self._queue
        forced = epoch_index in self._forcing
        await q.run(q.s.claim_sent, epoch_index, outbox_row, forced, self._forcing.pop(epoch_index, 0))
        abandoned = await q.run(q.s.abandon_epoch, epoch_index, "the epoch's claim was sent")
        if abandoned:
            log.error("validations abandoned: the epoch's claim went out without them", epoch=epoch_index,
                      abandoned=abandoned)

    async def tick(self) -> None:
        """Ask again for a waiting claim; read the answer of a landed one."""
        q = self._queue
        waiting = await q.run(q.s.claims, ("waiting",))
        if self.claim is not None and waiting:
            await self.claim()
        for claim in await q.run(q.s.claims, ("sent",)):
            if claim.outbox_row is None:
                continue
            fate = (await self._outbox.fates([claim.outbox_row]))[claim.outbox_row]
            if fate.state == "dead":
                log.error("reward claim failed on chain", epoch=claim.epoch, code=fate.code, log_text=fate.log)
                await q.run(q.s.claim_result, claim.epoch, "dead", fate.code, 0, fate.log)
            elif fate.state == "landed" and fate.tx_hash and self._lookup is not None:
                try:
                    found = await self._lookup.get_tx(fate.tx_hash)
                except ChainError as exc:
                    log.debug("claim tx lookup failed; will look again", epoch=claim.epoch, error=str(exc))
                    continue
                response = claim_response(found.data)
                amount = response.amount if response is not None else 0
                result = response.result if response is not None else "no MsgClaimRewardsResponse in the tx result"
                await q.run(q.s.claim_result, claim.epoch, "landed", found.code, amount, result)
                if amount > 0:
                    log.info("reward claim paid", epoch=claim.epoch, amount=amount, result=result)
                else:
                    log.error("reward claim landed but PAID NOTHING", epoch=claim.epoch, result=result,
                              forced=claim.forced, missing_validations=claim.missing)
