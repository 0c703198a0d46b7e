"""The inference module's message handlers, as the Cosmos SDK's msg server: the rules applied at block time.

`handle(state, type_url, message, ctx)` checks one message against the module's state in the block
`ctx` describes and returns what it would write (an `Effect`, run only if every message of the tx
passes: a tx is all or nothing; it returns the module events the message emits) and the message's
response. A rule violation raises `TxFailure` in codespace "inference" (or the bank's "sdk" code);
the ledger turns it into the tx's result code in the block (`deliver` runs a tx's messages in order,
each seeing what the previous ones wrote). The inference path's own messages live in `inference_msgs`
(Start, Finish) and `validations` (MsgValidation, the claim-time check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from google.protobuf.message import Message

from dapi.chain.epochs import EpochContext
from dapi.chain.keys import verify_signature
from dapi.chain.messages import type_url_of
from dapi.devnet.ledger.codes import InferenceCode, SdkCode, TxFailure, inference_failure, sdk_failure
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.inference_msgs import Writes, finish_inference, require_participant, start_inference
from dapi.devnet.ledger.records import ClaimRecord, TxEvent
from dapi.devnet.ledger.state import INFERENCE_MODULE_ADDRESS, InferenceState
from dapi.devnet.ledger.validations import missed_validations, validation
from dapi.devnet.schedule.models import InvalidModelError, apply_hardware_diff
from dapi.devnet.schedule.records import PoCBatch, PoCValidation, RandomSeed
from dapi.devnet.wire.convert import hardware_node_from_proto
from dapi.gen.inference.inference import tx_pb2 as itx

__all__ = ["HANDLED_TYPE_URLS", "Effect", "handle"]

Effect = Callable[[], Sequence[TxEvent] | None]

# The message types the module routes (anything else is an unknown request at CheckTx).
HANDLED_TYPE_URLS = frozenset(type_url_of(cls) for cls in (
    itx.MsgSubmitPocBatch,
    itx.MsgSubmitPocValidation,
    itx.MsgSubmitHardwareDiff,
    itx.MsgSubmitSeed,
    itx.MsgClaimRewards,
    itx.MsgStartInference,
    itx.MsgFinishInference,
    itx.MsgValidation,
))


def handle(state: InferenceState, type_url: str, message: Message, ctx: BlockContext) -> tuple[Effect, Message]:
    """Route one (effective) message to its handler; raises TxFailure when a rule rejects it."""
    height = ctx.height
    if isinstance(message, itx.MsgSubmitPocBatch):
        return submit_poc_batch(state, message, height)
    if isinstance(message, itx.MsgSubmitPocValidation):
        return submit_poc_validation(state, message, height)
    if isinstance(message, itx.MsgSubmitHardwareDiff):
        return submit_hardware_diff(state, message)
    if isinstance(message, itx.MsgSubmitSeed):
        return submit_seed(state, message)
    if isinstance(message, itx.MsgClaimRewards):
        return claim_rewards(state, message, height)
    if isinstance(message, itx.MsgStartInference):
        return _effect(state, height, *start_inference(state, message, ctx))
    if isinstance(message, itx.MsgFinishInference):
        return _effect(state, height, *finish_inference(state, message, ctx))
    if isinstance(message, itx.MsgValidation):
        return _effect(state, height, *validation(state, message, ctx))
    raise sdk_failure(SdkCode.UNKNOWN_REQUEST, f"unrecognized message type {type_url!r}")


def _effect(state: InferenceState, height: int, writes: Writes, response: Message) -> tuple[Effect, Message]:
    return (lambda: writes.apply(state, height)), response


def submit_poc_batch(state: InferenceState, msg: itx.MsgSubmitPocBatch, height: int) -> tuple[Effect, Message]:
    require_participant(state, msg.creator)
    ctx = _upcoming_context(state)
    _check_start(ctx, msg.poc_stage_start_block_height)
    window = ctx.poc_exchange_window
    if not ctx.is_poc_exchange_window(height):
        raise inference_failure(InferenceCode.POC_TOO_LATE,
                                f"PoC exchange window [{window.start}, {window.end}] is closed at block {height}")
    key = (msg.poc_stage_start_block_height, msg.creator, msg.batch_id)
    batch = PoCBatch(
        participant_address=msg.creator,
        poc_stage_start_block_height=msg.poc_stage_start_block_height,
        received_at_block_height=height,
        nonces=tuple(msg.nonces),
        dist=tuple(msg.dist),
        batch_id=msg.batch_id,
        node_id=msg.node_id,  # stored, unlike the reference chain (DESIGN.md §6)
    )

    def apply() -> None:
        # A re-sent batch (same stage, participant, batch_id) is accepted but stored once.
        state.batches.setdefault(key, batch)

    return apply, itx.MsgSubmitPocBatchResponse()


def submit_poc_validation(
    state: InferenceState, msg: itx.MsgSubmitPocValidation, height: int
) -> tuple[Effect, Message]:
    require_participant(state, msg.creator)
    ctx = _upcoming_context(state)
    _check_start(ctx, msg.poc_stage_start_block_height)
    window = ctx.validation_exchange_window
    if not ctx.is_validation_exchange_window(height):
        raise inference_failure(InferenceCode.POC_TOO_LATE,
                                f"PoC validation exchange window [{window.start}, {window.end}] is closed at block "
                                f"{height}")
    key = (msg.poc_stage_start_block_height, msg.participant_address, msg.creator)
    vote = PoCValidation(
        participant_address=msg.participant_address,
        validator_participant_address=msg.creator,
        poc_stage_start_block_height=msg.poc_stage_start_block_height,
        validated_at_block_height=height,
        nonces=tuple(msg.nonces),
        dist=tuple(msg.dist),
        received_dist=tuple(msg.received_dist),
        r_target=msg.r_target,
        fraud_threshold=msg.fraud_threshold,
        n_invalid=msg.n_invalid,
        probability_honest=msg.probability_honest,
        fraud_detected=msg.fraud_detected,
    )

    def apply() -> None:
        state.validations[key] = vote  # one vote per validator per participant and stage; the last wins

    return apply, itx.MsgSubmitPocValidationResponse()


def submit_hardware_diff(state: InferenceState, msg: itx.MsgSubmitHardwareDiff) -> tuple[Effect, Message]:
    require_participant(state, msg.creator)
    try:
        updated = apply_hardware_diff(
            state.registry,
            state.hardware.get(msg.creator),
            creator=msg.creator,
            new_or_modified=[hardware_node_from_proto(n) for n in msg.newOrModified],
            removed=[hardware_node_from_proto(n) for n in msg.removed],
        )
    except InvalidModelError as exc:
        raise inference_failure(exc.code, str(exc)) from None

    def apply() -> None:
        state.hardware[msg.creator] = updated

    return apply, itx.MsgSubmitHardwareDiffResponse()


def submit_seed(state: InferenceState, msg: itx.MsgSubmitSeed) -> tuple[Effect, Message]:
    require_participant(state, msg.creator)
    seed = RandomSeed(participant=msg.creator, epoch_index=msg.epoch_index, signature=msg.signature)

    def apply() -> None:
        state.seeds[(msg.epoch_index, msg.creator)] = seed

    return apply, itx.MsgSubmitSeedResponse()


def claim_rewards(state: InferenceState, msg: itx.MsgClaimRewards, height: int) -> tuple[Effect, Message]:
    require_participant(state, msg.creator)
    shares = state.rewards.get(msg.epoch_index)
    if shares is None:
        raise inference_failure(InferenceCode.REWARDS_NOT_SETTLED, f"epoch {msg.epoch_index} is not settled")
    if any(c.participant == msg.creator and c.epoch_index == msg.epoch_index for c in state.claims):
        raise inference_failure(InferenceCode.REWARDS_ALREADY_CLAIMED,
                                f"rewards of epoch {msg.epoch_index} were already claimed by {msg.creator}")
    stored = state.seeds.get((msg.epoch_index, msg.creator))
    if stored is None:
        raise inference_failure(InferenceCode.CLAIM_SIGNATURE_INVALID,
                                f"no seed was submitted by {msg.creator} for epoch {msg.epoch_index}")
    if not _seed_matches(state.participant_keys[msg.creator], msg.seed, stored.signature):
        raise inference_failure(InferenceCode.CLAIM_SIGNATURE_INVALID,
                                f"seed {msg.seed} does not match the signature submitted for epoch {msg.epoch_index}")
    try:
        missed = missed_validations(state, msg.creator, msg.epoch_index, msg.seed)
    except TxFailure as failure:  # as the chain: a failed claim check is logged and nothing is paid
        return _nothing(), itx.MsgClaimRewardsResponse(amount=0, result=failure.log)
    if missed:
        # ErrValidationsMissed (1117) is only logged by the chain: the tx succeeds and pays nothing
        # (the claim is not recorded, so it can be sent again once the validations have landed).
        return _nothing(), itx.MsgClaimRewardsResponse(amount=0, result="Inference not validated")
    share = shares.get(msg.creator)
    work = state.settled_work.get(msg.epoch_index, {}).get(msg.creator, 0)
    amount = (share.amount if share is not None else 0) + work
    claim = ClaimRecord(participant=msg.creator, epoch_index=msg.epoch_index, seed=msg.seed, amount=amount,
                        height=height)

    def apply() -> None:
        state.claims.append(claim)
        state.balances[msg.creator] = state.balance(msg.creator) + amount - work  # the reward is minted
        state.transfer(INFERENCE_MODULE_ADDRESS, msg.creator, work)  # held by the module since it was earned

    result = "Rewards claimed successfully" if amount else "No rewards for this address"
    return apply, itx.MsgClaimRewardsResponse(amount=amount, result=result)


def _nothing() -> Effect:
    return lambda: None


# --- shared checks --------------------------------------------------------------------------------


def _upcoming_context(state: InferenceState) -> EpochContext:
    upcoming = state.upcoming_epoch()
    if upcoming is None:
        raise inference_failure(InferenceCode.UPCOMING_EPOCH_NOT_FOUND,
                                f"failed to get upcoming epoch (effective epoch {state.effective_epoch().index})")
    return EpochContext.for_epoch(upcoming, state.params)


def _check_start(ctx: EpochContext, start: int) -> None:
    if start != ctx.start_of_poc:
        raise inference_failure(InferenceCode.POC_WRONG_START_BLOCK_HEIGHT,
                                f"start block height {start} doesn't match PoC stage start {ctx.start_of_poc} "
                                f"of the upcoming epoch {ctx.epoch_index}")


def _seed_matches(keys: tuple[bytes, ...], seed: int, signature_hex: str) -> bool:
    try:
        signature = bytes.fromhex(signature_hex)
        seed_bytes = seed.to_bytes(8, "big", signed=True)
    except (ValueError, OverflowError):
        return False
    # The seed is signed by whichever key sends the participant's txs: the account or its signer.
    return any(verify_signature(key, seed_bytes, signature) for key in keys)
