"""Typed chain queries over one of two transports with the same bytes on the wire.

``GrpcTransport`` calls ``/inference.inference.Query/<Method>`` on the node's gRPC port;
``AbciTransport`` sends the same request as an ABCI query through CometBFT RPC (the reference's only
way). The client above never knows which it has; tests pick one, production picks by whether
``chain_node.grpc_url`` is set.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from dapi.chain.errors import (
    ChainBadResponse,
    ChainError,
    ChainNotFound,
    ChainRejected,
    ChainUnavailable,
    pruned_height_error,
)
from dapi.chain.rpc import CometRPC
from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.auth.v1beta1 import query_pb2 as auth_query_pb2
from dapi.gen.inference.inference import (
    epoch_group_data_pb2,
    hardware_node_pb2,
    inference_pb2,
    model_pb2,
    params_pb2,
    participant_pb2,
    pocbatch_pb2,
)
from dapi.gen.inference.inference import query_pb2 as q

M = TypeVar("M", bound=Message)

INFERENCE_QUERY = "/inference.inference.Query/"
AUTH_ACCOUNT = "/cosmos.auth.v1beta1.Query/Account"

_RETRIABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}


class QueryTransport(Protocol):
    """How a query reaches the chain: one unary call, protobuf bytes in and out (gRPC or ABCI over RPC)."""

    async def unary(self, path: str, request: Message, response_type: type[M], height: int = 0) -> M:
        """One query; ``height`` > 0 asks for the state as of that block (0: the latest)."""
        ...

    async def aclose(self) -> None: ...


def _decode(path: str, data: bytes, response_type: type[M]) -> M:
    try:
        return response_type.FromString(data)
    except DecodeError as exc:
        raise ChainBadResponse(f"{path}: cannot decode {response_type.DESCRIPTOR.full_name}") from exc


class GrpcTransport:
    """Queries on the chain node's gRPC port; a past height goes in the ``x-cosmos-block-height`` header."""

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        )

    async def unary(self, path: str, request: Message, response_type: type[M], height: int = 0) -> M:
        # Raw bytes through the channel so decoding errors surface as ours, not as grpc internals.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(path)
        # The Cosmos SDK's gRPC gateway reads the block height of a historical query from this header.
        metadata = (("x-cosmos-block-height", str(height)),) if height > 0 else None
        try:
            data = await call(request.SerializeToString(), timeout=self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise grpc_error(path, exc) from exc
        return _decode(path, data, response_type)

    async def aclose(self) -> None:
        await self._channel.close()


def grpc_error(path: str, exc: grpc.aio.AioRpcError) -> ChainError:
    code = exc.code()
    text = f"{path}: {code.name}: {exc.details()}"
    # A historical query below the node's pruning horizon (the SDK answers NotFound or InvalidArgument).
    if (pruned := pruned_height_error(exc.details() or "", where=f"{path}: {code.name}")) is not None:
        return pruned
    if code == grpc.StatusCode.NOT_FOUND:
        return ChainNotFound(text)
    if code in _RETRIABLE_GRPC:
        return ChainUnavailable(text)
    return ChainRejected(text, code=code.value[0], log=exc.details() or "")


class AbciTransport:
    """Queries as CometBFT ``abci_query`` calls, with the same request and response bytes as over gRPC."""

    def __init__(self, rpc: CometRPC) -> None:
        self.rpc = rpc

    async def unary(self, path: str, request: Message, response_type: type[M], height: int = 0) -> M:
        result = await self.rpc.abci_query(path, request.SerializeToString(), height)
        if result.code != 0:
            if (pruned := pruned_height_error(result.log, where=f"{path}: code {result.code}")) is not None:
                raise pruned  # a historical query below the node's pruning horizon
            # The chain maps a gRPC NotFound into the ABCI log text; that text is all there is to go on.
            if "not found" in result.log.lower():
                raise ChainNotFound(f"{path}: {result.log}")
            raise ChainRejected(f"{path}: code {result.code}: {result.log}", code=result.code, log=result.log)
        return _decode(path, result.value, response_type)

    async def aclose(self) -> None:
        await self.rpc.aclose()


class ChainQuery:
    """The queries the daemon makes (DESIGN.md §4.4). ``calls`` counts every query sent.

    Args:
        transport: how the queries reach the chain (gRPC, or ABCI over RPC); :meth:`aclose` closes it.
    """

    def __init__(self, transport: QueryTransport) -> None:
        self.transport = transport
        self.calls = 0

    async def _ask(self, method: str, request: Message, response_type: type[M], height: int = 0) -> M:
        self.calls += 1
        return await self.transport.unary(INFERENCE_QUERY + method, request, response_type, height)

    async def epoch_info(self, height: int = 0) -> q.QueryEpochInfoResponse:
        """The latest epoch and params; as of block ``height`` when it is given (replaying missed blocks)."""
        return await self._ask("EpochInfo", q.QueryEpochInfoRequest(), q.QueryEpochInfoResponse, height)

    async def params(self) -> params_pb2.Params:
        return (await self._ask("Params", q.QueryParamsRequest(), q.QueryParamsResponse)).params

    async def current_epoch_group_data(self) -> epoch_group_data_pb2.EpochGroupData:
        response = await self._ask(
            "CurrentEpochGroupData", q.QueryCurrentEpochGroupDataRequest(), q.QueryCurrentEpochGroupDataResponse
        )
        return response.epoch_group_data

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> epoch_group_data_pb2.EpochGroupData:
        request = q.QueryGetEpochGroupDataRequest(epoch_index=epoch_index, model_id=model_id)
        return (await self._ask("EpochGroupData", request, q.QueryGetEpochGroupDataResponse)).epoch_group_data

    async def models_all(self) -> list[model_pb2.Model]:
        return list((await self._ask("ModelsAll", q.QueryModelsAllRequest(), q.QueryModelsAllResponse)).model)

    async def hardware_nodes(self, participant: str) -> hardware_node_pb2.HardwareNodes:
        request = q.QueryHardwareNodesRequest(participant=participant)
        return (await self._ask("HardwareNodes", request, q.QueryHardwareNodesResponse)).nodes

    async def poc_batches_for_stage(self, block_height: int) -> list[pocbatch_pb2.PoCBatchesWithParticipants]:
        request = q.QueryPocBatchesForStageRequest(block_height=block_height)
        return list((await self._ask("PocBatchesForStage", request, q.QueryPocBatchesForStageResponse)).poc_batch)

    async def model_per_token_prices(self) -> dict[str, int]:
        response = await self._ask(
            "GetAllModelPerTokenPrices", q.QueryGetAllModelPerTokenPricesRequest(),
            q.QueryGetAllModelPerTokenPricesResponse,
        )
        return {p.model_id: p.price for p in response.model_prices}

    async def model_capacities(self) -> dict[str, int]:
        response = await self._ask(
            "GetAllModelCapacities", q.QueryGetAllModelCapacitiesRequest(), q.QueryGetAllModelCapacitiesResponse
        )
        return {c.model_id: c.capacity for c in response.model_capacities}

    async def tokens_by_model(self, time_from_ms: int, time_to_ms: int) -> dict[str, int]:
        """AI tokens (prompt + completion) per model of the inferences recorded in [from, to], in ms."""
        request = q.QueryInferencesAndTokensStatsByModelsRequest(time_from=time_from_ms, time_to=time_to_ms)
        response = await self._ask(
            "InferencesAndTokensStatsByModels", request, q.QueryInferencesAndTokensStatsByModelsResponse
        )
        tokens: dict[str, int] = {}
        for entry in response.stats_models:
            tokens[entry.model] = tokens.get(entry.model, 0) + entry.ai_tokens
        return tokens

    # -- the inference path (reference/inference.md §3, §4.1) --

    async def inference(self, inference_id: str) -> inference_pb2.Inference:
        """The chain's Inference record (NotFound when it has none)."""
        request = q.QueryGetInferenceRequest(index=inference_id)
        return (await self._ask("Inference", request, q.QueryGetInferenceResponse)).inference

    async def inference_participant(self, address: str) -> q.QueryInferenceParticipantResponse:
        """An account's pubkey (base64 of the 33-byte key) and spendable ngonka balance."""
        request = q.QueryInferenceParticipantRequest(address=address)
        return await self._ask("InferenceParticipant", request, q.QueryInferenceParticipantResponse)

    async def participant(self, address: str) -> participant_pb2.Participant:
        request = q.QueryGetParticipantRequest(index=address)
        return (await self._ask("Participant", request, q.QueryGetParticipantResponse)).participant

    async def random_executor(self, model: str) -> participant_pb2.Participant:
        """The chain's own executor draw (a fallback: the daemon draws from its epoch cache)."""
        request = q.QueryGetRandomExecutorRequest(model=model)
        return (await self._ask("GetRandomExecutor", request, q.QueryGetRandomExecutorResponse)).executor

    async def grantee_pubkeys(self, granter: str, message_type_url: str) -> list[str]:
        """Base64 pubkeys of the accounts `granter` authorised to send `message_type_url` for it."""
        request = q.QueryGranteesByMessageTypeRequest(granter_address=granter, message_type_url=message_type_url)
        response = await self._ask("GranteesByMessageType", request, q.QueryGranteesByMessageTypeResponse)
        return [g.pub_key for g in response.grantees if g.pub_key]

    async def validation_parameters(
        self, inference_ids: list[str], requester: str
    ) -> q.QueryGetInferenceValidationParametersResponse:
        """Validation details of finished inferences, the requester's power and the validation params."""
        request = q.QueryGetInferenceValidationParametersRequest(ids=inference_ids, requester=requester)
        return await self._ask(
            "GetInferenceValidationParameters", request, q.QueryGetInferenceValidationParametersResponse
        )

    async def model_per_token_price(self, model: str) -> int | None:
        """The per-token price the chain would lock for `model` now; None when it has none."""
        request = q.QueryGetModelPerTokenPriceRequest(model_id=model)
        response = await self._ask("GetModelPerTokenPrice", request, q.QueryGetModelPerTokenPriceResponse)
        return response.price if response.found else None

    async def current_epoch(self) -> int:
        """The effective epoch's index."""
        return (await self._ask("GetCurrentEpoch", q.QueryGetCurrentEpochRequest(),
                                q.QueryGetCurrentEpochResponse)).epoch

    async def account(self, address: str) -> auth_pb2.BaseAccount:
        self.calls += 1
        response = await self.transport.unary(
            AUTH_ACCOUNT, auth_query_pb2.QueryAccountRequest(address=address), auth_query_pb2.QueryAccountResponse
        )
        account = auth_pb2.BaseAccount()
        if not response.account.Unpack(account):
            raise ChainBadResponse(f"account {address}: not a BaseAccount ({response.account.type_url})")
        return account

    async def aclose(self) -> None:
        await self.transport.aclose()
