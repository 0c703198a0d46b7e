"""Inference validation on the chain: MsgValidation at block time and the validations a reward claim needs.

MsgValidation (reference/inference.md §4.4), in the chain's order: the inference exists (1102); a
sampled validation (not a revalidation) is recorded for its validator and the inference's epoch (the
claim check reads these); an INVALIDATED inference takes it as a no-op; a STARTED one is refused (1104);
the executor is a participant (1103) and is not the validator (1105); the model's snapshot in the
effective epoch gives the threshold (1126/1135). A value strictly above `validation_threshold` passes:
the inference is VALIDATED and its cost is shared equally between the executor and its validators
(`ShareWork`, the remainder to the executor).

**A failed validation invalidates the inference directly.** The real chain opens two x/group proposals
(status VOTING, event `needs_revalidation=true`) and every node re-validates and votes; the devnet has
no x/group, so the outcome of a failure is what a passed invalidation vote does: status INVALIDATED,
the executor loses the cost from its coin balance, the requester is refunded it, and the event says
`needs_revalidation=false`. A revalidation (`revalidation=true`) therefore has nothing to vote on and
is accepted as a no-op. After every validation the executor's status is recomputed (`executor_status`).

At MsgClaimRewards (§4.5) `missed_validations` recomputes `ShouldValidate` with the claimed seed over
the epoch's inferences; a required one the claimant did not validate means the claim pays nothing.
"""

from __future__ import annotations

import math
from dataclasses import replace

from google.protobuf.message import Message

from dapi.chain.epochs import EpochContext
from dapi.devnet.ledger.codes import InferenceCode, SdkCode, inference_failure, sdk_failure
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.inference_msgs import Writes, require_participant
from dapi.devnet.ledger.inferences import InferenceStatus, ParticipantStatus, ParticipantWork
from dapi.devnet.ledger.records import TxEvent, valid_address
from dapi.devnet.ledger.state import INFERENCE_MODULE_ADDRESS, InferenceState
from dapi.devnet.schedule.records import Model
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.sampling import SamplingParams, decimal_of, should_validate

__all__ = [
    "executor_status",
    "missed_validations",
    "sampling_params",
    "share_work",
    "validate_validation_basic",
    "validation",
]

# A run of invalid inferences this unlikely under the false positive rate makes an executor INVALID.
_INVALID_RUN_PROBABILITY = 1e-6
_RAMP_UP_FACTOR = 2.618


def validate_validation_basic(msg: itx.MsgValidation) -> None:
    """MsgValidation.ValidateBasic: creator (7); inference_id, id, response payload and hash, value (18)."""
    if not valid_address(msg.creator):
        raise sdk_failure(SdkCode.INVALID_ADDRESS, f"invalid creator address ({msg.creator!r})")
    for name in ("inference_id", "id", "response_payload", "response_hash"):
        if not getattr(msg, name).strip():
            raise sdk_failure(SdkCode.INVALID_REQUEST, f"{name} must not be blank")
    if not 0.0 <= msg.value <= 1.0:  # NaN fails too
        raise sdk_failure(SdkCode.INVALID_REQUEST, f"value {msg.value} is not in [0, 1]")


def _epoch_model(state: InferenceState, model_id: str) -> Model:
    effective = state.effective_epoch()
    parent = state.groups.get((effective.index, ""))
    sub = state.groups.get((effective.index, model_id)) if parent and model_id in parent.sub_group_models else None
    if sub is None:
        raise inference_failure(InferenceCode.MODEL_SUB_GROUP_NOT_FOUND,
                                f"model {model_id!r} has no sub-group in epoch {effective.index}")
    if sub.model_snapshot is None:
        raise inference_failure(InferenceCode.EPOCH_MODEL_NOT_FOUND,
                                f"the sub-group of {model_id!r} in epoch {effective.index} has no model snapshot")
    return sub.model_snapshot


def share_work(balances: dict[str, int], workers: list[str], new_workers: list[str], amount: int) -> dict[str, int]:
    """ShareWork: re-split `amount` equally over workers + new workers (remainder to the first worker).

    `balances` are the coin balances before; returns them after, for every worker touched.
    """
    def split(people: list[str]) -> dict[str, int]:
        share, remainder = divmod(amount, len(people))
        parts = dict.fromkeys(people, share)
        parts[people[0]] += remainder
        return parts

    before, after = split(workers), split(workers + new_workers)
    return {w: balances.get(w, 0) + after[w] - before.get(w, 0) for w in after}


def executor_status(work: ParticipantWork, state: InferenceState) -> ParticipantStatus:
    """calculateStatus after a validation (§4.4 step 9).

    INVALID when a run of `consecutive_invalid_inferences` is less likely than 1e-6 under the false
    positive rate; RAMPING while fewer than min(ceil(2.618 / fpr), min_ramp_up_measurements) inferences
    were counted this epoch; INVALID when the share of invalidated inferences exceeds the false positive
    rate by more than one standard error (z-score > 1: the spec names the z-score, this is its usual
    form for a proportion); ACTIVE otherwise.
    """
    params = state.genesis.validation_params
    fpr = params.false_positive_rate.as_float()
    if 0 < fpr < 1 and fpr ** work.consecutive_invalid_inferences < _INVALID_RUN_PROBABILITY:
        return ParticipantStatus.INVALID
    stats = work.current_epoch_stats
    ramp_up = params.min_ramp_up_measurements
    if fpr > 0:
        ramp_up = min(math.ceil(_RAMP_UP_FACTOR / fpr), ramp_up)
    if stats.inference_count < ramp_up:
        return ParticipantStatus.RAMPING
    measured = stats.validated_inferences + stats.invalidated_inferences
    if measured and 0 < fpr < 1:
        z = (stats.invalidated_inferences / measured - fpr) / math.sqrt(fpr * (1 - fpr) / measured)
        if z > 1:
            return ParticipantStatus.INVALID
    return ParticipantStatus.ACTIVE


def validation(state: InferenceState, msg: itx.MsgValidation, ctx: BlockContext) -> tuple[Writes, Message]:
    inference = state.inferences.get(msg.inference_id)
    if inference is None:
        raise inference_failure(InferenceCode.INFERENCE_NOT_FOUND, f"inference {msg.inference_id} not found")
    writes = Writes()
    if not msg.revalidation:
        writes.validated = (inference.epoch_id, msg.creator, msg.inference_id)
    if inference.status is InferenceStatus.INVALIDATED:
        return writes, itx.MsgValidationResponse()
    if inference.status is InferenceStatus.STARTED:
        raise inference_failure(InferenceCode.INFERENCE_NOT_FINISHED, f"inference {msg.inference_id} not finished")
    require_participant(state, inference.executed_by, "executor")
    executor = inference.executed_by
    if msg.creator == executor and not msg.revalidation:
        raise inference_failure(InferenceCode.CANNOT_VALIDATE_OWN_INFERENCE,
                                f"{msg.creator} executed inference {msg.inference_id}")
    model = _epoch_model(state, inference.model)
    threshold = model.validation_threshold
    passed = msg.value > (float(decimal_of(threshold.value, threshold.exponent)) if threshold is not None else 0.0)
    if msg.revalidation:
        return writes, itx.MsgValidationResponse()  # no vote to cast: failures invalidate directly

    work = writes.work_of(state, executor)
    stats = work.current_epoch_stats
    if passed:
        inference = replace(inference, status=InferenceStatus.VALIDATED)
        if msg.creator not in inference.validated_by:
            workers = [executor, *inference.validated_by]
            balances = {w: writes.work_of(state, w).coin_balance for w in [*workers, msg.creator]}
            for worker, balance in share_work(balances, workers, [msg.creator], inference.actual_cost).items():
                writes.work[worker] = replace(writes.work_of(state, worker), coin_balance=balance)
            inference = replace(inference, validated_by=(*inference.validated_by, msg.creator))
        work = writes.work_of(state, executor)
        work = replace(work, consecutive_invalid_inferences=0, current_epoch_stats=replace(
            stats, validated_inferences=stats.validated_inferences + 1))
    else:
        inference = replace(inference, status=InferenceStatus.INVALIDATED)
        work = replace(work, coin_balance=work.coin_balance - inference.actual_cost,
                       consecutive_invalid_inferences=work.consecutive_invalid_inferences + 1,
                       current_epoch_stats=replace(stats, invalidated_inferences=stats.invalidated_inferences + 1))
        refund = min(inference.actual_cost, state.balance(INFERENCE_MODULE_ADDRESS))
        writes.transfers.append((INFERENCE_MODULE_ADDRESS, inference.requested_by, refund))
    writes.work[executor] = replace(work, status=executor_status(work, state))
    writes.inference = inference
    writes.events.append(TxEvent("inference_validation", (
        ("inference_id", msg.inference_id),
        ("validator", msg.creator),
        ("needs_revalidation", "false"),
        ("passed", "true" if passed else "false"),
    )))
    return writes, itx.MsgValidationResponse()


# --- claim time -------------------------------------------------------------------------------------


def sampling_params(state: InferenceState) -> SamplingParams:
    vp = state.genesis.validation_params
    return SamplingParams(
        min_validation_average=decimal_of(vp.min_validation_average.value, vp.min_validation_average.exponent),
        max_validation_average=decimal_of(vp.max_validation_average.value, vp.max_validation_average.exponent),
        full_validation_traffic_cutoff=vp.full_validation_traffic_cutoff,
        min_validation_halfway=decimal_of(vp.min_validation_halfway.value, vp.min_validation_halfway.exponent),
        min_validation_traffic_cutoff=vp.min_validation_traffic_cutoff,
    )


def missed_validations(state: InferenceState, claimant: str, epoch_index: int, seed: int) -> list[str]:
    """The inferences of `epoch_index` the claimant had to validate under `seed` and did not (§4.5).

    Weights come from each model's sub-group of that epoch. Skipped: the claimant's own inferences,
    inferences whose executor or validator is not in the model's sub-group, and inferences made from the
    epoch's validation cutoff on when the claimant has no POC_SLOT node for the model (its nodes were
    mining). Raises 1125 for an inference whose model has no sub-group in the epoch.
    """
    groups = state.epoch_groups(epoch_index)
    epoch = state.epochs.get(epoch_index)
    if groups is None or epoch is None:
        return []
    # Per model: its sub-group's members by address and their total weight (read once, not per inference).
    members = {}
    for g in groups[1]:
        by_address = {vw.member_address: vw for vw in g.validation_weights}
        members[g.model_id] = (by_address, sum(vw.weight for vw in by_address.values()))
    cutoff = EpochContext.for_epoch(epoch, state.params).inference_validation_cutoff
    done = set(state.epoch_validations.get((epoch_index, claimant), ()))
    params = sampling_params(state)
    missed = []
    for (epoch_id, inference_id), details in sorted(state.validation_details.items()):
        if epoch_id != epoch_index or details.executor_id == claimant:
            continue
        sub = members.get(details.model)
        if sub is None:
            raise inference_failure(InferenceCode.INFERENCE_HAS_INVALID_MODEL,
                                    f"inference {inference_id} has model {details.model!r} with no sub-group")
        weights, total_power = sub
        validator, executor = weights.get(claimant), weights.get(details.executor_id)
        if validator is None or executor is None:
            continue
        if details.created_at_block_height >= cutoff and not any(n.is_active_during_poc for n in validator.ml_nodes):
            continue
        required = should_validate(
            seed=seed, inference_id=inference_id, traffic_basis=details.traffic_basis,
            executor_reputation=details.executor_reputation, total_power=total_power,
            validator_power=validator.weight, executor_power=executor.weight, params=params,
        )
        if required and inference_id not in done:
            missed.append(inference_id)
    return missed
