"""Field-for-field conversion between the schedule's plain records and the chain's protobuf messages.

The records mirror the protobuf messages (reference/chain-io.md §5), so every function here is a 1:1
mapping; keeping them in one place means the gRPC and ABCI servers cannot disagree on a field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.any_pb2 import Any

from dapi.chain.epochs import Epoch
from dapi.chain.messages import pack_any
from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    Decimal,
    EpochGroupData,
    Hardware,
    HardwareNode,
    HardwareNodes,
    HardwareNodeStatus,
    MLNodeInfo,
    Model,
    PoCBatch,
    ValidationWeight,
)
from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.crypto.secp256k1.keys_pb2 import PubKey
from dapi.gen.inference.inference import (
    activeparticipants_pb2,
    epoch_group_data_pb2,
    epoch_pb2,
    hardware_node_pb2,
    inference_pb2,
    model_pb2,
    params_pb2,
    participant_pb2,
    pocbatch_pb2,
    random_seed_pb2,
)

if TYPE_CHECKING:  # the ledger imports this module: its records are only named here, never imported at run time
    from dapi.devnet.ledger.inferences import Inference, ParticipantWork, ValidationDetails
    from dapi.devnet.schedule.records import ParticipantRecord

__all__ = [
    "active_participants_to_proto",
    "base_account_any",
    "decimal_to_proto",
    "epoch_group_to_proto",
    "epoch_to_proto",
    "hardware_node_from_proto",
    "hardware_node_to_proto",
    "hardware_nodes_to_proto",
    "inference_to_proto",
    "model_to_proto",
    "params_to_proto",
    "participant_to_proto",
    "poc_batch_to_proto",
    "validation_details_to_proto",
    "validation_params_to_proto",
]


def decimal_to_proto(value: Decimal) -> params_pb2.Decimal:
    return params_pb2.Decimal(value=value.value, exponent=value.exponent)


def model_to_proto(model: Model) -> model_pb2.Model:
    out = model_pb2.Model(
        proposed_by=model.proposed_by,
        id=model.id,
        units_of_compute_per_token=model.units_of_compute_per_token,
        context_window=model.context_window,
        quantization=model.quantization,
        coins_per_input_token=model.coins_per_input_token,
        coins_per_output_token=model.coins_per_output_token,
        hf_repo=model.hf_repo,
        hf_commit=model.hf_commit,
        model_args=list(model.model_args),
        v_ram=model.v_ram,
        throughput_per_nonce=model.throughput_per_nonce,
    )
    if model.validation_threshold is not None:
        out.validation_threshold.CopyFrom(decimal_to_proto(model.validation_threshold))
    return out


def _ml_node(node: MLNodeInfo) -> epoch_group_data_pb2.MLNodeInfo:
    return epoch_group_data_pb2.MLNodeInfo(
        node_id=node.node_id,
        throughput=node.throughput,
        poc_weight=node.poc_weight,
        timeslot_allocation=list(node.timeslot_allocation),
    )


def _validation_weight(vw: ValidationWeight) -> epoch_group_data_pb2.ValidationWeight:
    return epoch_group_data_pb2.ValidationWeight(
        member_address=vw.member_address,
        weight=vw.weight,
        reputation=vw.reputation,
        ml_nodes=[_ml_node(n) for n in vw.ml_nodes],
    )


def epoch_group_to_proto(
    group: EpochGroupData, validation_params: params_pb2.ValidationParams | None = None
) -> epoch_group_data_pb2.EpochGroupData:
    out = epoch_group_data_pb2.EpochGroupData(
        poc_start_block_height=group.poc_start_block_height,
        epoch_group_id=group.epoch_group_id,
        epoch_policy=group.epoch_policy,
        effective_block_height=group.effective_block_height,
        last_block_height=group.last_block_height,
        member_seed_signatures=[
            epoch_group_data_pb2.SeedSignature(member_address=s.member_address, signature=s.signature)
            for s in group.member_seed_signatures
        ],
        validation_weights=[_validation_weight(vw) for vw in group.validation_weights],
        unit_of_compute_price=group.unit_of_compute_price,
        number_of_requests=group.number_of_requests,
        previous_epoch_requests=group.previous_epoch_requests,
        total_weight=group.total_weight,
        model_id=group.model_id,
        sub_group_models=list(group.sub_group_models),
        epoch_index=group.epoch_index,
        total_throughput=group.total_throughput,
        expected_throughput_vector=list(group.expected_throughput_vector),
        real_throughput_vector=list(group.real_throughput_vector),
    )
    if group.model_snapshot is not None:
        out.model_snapshot.CopyFrom(model_to_proto(group.model_snapshot))
    if validation_params is not None:
        out.validation_params.CopyFrom(validation_params)
    return out


def hardware_node_to_proto(node: HardwareNode) -> hardware_node_pb2.HardwareNode:
    return hardware_node_pb2.HardwareNode(
        local_id=node.local_id,
        status=int(node.status),  # type: ignore[arg-type]  # the enum's numbers are the proto's
        models=list(node.models),
        hardware=[hardware_node_pb2.Hardware(type=h.type, count=h.count) for h in node.hardware],
        host=node.host,
        port=node.port,
    )


def hardware_node_from_proto(node: hardware_node_pb2.HardwareNode) -> HardwareNode:
    try:
        status = HardwareNodeStatus(node.status)
    except ValueError:  # a status number newer than ours: keep the node, not the status
        status = HardwareNodeStatus.UNKNOWN
    return HardwareNode(
        local_id=node.local_id,
        status=status,
        models=tuple(node.models),
        hardware=tuple(Hardware(type=h.type, count=h.count) for h in node.hardware),
        host=node.host,
        port=node.port,
    )


def hardware_nodes_to_proto(record: HardwareNodes) -> hardware_node_pb2.HardwareNodes:
    return hardware_node_pb2.HardwareNodes(
        participant=record.participant,
        hardware_nodes=[hardware_node_to_proto(n) for n in record.hardware_nodes],
    )


def poc_batch_to_proto(batch: PoCBatch) -> pocbatch_pb2.PoCBatch:
    return pocbatch_pb2.PoCBatch(
        participant_address=batch.participant_address,
        poc_stage_start_block_height=batch.poc_stage_start_block_height,
        received_at_block_height=batch.received_at_block_height,
        nonces=list(batch.nonces),
        dist=list(batch.dist),
        batch_id=batch.batch_id,
        node_id=batch.node_id,
    )


def epoch_to_proto(epoch: Epoch) -> epoch_pb2.Epoch:
    return epoch_pb2.Epoch(index=epoch.index, poc_start_block_height=epoch.poc_start_block_height)


def validation_params_to_proto(genesis: DevnetGenesis) -> params_pb2.ValidationParams:
    vp = genesis.validation_params
    return params_pb2.ValidationParams(
        false_positive_rate=decimal_to_proto(vp.false_positive_rate),
        min_ramp_up_measurements=vp.min_ramp_up_measurements,
        pass_value=decimal_to_proto(vp.pass_value),
        min_validation_average=decimal_to_proto(vp.min_validation_average),
        max_validation_average=decimal_to_proto(vp.max_validation_average),
        expiration_blocks=vp.expiration_blocks,
        epochs_to_max=vp.epochs_to_max,
        full_validation_traffic_cutoff=vp.full_validation_traffic_cutoff,
        min_validation_halfway=decimal_to_proto(vp.min_validation_halfway),
        min_validation_traffic_cutoff=vp.min_validation_traffic_cutoff,
        miss_percentage_cutoff=decimal_to_proto(vp.miss_percentage_cutoff),
        miss_requests_penalty=decimal_to_proto(vp.miss_requests_penalty),
        timestamp_expiration=vp.timestamp_expiration,
        timestamp_advance=vp.timestamp_advance,
        estimated_limits_per_block_kb=genesis.bandwidth_limits.estimated_limits_per_block_kb,
    )


def params_to_proto(genesis: DevnetGenesis) -> params_pb2.Params:
    ep = genesis.epoch_params
    bw = genesis.bandwidth_limits
    return params_pb2.Params(
        epoch_params=params_pb2.EpochParams(
            epoch_length=ep.epoch_length,
            epoch_multiplier=ep.epoch_multiplier,
            epoch_shift=ep.epoch_shift,
            default_unit_of_compute_price=ep.default_unit_of_compute_price,
            poc_stage_duration=ep.poc_stage_duration,
            poc_exchange_duration=ep.poc_exchange_duration,
            poc_validation_delay=ep.poc_validation_delay,
            poc_validation_duration=ep.poc_validation_duration,
            set_new_validators_delay=ep.set_new_validators_delay,
            inference_validation_cutoff=ep.inference_validation_cutoff,
            inference_pruning_epoch_threshold=ep.inference_pruning_epoch_threshold,
            pre_poc_selection_offset=ep.pre_poc_selection_offset,
        ),
        validation_params=validation_params_to_proto(genesis),
        poc_params=params_pb2.PocParams(
            default_difficulty=genesis.poc_params.default_difficulty,
            validation_sample_size=genesis.poc_params.validation_sample_size,
            poc_data_pruning_epoch_threshold=genesis.poc_params.poc_data_pruning_epoch_threshold,
        ),
        bandwidth_limits_params=params_pb2.BandwidthLimitsParams(
            estimated_limits_per_block_kb=bw.estimated_limits_per_block_kb,
            kb_per_input_token=decimal_to_proto(bw.kb_per_input_token),
            kb_per_output_token=decimal_to_proto(bw.kb_per_output_token),
        ),
        dynamic_pricing_params=params_pb2.DynamicPricingParams(
            utilization_window_duration=genesis.dynamic_pricing.utilization_window_duration,
        ),
    )


def base_account_any(address: str, public_key: bytes, account_number: int, sequence: int) -> Any:
    """The auth Account answer: a BaseAccount packed with the SDK's "/" type URL."""
    account = auth_pb2.BaseAccount(
        address=address,
        pub_key=pack_any(PubKey(key=public_key)),
        account_number=account_number,
        sequence=sequence,
    )
    return pack_any(account)


# --- the inference path ------------------------------------------------------------------------------


def inference_to_proto(inference: Inference) -> inference_pb2.Inference:
    return inference_pb2.Inference(
        index=inference.index,
        inference_id=inference.inference_id,
        prompt_hash=inference.prompt_hash,
        prompt_payload=inference.prompt_payload,
        response_hash=inference.response_hash,
        response_payload=inference.response_payload,
        prompt_token_count=inference.prompt_token_count,
        completion_token_count=inference.completion_token_count,
        requested_by=inference.requested_by,
        executed_by=inference.executed_by,
        status=int(inference.status),  # type: ignore[arg-type]  # the enum's numbers are the proto's
        start_block_height=inference.start_block_height,
        end_block_height=inference.end_block_height,
        start_block_timestamp=inference.start_block_timestamp,
        end_block_timestamp=inference.end_block_timestamp,
        model=inference.model,
        max_tokens=inference.max_tokens,
        actual_cost=inference.actual_cost,
        escrow_amount=inference.escrow_amount,
        assigned_to=inference.assigned_to,
        validated_by=list(inference.validated_by),
        node_version=inference.node_version,
        epoch_id=inference.epoch_id,
        epoch_poc_start_block_height=inference.epoch_poc_start_block_height,
        transferred_by=inference.transferred_by,
        request_timestamp=inference.request_timestamp,
        transfer_signature=inference.transfer_signature,
        execution_signature=inference.execution_signature,
        original_prompt=inference.original_prompt,
        per_token_price=inference.per_token_price,
    )


def validation_details_to_proto(details: ValidationDetails) -> inference_pb2.InferenceValidationDetails:
    return inference_pb2.InferenceValidationDetails(
        epoch_id=details.epoch_id,
        inference_id=details.inference_id,
        executor_id=details.executor_id,
        executor_reputation=details.executor_reputation,
        traffic_basis=details.traffic_basis,
        executor_power=details.executor_power,
        model=details.model,
        total_power=details.total_power,
        created_at_block_height=details.created_at_block_height,
    )


_INT32_MAX = 2**31 - 1


def participant_to_proto(record: ParticipantRecord, work: ParticipantWork, weight: int) -> participant_pb2.Participant:
    """The chain's Participant: the record, its inference work and its weight in the effective epoch."""
    stats = work.current_epoch_stats
    return participant_pb2.Participant(
        index=record.address,
        address=record.address,
        weight=min(weight, _INT32_MAX),
        last_inference_time=work.last_inference_time,
        inference_url=record.inference_url,
        status=int(work.status),  # type: ignore[arg-type]  # the enum's numbers are the proto's
        coin_balance=work.coin_balance,
        validator_key=record.validator_key,
        consecutive_invalid_inferences=work.consecutive_invalid_inferences,
        epochs_completed=work.epochs_completed,
        current_epoch_stats=participant_pb2.CurrentEpochStats(
            inference_count=stats.inference_count,
            missed_requests=stats.missed_requests,
            earned_coins=stats.earned_coins,
            rewarded_coins=stats.rewarded_coins,
            burned_coins=stats.burned_coins,
            validated_inferences=stats.validated_inferences,
            invalidated_inferences=stats.invalidated_inferences,
        ),
    )


def _active_participant(p: ActiveParticipant) -> activeparticipants_pb2.ActiveParticipant:
    out = activeparticipants_pb2.ActiveParticipant(
        index=p.index,
        validator_key=p.validator_key,
        weight=p.weight,
        inference_url=p.inference_url,
        models=list(p.models),
        ml_nodes=[activeparticipants_pb2.ModelMLNodes(ml_nodes=[_ml_node(n) for n in group.ml_nodes])
                  for group in p.ml_nodes],
    )
    if p.seed is not None:
        out.seed.CopyFrom(random_seed_pb2.RandomSeed(
            participant=p.seed.participant, epoch_index=p.seed.epoch_index, signature=p.seed.signature
        ))
    return out


def active_participants_to_proto(
    participants: tuple[ActiveParticipant, ...],
    *,
    epoch_id: int,
    epoch_group_id: int,
    poc_start_block_height: int,
    effective_block_height: int,
    created_at_block_height: int,
) -> activeparticipants_pb2.ActiveParticipants:
    return activeparticipants_pb2.ActiveParticipants(
        participants=[_active_participant(p) for p in participants],
        epoch_group_id=epoch_group_id,
        poc_start_block_height=poc_start_block_height,
        effective_block_height=effective_block_height,
        created_at_block_height=created_at_block_height,
        epoch_id=epoch_id,
    )
