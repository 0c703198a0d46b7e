"""The generated protobuf code: reproducible from proto/, wire-compatible names and field numbers."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any as TypingAny

import pytest
from google.protobuf.any_pb2 import Any
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from dapi.chain import messages
from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.auth.v1beta1 import query_pb2_grpc as auth_query_grpc
from dapi.gen.cosmos.authz.v1beta1 import tx_pb2 as authz_tx_pb2
from dapi.gen.cosmos.base.abci.v1beta1 import abci_pb2
from dapi.gen.cosmos.crypto.secp256k1 import keys_pb2
from dapi.gen.cosmos.tx.signing.v1beta1 import signing_pb2
from dapi.gen.cosmos.tx.v1beta1 import service_pb2, service_pb2_grpc, tx_pb2
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
    query_pb2,
    query_pb2_grpc,
)
from dapi.gen.inference.inference import tx_pb2 as inference_tx_pb2

REPO = pathlib.Path(__file__).resolve().parent.parent
GEN = REPO / "dapi" / "gen"
SCRIPT = REPO / "scripts" / "gen_proto.sh"


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _run_gen(out: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_regenerating_reproduces_committed_code_byte_for_byte(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gen"
    result = _run_gen(out)
    assert result.returncode == 0, result.stderr
    fresh, committed = _tree(out), _tree(GEN)
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert changed == [], f"dapi/gen is stale; run scripts/gen_proto.sh ({changed[:5]})"


def test_generator_refuses_to_wipe_a_foreign_directory(tmp_path: pathlib.Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = _run_gen(tmp_path)
    assert result.returncode != 0
    assert keep.read_text() == "mine"


def test_generated_modules_import_each_other_inside_dapi_gen() -> None:
    top_level = re.compile(r"^\s*(?:from|import)\s+(?:cosmos|inference|tendermint)\b", re.M)
    offenders = [
        str(p.relative_to(REPO))
        for p in GEN.rglob("*")
        if p.suffix in (".py", ".pyi") and top_level.search(p.read_text())
    ]
    assert offenders == []
    assert inference_tx_pb2.MsgSubmitPocBatch.__module__ == "dapi.gen.inference.inference.tx_pb2"


@pytest.mark.parametrize(
    ("cls", "full_name"),
    [
        (inference_tx_pb2.MsgSubmitPocBatch, "inference.inference.MsgSubmitPocBatch"),
        (epoch_group_data_pb2.EpochGroupData, "inference.inference.EpochGroupData"),
        (tx_pb2.TxRaw, "cosmos.tx.v1beta1.TxRaw"),
        (keys_pb2.PubKey, "cosmos.crypto.secp256k1.PubKey"),
        (authz_tx_pb2.MsgExec, "cosmos.authz.v1beta1.MsgExec"),
        (auth_pb2.BaseAccount, "cosmos.auth.v1beta1.BaseAccount"),
        (abci_pb2.TxResponse, "cosmos.base.abci.v1beta1.TxResponse"),
    ],
)
def test_full_names_are_the_chains(cls: type[Message], full_name: str) -> None:
    assert cls.DESCRIPTOR.full_name == full_name


class _RecordingChannel:
    """Stands in for a grpc.Channel: the generated stubs register each method path on it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, *args: TypingAny, **kwargs: TypingAny) -> Callable[..., None]:
        self.paths.append(path)
        return lambda *a, **k: None


@pytest.mark.parametrize(
    ("stub", "path"),
    [
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/EpochInfo"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/Params"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/CurrentEpochGroupData"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/EpochGroupData"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/ModelsAll"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/InferencesAndTokensStatsByModels"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/HardwareNodes"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/PocBatchesForStage"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/Inference"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/Participant"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/ParticipantAll"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/InferenceParticipant"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/GranteesByMessageType"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/GetRandomExecutor"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/GetInferenceValidationParameters"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/GetCurrentEpoch"),
        (query_pb2_grpc.QueryStub, "/inference.inference.Query/GetModelPerTokenPrice"),
        (service_pb2_grpc.ServiceStub, "/cosmos.tx.v1beta1.Service/BroadcastTx"),
        (service_pb2_grpc.ServiceStub, "/cosmos.tx.v1beta1.Service/GetTx"),
        (auth_query_grpc.QueryStub, "/cosmos.auth.v1beta1.Query/Account"),
    ],
)
def test_grpc_method_paths_are_the_chains(stub: Callable[[_RecordingChannel], object], path: str) -> None:
    channel = _RecordingChannel()
    stub(channel)
    assert path in channel.paths


def test_query_methods_take_the_documented_messages() -> None:
    methods = query_pb2.DESCRIPTOR.services_by_name["Query"].methods_by_name
    assert methods["EpochInfo"].output_type.full_name == "inference.inference.QueryEpochInfoResponse"
    assert methods["EpochGroupData"].input_type.full_name == "inference.inference.QueryGetEpochGroupDataRequest"
    assert methods["PocBatchesForStage"].output_type.full_name == "inference.inference.QueryPocBatchesForStageResponse"


_T = FieldDescriptor
# (message, field, number, wire type) from chain-io.md §4.1 and §5, and DESIGN.md §3 for the Cosmos SDK.
FIELDS: list[tuple[type[Message], str, int, int]] = [
    (inference_tx_pb2.MsgSubmitPocBatch, "creator", 1, _T.TYPE_STRING),
    (inference_tx_pb2.MsgSubmitPocBatch, "poc_stage_start_block_height", 2, _T.TYPE_INT64),
    (inference_tx_pb2.MsgSubmitPocBatch, "nonces", 4, _T.TYPE_INT64),
    (inference_tx_pb2.MsgSubmitPocBatch, "dist", 5, _T.TYPE_DOUBLE),
    (inference_tx_pb2.MsgSubmitPocBatch, "node_id", 6, _T.TYPE_STRING),
    (inference_tx_pb2.MsgSubmitPocValidation, "participant_address", 2, _T.TYPE_STRING),
    (inference_tx_pb2.MsgSubmitPocValidation, "fraud_detected", 11, _T.TYPE_BOOL),
    (inference_tx_pb2.MsgSubmitHardwareDiff, "newOrModified", 2, _T.TYPE_MESSAGE),
    (inference_tx_pb2.MsgSubmitHardwareDiff, "removed", 3, _T.TYPE_MESSAGE),
    (inference_tx_pb2.MsgSubmitSeed, "epoch_index", 2, _T.TYPE_UINT64),
    (inference_tx_pb2.MsgClaimRewards, "seed", 2, _T.TYPE_INT64),
    (inference_tx_pb2.MsgClaimRewardsResponse, "result", 2, _T.TYPE_STRING),
    (model_pb2.Model, "throughput_per_nonce", 12, _T.TYPE_UINT64),
    (model_pb2.Model, "validation_threshold", 13, _T.TYPE_MESSAGE),
    (params_pb2.Decimal, "exponent", 2, _T.TYPE_INT32),
    (params_pb2.Params, "bandwidth_limits_params", 8, _T.TYPE_MESSAGE),
    (params_pb2.Params, "dynamic_pricing_params", 7, _T.TYPE_MESSAGE),
    (params_pb2.DynamicPricingParams, "utilization_window_duration", 4, _T.TYPE_UINT64),
    (query_pb2.QueryInferencesAndTokensStatsByModelsRequest, "time_from", 2, _T.TYPE_INT64),
    (query_pb2.QueryInferencesAndTokensStatsByModelsRequest, "time_to", 3, _T.TYPE_INT64),
    (query_pb2.QueryInferencesAndTokensStatsByModelsResponse, "stats_models", 1, _T.TYPE_MESSAGE),
    (query_pb2.ModelStats, "ai_tokens", 2, _T.TYPE_INT64),
    (query_pb2.ModelStats, "inferences", 3, _T.TYPE_INT32),
    (params_pb2.EpochParams, "set_new_validators_delay", 9, _T.TYPE_INT64),
    (params_pb2.EpochParams, "inference_pruning_epoch_threshold", 11, _T.TYPE_UINT64),
    (params_pb2.ValidationParams, "expiration_blocks", 6, _T.TYPE_INT64),
    (params_pb2.ValidationParams, "timestamp_advance", 14, _T.TYPE_INT64),
    (params_pb2.PocParams, "validation_sample_size", 2, _T.TYPE_INT32),
    (epoch_pb2.Epoch, "poc_start_block_height", 2, _T.TYPE_INT64),
    (epoch_group_data_pb2.EpochGroupData, "validation_weights", 8, _T.TYPE_MESSAGE),
    (epoch_group_data_pb2.EpochGroupData, "model_id", 14, _T.TYPE_STRING),
    (epoch_group_data_pb2.EpochGroupData, "sub_group_models", 15, _T.TYPE_STRING),
    (epoch_group_data_pb2.EpochGroupData, "epoch_index", 16, _T.TYPE_UINT64),
    (epoch_group_data_pb2.EpochGroupData, "model_snapshot", 17, _T.TYPE_MESSAGE),
    (epoch_group_data_pb2.EpochGroupData, "total_throughput", 18, _T.TYPE_INT64),
    (epoch_group_data_pb2.ValidationWeight, "ml_nodes", 4, _T.TYPE_MESSAGE),
    (epoch_group_data_pb2.MLNodeInfo, "poc_weight", 3, _T.TYPE_INT64),
    (epoch_group_data_pb2.MLNodeInfo, "timeslot_allocation", 4, _T.TYPE_BOOL),
    (activeparticipants_pb2.ActiveParticipant, "ml_nodes", 7, _T.TYPE_MESSAGE),
    (hardware_node_pb2.HardwareNode, "port", 6, _T.TYPE_STRING),
    (hardware_node_pb2.Hardware, "count", 2, _T.TYPE_UINT32),
    (pocbatch_pb2.PoCBatch, "node_id", 7, _T.TYPE_STRING),
    (pocbatch_pb2.PoCBatchesWithParticipants, "hex_pub_key", 3, _T.TYPE_STRING),
    (query_pb2.QueryEpochInfoResponse, "latest_epoch", 3, _T.TYPE_MESSAGE),
    (query_pb2.QueryGetEpochGroupDataRequest, "model_id", 2, _T.TYPE_STRING),
    (query_pb2.QueryPocBatchesForStageResponse, "poc_batch", 1, _T.TYPE_MESSAGE),
    (tx_pb2.TxBody, "unordered", 4, _T.TYPE_BOOL),
    (tx_pb2.TxBody, "timeout_timestamp", 5, _T.TYPE_MESSAGE),
    (tx_pb2.SignerInfo, "sequence", 3, _T.TYPE_UINT64),
    (tx_pb2.Fee, "gas_limit", 2, _T.TYPE_UINT64),
    (tx_pb2.SignDoc, "account_number", 4, _T.TYPE_UINT64),
    (authz_tx_pb2.MsgExec, "msgs", 2, _T.TYPE_MESSAGE),
    (auth_pb2.BaseAccount, "account_number", 3, _T.TYPE_UINT64),
    (abci_pb2.TxResponse, "code", 4, _T.TYPE_UINT32),
    (abci_pb2.TxResponse, "raw_log", 6, _T.TYPE_STRING),
    (service_pb2.BroadcastTxRequest, "mode", 2, _T.TYPE_ENUM),
    # The inference path: chain-io.md §4.1, §5.10, §5.11 and reference/inference.md §2.1, §3, §4.
    (inference_tx_pb2.MsgStartInference, "creator", 1, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "inference_id", 2, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "prompt_hash", 3, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "prompt_payload", 4, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "model", 6, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "requested_by", 7, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "assigned_to", 8, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "node_version", 9, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "max_tokens", 10, _T.TYPE_UINT64),
    (inference_tx_pb2.MsgStartInference, "prompt_token_count", 11, _T.TYPE_UINT64),
    (inference_tx_pb2.MsgStartInference, "request_timestamp", 12, _T.TYPE_INT64),
    (inference_tx_pb2.MsgStartInference, "transfer_signature", 14, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInference, "original_prompt", 15, _T.TYPE_STRING),
    (inference_tx_pb2.MsgStartInferenceResponse, "inference_index", 1, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "inference_id", 2, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "response_hash", 3, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "response_payload", 4, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "prompt_token_count", 5, _T.TYPE_UINT64),
    (inference_tx_pb2.MsgFinishInference, "completion_token_count", 6, _T.TYPE_UINT64),
    (inference_tx_pb2.MsgFinishInference, "executed_by", 7, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "transferred_by", 8, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "request_timestamp", 9, _T.TYPE_INT64),
    (inference_tx_pb2.MsgFinishInference, "transfer_signature", 10, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "executor_signature", 11, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "requested_by", 12, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "original_prompt", 13, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInference, "model", 14, _T.TYPE_STRING),
    (inference_tx_pb2.MsgFinishInferenceResponse, "inference_index", 1, _T.TYPE_STRING),
    (inference_tx_pb2.MsgValidation, "id", 2, _T.TYPE_STRING),
    (inference_tx_pb2.MsgValidation, "inference_id", 3, _T.TYPE_STRING),
    (inference_tx_pb2.MsgValidation, "response_payload", 4, _T.TYPE_STRING),
    (inference_tx_pb2.MsgValidation, "response_hash", 5, _T.TYPE_STRING),
    (inference_tx_pb2.MsgValidation, "value", 6, _T.TYPE_DOUBLE),
    (inference_tx_pb2.MsgValidation, "revalidation", 7, _T.TYPE_BOOL),
    (inference_pb2.Inference, "prompt_token_count", 7, _T.TYPE_UINT64),
    (inference_pb2.Inference, "status", 11, _T.TYPE_ENUM),
    (inference_pb2.Inference, "start_block_timestamp", 14, _T.TYPE_INT64),
    (inference_pb2.Inference, "model", 16, _T.TYPE_STRING),
    (inference_pb2.Inference, "actual_cost", 18, _T.TYPE_INT64),
    (inference_pb2.Inference, "escrow_amount", 19, _T.TYPE_INT64),
    (inference_pb2.Inference, "proposal_details", 20, _T.TYPE_MESSAGE),
    (inference_pb2.Inference, "assigned_to", 22, _T.TYPE_STRING),
    (inference_pb2.Inference, "validated_by", 23, _T.TYPE_STRING),
    (inference_pb2.Inference, "epoch_id", 25, _T.TYPE_UINT64),
    (inference_pb2.Inference, "epoch_poc_start_block_height", 26, _T.TYPE_UINT64),
    (inference_pb2.Inference, "transferred_by", 27, _T.TYPE_STRING),
    (inference_pb2.Inference, "request_timestamp", 28, _T.TYPE_INT64),
    (inference_pb2.Inference, "execution_signature", 30, _T.TYPE_STRING),
    (inference_pb2.Inference, "original_prompt", 31, _T.TYPE_STRING),
    (inference_pb2.Inference, "per_token_price", 32, _T.TYPE_UINT64),
    (inference_pb2.InferenceTimeout, "inference_id", 2, _T.TYPE_STRING),
    (inference_pb2.InferenceValidationDetails, "executor_reputation", 4, _T.TYPE_INT32),
    (inference_pb2.InferenceValidationDetails, "total_power", 8, _T.TYPE_UINT64),
    (inference_pb2.InferenceValidationDetails, "created_at_block_height", 9, _T.TYPE_INT64),
    (participant_pb2.Participant, "weight", 3, _T.TYPE_INT32),
    (participant_pb2.Participant, "inference_url", 7, _T.TYPE_STRING),
    (participant_pb2.Participant, "status", 8, _T.TYPE_ENUM),
    (participant_pb2.Participant, "coin_balance", 9, _T.TYPE_INT64),
    (participant_pb2.Participant, "epochs_completed", 13, _T.TYPE_UINT32),
    (participant_pb2.Participant, "current_epoch_stats", 14, _T.TYPE_MESSAGE),
    (participant_pb2.CurrentEpochStats, "missed_requests", 2, _T.TYPE_UINT64),
    (participant_pb2.CurrentEpochStats, "invalidated_inferences", 7, _T.TYPE_UINT64),
    (query_pb2.QueryGetInferenceRequest, "index", 1, _T.TYPE_STRING),
    (query_pb2.QueryAllParticipantResponse, "block_height", 3, _T.TYPE_INT64),
    (query_pb2.QueryInferenceParticipantResponse, "pubkey", 1, _T.TYPE_STRING),
    (query_pb2.QueryInferenceParticipantResponse, "balance", 2, _T.TYPE_INT64),
    (query_pb2.QueryGranteesByMessageTypeRequest, "message_type_url", 2, _T.TYPE_STRING),
    (query_pb2.Grantee, "pub_key", 2, _T.TYPE_STRING),
    (query_pb2.QueryGetRandomExecutorResponse, "executor", 1, _T.TYPE_MESSAGE),
    (query_pb2.QueryGetInferenceValidationParametersRequest, "requester", 2, _T.TYPE_STRING),
    (query_pb2.QueryGetInferenceValidationParametersResponse, "details", 3, _T.TYPE_MESSAGE),
    (query_pb2.QueryGetInferenceValidationParametersResponse, "parameters", 4, _T.TYPE_MESSAGE),
    (query_pb2.QueryGetCurrentEpochResponse, "epoch", 1, _T.TYPE_UINT64),
    (query_pb2.QueryGetModelPerTokenPriceResponse, "found", 2, _T.TYPE_BOOL),
]


@pytest.mark.parametrize(("cls", "field", "number", "wire_type"), FIELDS)
def test_field_numbers_match_the_chain(cls: type[Message], field: str, number: int, wire_type: int) -> None:
    descriptor = cls.DESCRIPTOR.fields_by_name[field]
    assert (descriptor.number, descriptor.type) == (number, wire_type)


def test_enum_values_match_the_chain() -> None:
    assert signing_pb2.SIGN_MODE_DIRECT == 1
    assert service_pb2.BROADCAST_MODE_SYNC == 2
    assert epoch_group_data_pb2.POC_SLOT == 1
    assert hardware_node_pb2.STOPPED == 4
    assert hardware_node_pb2.HardwareNodeStatus.Name(hardware_node_pb2.FAILED) == "FAILED"
    assert hardware_node_pb2.FAILED == 5
    assert inference_pb2.InferenceStatus.Name(inference_pb2.EXPIRED) == "EXPIRED" and inference_pb2.EXPIRED == 5
    assert (inference_pb2.STARTED, inference_pb2.FINISHED, inference_pb2.VALIDATED) == (0, 1, 2)
    assert (inference_pb2.INVALIDATED, inference_pb2.VOTING) == (3, 4)
    assert (participant_pb2.ACTIVE, participant_pb2.INVALID, participant_pb2.RAMPING) == (1, 3, 4)


def test_decimal_exponent_is_a_sign_extended_int32_varint() -> None:
    # kb_per_input_token = {23, -4} (chain-io.md §2.4): a negative int32 takes ten varint bytes on the wire.
    encoded = params_pb2.Decimal(value=23, exponent=-4).SerializeToString()
    assert encoded.hex() == "0817" + "10fcffffffffffffffff01"


def test_epoch_group_data_round_trips_with_the_multi_model_schedule() -> None:
    group = epoch_group_data_pb2.EpochGroupData(
        epoch_index=7,
        model_id="Qwen/Qwen2.5-7B-Instruct",
        model_snapshot=model_pb2.Model(
            id="Qwen/Qwen2.5-7B-Instruct",
            model_args=["--quantization", "fp8"],
            throughput_per_nonce=1000,
            validation_threshold=params_pb2.Decimal(value=85, exponent=-2),
        ),
        validation_weights=[
            epoch_group_data_pb2.ValidationWeight(
                member_address="gonka1abc",
                weight=10,
                ml_nodes=[
                    epoch_group_data_pb2.MLNodeInfo(
                        node_id="node-1", poc_weight=10, throughput=10_000, timeslot_allocation=[True, True]
                    )
                ],
            )
        ],
        total_throughput=10_000,
    )
    decoded = epoch_group_data_pb2.EpochGroupData.FromString(group.SerializeToString())
    assert decoded == group
    node = decoded.validation_weights[0].ml_nodes[0]
    assert list(node.timeslot_allocation)[epoch_group_data_pb2.POC_SLOT] is True


def test_poc_batch_repeated_fields_are_packed_and_round_trip() -> None:
    only_arrays = inference_tx_pb2.MsgSubmitPocBatch(nonces=[1, -2], dist=[0.5])
    # One length-delimited record per field (gogoproto's packed encoding): 0x22 = field 4, 0x2a = field 5;
    # -2 as int64 is a ten-byte varint, 0.5 a little-endian double.
    assert only_arrays.SerializeToString().hex() == "220b01feffffffffffffffff01" + "2a08000000000000e03f"
    msg = inference_tx_pb2.MsgSubmitPocBatch(
        creator="gonka1abc", poc_stage_start_block_height=12345, batch_id="b", nonces=[1, -2], dist=[0.5], node_id="n"
    )
    assert inference_tx_pb2.MsgSubmitPocBatch.FromString(msg.SerializeToString()) == msg


def test_hardware_diff_round_trips() -> None:
    node = hardware_node_pb2.HardwareNode(
        local_id="node1",
        status=hardware_node_pb2.INFERENCE,
        models=["m"],
        hardware=[hardware_node_pb2.Hardware(type="H100", count=8)],
        host="10.0.0.1",
        port="8080",
    )
    msg = inference_tx_pb2.MsgSubmitHardwareDiff(creator="gonka1abc", newOrModified=[node], removed=[node])
    assert inference_tx_pb2.MsgSubmitHardwareDiff.FromString(msg.SerializeToString()) == msg


# --- dapi.chain.messages ---------------------------------------------------------------------------


def test_pack_any_uses_the_cosmos_slash_prefix() -> None:
    packed = messages.pack_any(inference_tx_pb2.MsgSubmitSeed(creator="gonka1abc", epoch_index=3, signature="ab"))
    assert packed.type_url == "/inference.inference.MsgSubmitSeed"
    assert messages.pack_any(inference_tx_pb2.MsgSubmitPocBatch()).type_url == "/inference.inference.MsgSubmitPocBatch"
    assert messages.pack_any(keys_pb2.PubKey()).type_url == "/cosmos.crypto.secp256k1.PubKey"


@pytest.mark.parametrize("type_url", sorted(messages.REGISTRY))
def test_every_registered_type_round_trips_through_any(type_url: str) -> None:
    cls = messages.REGISTRY[type_url]
    original = cls()
    for field in cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
            setattr(original, field.name, f"v-{field.name}")
    packed = messages.pack_any(original)
    assert packed.type_url == type_url
    unpacked = messages.unpack_any(packed)
    assert type(unpacked) is cls
    assert unpacked == original


def test_registry_keys_are_the_type_urls_of_their_classes() -> None:
    for url, cls in messages.REGISTRY.items():
        assert url == "/" + cls.DESCRIPTOR.full_name
    assert messages.message_class("/cosmos.authz.v1beta1.MsgExec") is authz_tx_pb2.MsgExec


def test_unpack_any_rejects_unknown_and_google_prefixed_type_urls() -> None:
    with pytest.raises(messages.UnknownTypeUrl):
        messages.unpack_any(Any(type_url="/inference.inference.MsgNope", value=b""))
    google_style = Any()
    google_style.Pack(inference_tx_pb2.MsgSubmitSeed())
    with pytest.raises(messages.UnknownTypeUrl):
        messages.unpack_any(google_style)


def test_unpack_any_rejects_garbage_bytes() -> None:
    with pytest.raises(DecodeError):
        messages.unpack_any(Any(type_url="/inference.inference.MsgSubmitSeed", value=b"\xff\xff\xff"))
