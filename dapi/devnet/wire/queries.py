"""The chain's query services, answered from the devnet ledger's state as protobuf bytes.

One router serves both transports: the gRPC server calls it with the method path and the request
bytes, the CometBFT RPC server with the `abci_query` path and data, so a client gets the same bytes
either way (DESIGN.md §4.4). Errors carry a gRPC status; `abci_error` maps it to the ABCI answer of a
Cosmos SDK node (NotFound → code 22 with "not found" in the log).

Past heights: the latest/effective epoch and the epoch group data are answered as of the end of the
requested block (the daemon replays missed blocks with their epoch state); the other queries answer
from the current state. The inference path's queries are in `inference_queries`; the raw store query
`/store/inference/key` (ABCI only, as on a real node) answers the ActiveParticipants key.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message

from dapi.chain.messages import pack_any
from dapi.chain.store import STORE_KEY_PATH
from dapi.devnet.ledger import CODESPACE_SDK, Ledger, valid_address
from dapi.devnet.schedule.records import EpochGroupData, HardwareNodes
from dapi.devnet.wire.convert import (
    base_account_any,
    epoch_group_to_proto,
    epoch_to_proto,
    hardware_nodes_to_proto,
    model_to_proto,
    params_to_proto,
    poc_batch_to_proto,
    validation_params_to_proto,
)
from dapi.devnet.wire.inference_queries import InferenceQueries
from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.auth.v1beta1 import query_pb2 as auth_q
from dapi.gen.cosmos.crypto.secp256k1.keys_pb2 import PubKey
from dapi.gen.inference.inference import epoch_group_data_pb2, pocbatch_pb2
from dapi.gen.inference.inference import query_pb2 as q

__all__ = ["QueryError", "QueryRouter", "abci_error"]

INFERENCE = "/inference.inference.Query/"
AUTH = "/cosmos.auth.v1beta1.Query/"


class QueryError(Exception):
    """A failed devnet query, with the gRPC status a real chain node would answer."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class AbciError:
    """A failed query as ABCI reports it: code, codespace and log, as a Cosmos SDK node sets them."""

    code: int
    codespace: str
    log: str


def abci_error(path: str, error: QueryError) -> AbciError:
    """How a Cosmos SDK node reports a failed gRPC query routed through ABCI."""
    desc = f"rpc error: code = {_grpc_name(error.status)} desc = {error.message}"
    if error.status is grpc.StatusCode.NOT_FOUND:
        return AbciError(22, CODESPACE_SDK, f"{desc}: key not found")
    if error.status is grpc.StatusCode.UNIMPLEMENTED:
        return AbciError(6, CODESPACE_SDK, f"no route for path {path!r}: unknown request")
    return AbciError(18, CODESPACE_SDK, f"{desc}: invalid request")


def _grpc_name(status: grpc.StatusCode) -> str:
    # grpc-go spells codes in CamelCase ("NotFound"), which is what clients match in logs.
    return "".join(part.capitalize() for part in status.name.split("_"))


DAY_MS = 24 * 3600 * 1000


class QueryRouter:
    """`handle(path, data, height)` → serialized response, or QueryError.

    `executor_seed` seeds GetRandomExecutor's draws (default: derived from the chain id).
    """

    def __init__(self, ledger: Ledger, *, executor_seed: int | None = None) -> None:
        self.ledger = ledger
        self.inference = InferenceQueries(ledger, QueryError, executor_seed=executor_seed)
        self._routes: dict[str, tuple[type[Message], Callable[[Message, int | None], Message]]] = {
            INFERENCE + "Params": (q.QueryParamsRequest, self._params),
            INFERENCE + "EpochInfo": (q.QueryEpochInfoRequest, self._epoch_info),
            INFERENCE + "CurrentEpochGroupData": (q.QueryCurrentEpochGroupDataRequest, self._current_group),
            INFERENCE + "EpochGroupData": (q.QueryGetEpochGroupDataRequest, self._group),
            INFERENCE + "EpochGroupDataAll": (q.QueryAllEpochGroupDataRequest, self._groups_all),
            INFERENCE + "ModelsAll": (q.QueryModelsAllRequest, self._models_all),
            INFERENCE + "HardwareNodes": (q.QueryHardwareNodesRequest, self._hardware_nodes),
            INFERENCE + "HardwareNodesAll": (q.QueryHardwareNodesAllRequest, self._hardware_nodes_all),
            INFERENCE + "PocBatchesForStage": (q.QueryPocBatchesForStageRequest, self._poc_batches),
            INFERENCE + "InferencesAndTokensStatsByModels": (
                q.QueryInferencesAndTokensStatsByModelsRequest, self._stats_by_models,
            ),
            AUTH + "Account": (auth_q.QueryAccountRequest, self._account),
            AUTH + "AccountInfo": (auth_q.QueryAccountInfoRequest, self._account_info),
            **self.inference.routes(INFERENCE),
        }
        self.calls = 0

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._routes)

    def resolve_height(self, height: int) -> int | None:
        """None = latest; a height the chain has not reached yet is an error, as on a real node."""
        if height < 0:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid height {height}")
        if height == 0:
            return None
        if height > self.ledger.height:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT,
                             "cannot query with height in the future; please provide a valid height")
        return height

    def answered_height(self, height: int | None) -> int:
        return self.ledger.height if height is None else height

    def handle(self, path: str, data: bytes, height: int = 0) -> bytes:
        if path == STORE_KEY_PATH:  # a raw store read (ABCI only: not in `paths`, so gRPC does not serve it)
            self.calls += 1
            return self.inference.active_participants_value(data, self.resolve_height(height))
        route = self._routes.get(path)
        if route is None:
            raise QueryError(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
        request_type, handler = route
        try:
            request = request_type.FromString(data)
        except DecodeError as exc:
            what = request_type.DESCRIPTOR.full_name
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode {what}: {exc}") from None
        self.calls += 1
        return handler(request, self.resolve_height(height)).SerializeToString()

    # --- inference.inference.Query ---

    def _params(self, request: Message, height: int | None) -> Message:
        return q.QueryParamsResponse(params=params_to_proto(self.ledger.genesis))

    def _epoch_info(self, request: Message, height: int | None) -> Message:
        return q.QueryEpochInfoResponse(
            block_height=self.answered_height(height),
            params=params_to_proto(self.ledger.genesis),
            latest_epoch=epoch_to_proto(self.ledger.latest_epoch(height)),
        )

    def _group_proto(self, group: EpochGroupData) -> epoch_group_data_pb2.EpochGroupData:
        # The chain copies its validation params into a parent group when it becomes effective.
        switched = not group.model_id and (group.effective_block_height > 0 or group.epoch_index == 0)
        return epoch_group_to_proto(group, validation_params_to_proto(self.ledger.genesis) if switched else None)

    def _current_group(self, request: Message, height: int | None) -> Message:
        effective = self.ledger.effective_epoch(height)
        group = self.ledger.epoch_group(effective.index, "", height)
        if group is None:
            raise QueryError(grpc.StatusCode.NOT_FOUND, f"epoch group data of epoch {effective.index} not found")
        return q.QueryCurrentEpochGroupDataResponse(epoch_group_data=self._group_proto(group))

    def _group(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetEpochGroupDataRequest)
        group = self.ledger.epoch_group(request.epoch_index, request.model_id, height)
        if group is None:
            which = f"model {request.model_id!r}" if request.model_id else "parent group"
            raise QueryError(grpc.StatusCode.NOT_FOUND,
                             f"epoch group data not found (epoch {request.epoch_index}, {which})")
        return q.QueryGetEpochGroupDataResponse(epoch_group_data=self._group_proto(group))

    def _groups_all(self, request: Message, height: int | None) -> Message:
        return q.QueryAllEpochGroupDataResponse(
            epoch_group_data=[self._group_proto(g) for g in self.ledger.all_epoch_groups()]
        )

    def _models_all(self, request: Message, height: int | None) -> Message:
        return q.QueryModelsAllResponse(model=[model_to_proto(m) for m in self.ledger.registry.get_governance_models()])

    def _hardware_nodes(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryHardwareNodesRequest)
        record = self.ledger.hardware_nodes(request.participant) or HardwareNodes(participant=request.participant)
        return q.QueryHardwareNodesResponse(nodes=hardware_nodes_to_proto(record))

    def _hardware_nodes_all(self, request: Message, height: int | None) -> Message:
        records = [self.ledger.hardware[p] for p in sorted(self.ledger.hardware)]
        return q.QueryHardwareNodesAllResponse(nodes=[hardware_nodes_to_proto(r) for r in records])

    def _poc_batches(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryPocBatchesForStageRequest)
        by_participant: dict[str, list[pocbatch_pb2.PoCBatch]] = {}
        for batch in self.ledger.batches(request.block_height):
            by_participant.setdefault(batch.participant_address, []).append(poc_batch_to_proto(batch))
        groups = []
        for participant in sorted(by_participant):
            account = self.ledger.account(participant)
            if account is None:
                continue  # as the chain: a participant without an account key cannot be validated
            batches = sorted(by_participant[participant], key=lambda b: b.batch_id)
            groups.append(pocbatch_pb2.PoCBatchesWithParticipants(
                participant=participant,
                pub_key=base64.b64encode(account.public_key).decode(),
                hex_pub_key=account.public_key.hex(),
                poc_batch=batches,
            ))
        return q.QueryPocBatchesForStageResponse(poc_batch=groups)

    # --- cosmos.auth.v1beta1.Query ---

    def _stats_by_models(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryInferencesAndTokensStatsByModelsRequest)
        # As the chain: times in ms of block time; 0 means now, or now minus 24 h for the start.
        now_ms = self.ledger.now_ns() // 1_000_000
        time_to = request.time_to or now_ms
        time_from = request.time_from or now_ms - DAY_MS
        if time_to < time_from:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, "invalid time period")
        totals = self.ledger.tokens_by_model(time_from, time_to)
        return q.QueryInferencesAndTokensStatsByModelsResponse(stats_models=[
            q.ModelStats(model=model, ai_tokens=tokens, inferences=count)
            for model, (tokens, count) in sorted(totals.items())
        ])

    def _lookup(self, address: str) -> tuple[str, bytes, int, int]:
        account = self.ledger.account(address)
        if account is None:
            if not valid_address(address):
                raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid address {address!r}")
            raise QueryError(grpc.StatusCode.NOT_FOUND, f"account {address} not found")
        return account.address, account.public_key, account.account_number, account.sequence

    def _account(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, auth_q.QueryAccountRequest)
        return auth_q.QueryAccountResponse(account=base_account_any(*self._lookup(request.address)))

    def _account_info(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, auth_q.QueryAccountInfoRequest)
        address, public_key, number, sequence = self._lookup(request.address)
        info = auth_pb2.BaseAccount(address=address, account_number=number, sequence=sequence)
        info.pub_key.CopyFrom(pack_any(PubKey(key=public_key)))
        return auth_q.QueryAccountInfoResponse(info=info)
