"""MsgStartInference and MsgFinishInference at block time, and the expiry of started inferences in EndBlock.

Reference/inference.md §2.2-§2.6, check by check and in the chain's order:

* Start: the transfer agent and the requester are participants (1103); the developer signature (over
  `original_prompt ‖ timestamp ‖ creator`, requester's account key) and the TA signature (plus
  `assigned_to`, creator's key or its MsgStartInference grantees) verify (1132); a Start already
  applied is refused (1101); the first message of an inference locks the model's per-token price; the
  escrow `(max_tokens + prompt_token_count) x price` moves from the requester to the inference module
  (the bank's insufficient funds, sdk code 5, "requester cannot pay for inference"); a timeout is set
  `expiration_blocks` after the start height.
* Finish: executor, requester and TA are participants (1103); developer, TA and executor signatures
  verify (1132); an EXPIRED inference is refused (1133); the status becomes FINISHED and the actual
  cost `(prompt + completion) x price` is recorded.
* Payments when the second message lands: Start then Finish pays the executor `min(cost, escrow)` and
  refunds the rest (`actual_cost` stays uncapped); Finish then Start moves only `min(cost, escrow)`
  from the requester and pays the executor that. Coins paid to an executor stay in the module account
  (its `coin_balance`) until its epoch is settled.
* Completion (whichever message completes the record): the `inference_finished` event, the effective
  parent group's request count, and the validation details (1126 when the model has no sub-group in
  the effective epoch, 1127 when the effective epoch has no group data).
* Expiry (EndBlock): a STARTED inference `expiration_blocks` after its start becomes EXPIRED, its
  escrow is refunded and the assigned executor gets a missed request (unless it is not a participant).

Two reference bugs are fixed (DESIGN.md §8: where the spec lists a reference bug, fix it): a second
Finish is refused with 1101 instead of paying the executor again (inference.md §2.3), and a Start for an
inference whose Start was already applied is refused with 1101 even after Finish completed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from google.protobuf.message import Message

from dapi.chain.messages import type_url_of
from dapi.devnet.ledger.codes import InferenceCode, SdkCode, inference_failure, sdk_failure
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.inferences import (
    DEFAULT_MAX_TOKENS,
    Inference,
    InferenceStatus,
    ParticipantWork,
    ValidationDetails,
)
from dapi.devnet.ledger.records import TxEvent, valid_address
from dapi.devnet.ledger.state import INFERENCE_MODULE_ADDRESS, InferenceState
from dapi.devnet.schedule.records import EpochGroupData
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.signatures import decode_signature, verify_dev_signature, verify_ta_signature

__all__ = [
    "START_INFERENCE_URL",
    "Writes",
    "expire_inferences",
    "finish_inference",
    "require_participant",
    "start_inference",
    "validate_finish_basic",
    "validate_start_basic",
]

START_INFERENCE_URL = type_url_of(itx.MsgStartInference)
_INT64_MAX = 2**63 - 1


@dataclass(slots=True)
class Writes:
    """What one inference message writes if its tx passes: applied all at once by `apply`."""

    inference: Inference | None = None
    transfers: list[tuple[str, str, int]] = field(default_factory=list)
    work: dict[str, ParticipantWork] = field(default_factory=dict)
    timeout: tuple[int, str] | None = None
    group: EpochGroupData | None = None
    details: ValidationDetails | None = None
    validated: tuple[int, str, str] | None = None  # (epoch, validator, inference id)
    events: list[TxEvent] = field(default_factory=list)

    def work_of(self, state: InferenceState, address: str) -> ParticipantWork:
        return self.work.get(address) or state.work_of(address)

    def pay_executor(self, state: InferenceState, address: str, amount: int, end_ms: int) -> None:
        """Credit an executor's coin balance; a positive payment also counts one inference (§2.4)."""
        work = self.work_of(state, address)
        stats = work.current_epoch_stats
        if amount > 0:
            stats = replace(stats, earned_coins=stats.earned_coins + amount, inference_count=stats.inference_count + 1)
            work = replace(work, last_inference_time=end_ms)
        self.work[address] = replace(work, coin_balance=work.coin_balance + amount, current_epoch_stats=stats)

    def apply(self, state: InferenceState, height: int) -> list[TxEvent]:
        for sender, recipient, amount in self.transfers:
            state.transfer(sender, recipient, amount)
        state.work.update(self.work)
        if self.timeout is not None:
            expires, inference_id = self.timeout
            state.timeouts.setdefault(expires, []).append(inference_id)
        if self.group is not None:
            state.groups.set((self.group.epoch_index, self.group.model_id), self.group, height)
        if self.details is not None:
            state.validation_details[(self.details.epoch_id, self.details.inference_id)] = self.details
        if self.validated is not None:
            epoch, validator, inference_id = self.validated
            state.epoch_validations.setdefault((epoch, validator), []).append(inference_id)
        if self.inference is not None:
            state.set_inference(self.inference)
        return self.events


# --- basic validity (CheckTx) ---------------------------------------------------------------------


def _address(value: str, name: str) -> None:
    if not valid_address(value):
        raise sdk_failure(SdkCode.INVALID_ADDRESS, f"invalid {name} address ({value!r})")


def _signature(value: str, name: str) -> None:
    if decode_signature(value) is None:
        raise sdk_failure(SdkCode.INVALID_REQUEST, f"{name} must be base64 of a 64-byte signature")


def _non_blank(value: str, name: str) -> None:
    if not value.strip():
        raise sdk_failure(SdkCode.INVALID_REQUEST, f"{name} must not be blank")


def validate_start_basic(msg: itx.MsgStartInference) -> None:
    """MsgStartInference.ValidateBasic: addresses (7), then signatures, required text and timestamp (18)."""
    _address(msg.creator, "creator")
    _address(msg.requested_by, "requested_by")
    _address(msg.assigned_to, "assigned_to")
    _signature(msg.inference_id, "inference_id")
    _signature(msg.transfer_signature, "transfer_signature")
    for name in ("model", "prompt_hash", "prompt_payload", "original_prompt"):
        _non_blank(getattr(msg, name), name)
    if msg.request_timestamp <= 0:
        raise sdk_failure(SdkCode.INVALID_REQUEST, "request_timestamp must be > 0")


def validate_finish_basic(msg: itx.MsgFinishInference) -> None:
    """MsgFinishInference.ValidateBasic: addresses (7), then required text, timestamp and signatures (18)."""
    for name in ("creator", "executed_by", "transferred_by", "requested_by"):
        _address(getattr(msg, name), name)
    for name in ("response_hash", "response_payload", "model", "original_prompt"):
        _non_blank(getattr(msg, name), name)
    if msg.request_timestamp <= 0:
        raise sdk_failure(SdkCode.INVALID_REQUEST, "request_timestamp must be > 0")
    for name in ("transfer_signature", "executor_signature", "inference_id"):
        _signature(getattr(msg, name), name)


# --- shared checks --------------------------------------------------------------------------------


def require_participant(state: InferenceState, address: str, role: str = "participant") -> None:
    if address not in state.participants:
        raise inference_failure(InferenceCode.PARTICIPANT_NOT_FOUND, f"{role} {address} not found")


def _check_dev_signature(ctx: BlockContext, msg: itx.MsgStartInference | itx.MsgFinishInference,
                         transfer_address: str) -> None:
    key = ctx.account_key(msg.requested_by)
    body = msg.original_prompt.encode()
    if key is None or verify_dev_signature(key, body, msg.request_timestamp, transfer_address,
                                           msg.inference_id) is None:
        raise inference_failure(InferenceCode.INVALID_SIGNATURE,
                                f"developer signature (inference_id) does not verify for {msg.requested_by}")


def _check_agent_signature(ctx: BlockContext, signer: str, body: bytes, timestamp: int, transfer_address: str,
                           executor_address: str, signature: str, role: str) -> None:
    keys = ctx.keys_with_grantees(signer, START_INFERENCE_URL)
    if verify_ta_signature(keys, body, timestamp, transfer_address, executor_address, signature) is None:
        raise inference_failure(InferenceCode.INVALID_SIGNATURE,
                                f"{role} signature does not verify for {signer} or its grantees")


def _cost(inference: Inference) -> int:
    return (inference.completion_token_count + inference.prompt_token_count) * inference.per_token_price


def _check_can_pay(state: InferenceState, requester: str, amount: int) -> None:
    balance = state.balance(requester)
    if amount > balance:
        raise sdk_failure(SdkCode.INSUFFICIENT_FUNDS,
                          f"spendable balance {balance}ngonka is smaller than {amount}ngonka: "
                          "requester cannot pay for inference")


def _fits_int64(*values: int) -> None:
    # The chain's int64 fields would overflow: no block could ever hold such an inference.
    if any(v > _INT64_MAX for v in values):
        raise sdk_failure(SdkCode.INVALID_REQUEST, "token counts times the price overflow int64")


# --- MsgStartInference ------------------------------------------------------------------------------


def start_inference(state: InferenceState, msg: itx.MsgStartInference, ctx: BlockContext) -> tuple[Writes, Message]:
    require_participant(state, msg.creator, "transfer agent")
    require_participant(state, msg.requested_by, "requester")
    _check_dev_signature(ctx, msg, msg.creator)
    _check_agent_signature(ctx, msg.creator, msg.original_prompt.encode(), msg.request_timestamp, msg.creator,
                           msg.assigned_to, msg.transfer_signature, "transfer agent")
    existing = state.inferences.get(msg.inference_id)
    if existing is not None and existing.start_processed:
        raise inference_failure(InferenceCode.INFERENCE_ID_EXISTS, f"inference {msg.inference_id} already started")
    # A record without a processed Start was made by Finish: its price stands, and so does its status.
    base = existing or Inference(inference_id=msg.inference_id, per_token_price=state.per_token_price(msg.model))
    inference = replace(
        base,
        request_timestamp=msg.request_timestamp,
        transferred_by=msg.creator,
        transfer_signature=msg.transfer_signature,
        prompt_hash=msg.prompt_hash,
        prompt_payload=msg.prompt_payload,
        original_prompt=msg.original_prompt,
        prompt_token_count=base.prompt_token_count or msg.prompt_token_count,
        requested_by=msg.requested_by,
        model=msg.model,
        start_block_height=ctx.height,
        start_block_timestamp=ctx.time_ms,
        max_tokens=msg.max_tokens or DEFAULT_MAX_TOKENS,
        assigned_to=msg.assigned_to,
        node_version=msg.node_version,
    )
    escrow = (inference.max_tokens + msg.prompt_token_count) * inference.per_token_price
    _fits_int64(escrow, _cost(inference))
    writes = Writes()
    if not inference.finish_processed:
        _check_can_pay(state, msg.requested_by, escrow)
        writes.transfers.append((msg.requested_by, INFERENCE_MODULE_ADDRESS, escrow))
        inference = replace(inference, escrow_amount=escrow)
    else:
        require_participant(state, inference.executed_by, "executor")
        pay = min(_cost(inference), escrow)
        _check_can_pay(state, msg.requested_by, pay)
        writes.transfers.append((msg.requested_by, INFERENCE_MODULE_ADDRESS, pay))
        writes.pay_executor(state, inference.executed_by, pay, inference.end_block_timestamp)
        inference = replace(inference, actual_cost=pay, escrow_amount=pay)
    writes.timeout = (ctx.height + state.genesis.validation_params.expiration_blocks, msg.inference_id)
    if inference.is_completed:
        inference = _complete(state, inference, ctx, writes)
    writes.inference = inference
    return writes, itx.MsgStartInferenceResponse(inference_index=msg.inference_id)


# --- MsgFinishInference -----------------------------------------------------------------------------


def finish_inference(state: InferenceState, msg: itx.MsgFinishInference, ctx: BlockContext) -> tuple[Writes, Message]:
    require_participant(state, msg.executed_by, "executor")
    require_participant(state, msg.requested_by, "requester")
    require_participant(state, msg.transferred_by, "transfer agent")
    _check_dev_signature(ctx, msg, msg.transferred_by)
    body = msg.original_prompt.encode()
    _check_agent_signature(ctx, msg.transferred_by, body, msg.request_timestamp, msg.transferred_by,
                           msg.executed_by, msg.transfer_signature, "transfer agent")
    _check_agent_signature(ctx, msg.executed_by, body, msg.request_timestamp, msg.transferred_by,
                           msg.executed_by, msg.executor_signature, "executor")
    existing = state.inferences.get(msg.inference_id)
    if existing is not None and existing.status is InferenceStatus.EXPIRED:
        raise inference_failure(InferenceCode.INFERENCE_EXPIRED, f"inference {msg.inference_id} has expired")
    if existing is not None and existing.finish_processed:
        raise inference_failure(InferenceCode.INFERENCE_ID_EXISTS, f"inference {msg.inference_id} already finished")
    if existing is None:
        base = Inference(inference_id=msg.inference_id, model=msg.model,
                         per_token_price=state.per_token_price(msg.model))
    else:
        base = existing  # Start came first: its model and price stand (a different model is only noted)
    inference = replace(
        base,
        status=InferenceStatus.FINISHED,
        response_hash=msg.response_hash,
        response_payload=msg.response_payload,
        prompt_token_count=msg.prompt_token_count or base.prompt_token_count,
        request_timestamp=msg.request_timestamp,
        transferred_by=msg.transferred_by,
        transfer_signature=msg.transfer_signature,
        execution_signature=msg.executor_signature,
        original_prompt=msg.original_prompt,
        completion_token_count=msg.completion_token_count,
        executed_by=msg.executed_by,
        end_block_height=ctx.height,
        end_block_timestamp=ctx.time_ms,
    )
    cost = _cost(inference)
    _fits_int64(cost)
    inference = replace(inference, actual_cost=cost)
    writes = Writes()
    if inference.start_processed:
        escrow = inference.escrow_amount
        pay = min(cost, escrow)
        writes.pay_executor(state, msg.executed_by, pay, inference.end_block_timestamp)
        if escrow > cost:
            writes.transfers.append((INFERENCE_MODULE_ADDRESS, inference.requested_by, escrow - cost))
    if inference.is_completed:
        inference = _complete(state, inference, ctx, writes)
    writes.inference = inference
    return writes, itx.MsgFinishInferenceResponse()


# --- completion and expiry ----------------------------------------------------------------------------


def _complete(state: InferenceState, inference: Inference, ctx: BlockContext, writes: Writes) -> Inference:
    """handleInferenceCompleted: the event, the parent group's request count, the validation details."""
    effective = state.effective_epoch()
    parent = state.groups.get((effective.index, ""))
    if parent is None:
        raise inference_failure(InferenceCode.COMPLETION_FAILED,
                                f"effective epoch {effective.index} has no epoch group data")
    sub = state.groups.get((effective.index, inference.model)) if inference.model in parent.sub_group_models else None
    if sub is None:
        raise inference_failure(InferenceCode.MODEL_SUB_GROUP_NOT_FOUND,
                                f"model {inference.model!r} has no sub-group in epoch {effective.index}")
    requests = parent.number_of_requests + 1
    executor = parent.weight_of(inference.executed_by)
    writes.group = replace(parent, number_of_requests=requests)
    writes.details = ValidationDetails(
        epoch_id=effective.index,
        inference_id=inference.inference_id,
        executor_id=inference.executed_by,
        executor_reputation=executor.reputation if executor is not None else 0,
        traffic_basis=max(requests, parent.previous_epoch_requests),
        executor_power=executor.weight if executor is not None else 0,
        model=inference.model,
        total_power=sub.total_weight,
        created_at_block_height=ctx.height,
    )
    writes.events.append(TxEvent("inference_finished", (("inference_id", inference.inference_id),)))
    return replace(inference, epoch_id=effective.index,
                   epoch_poc_start_block_height=effective.poc_start_block_height)


def expire_inferences(state: InferenceState, height: int) -> list[str]:
    """EndBlock: expire the STARTED inferences whose timeout is `height`; returns their ids."""
    expired = []
    for inference_id in state.timeouts.pop(height, []):
        inference = state.inferences.get(inference_id)
        if inference is None or inference.status is not InferenceStatus.STARTED:
            continue
        if inference.assigned_to not in state.participants:
            continue  # as the chain: no refund, no status change, and the timeout is gone
        refund = min(inference.escrow_amount, state.balance(INFERENCE_MODULE_ADDRESS))
        state.transfer(INFERENCE_MODULE_ADDRESS, inference.requested_by, refund)
        state.set_inference(replace(inference, status=InferenceStatus.EXPIRED, actual_cost=0))
        work = state.work_of(inference.assigned_to)
        stats = work.current_epoch_stats
        state.work[inference.assigned_to] = replace(
            work, current_epoch_stats=replace(stats, missed_requests=stats.missed_requests + 1)
        )
        expired.append(inference_id)
    return expired

