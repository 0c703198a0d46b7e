"""The inference path's queries (DESIGN.md §4.4, reference/inference.md §3, chain-io.md §3), from the ledger.

`InferenceQueries.routes()` gives the `QueryRouter` its handlers for: Inference, Participant,
ParticipantAll, InferenceParticipant, GranteesByMessageType, GetRandomExecutor,
GetInferenceValidationParameters, GetCurrentEpoch and GetModelPerTokenPrice. `active_participants_value`
answers the raw store key the reference's `/v1/epochs/{n}/participants` reads
(`ActiveParticipants/value/<epoch as 8 big-endian bytes>/` in store "inference", an ABCI
`/store/inference/key` query).

GetRandomExecutor draws with the router's own generator, seeded once (by default from sha256 of
"<chain id>/executor-draw"), so a run of the same queries gives the same executors; the chain itself
uses Go's global math/rand, unseeded per node.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable

import grpc
from google.protobuf.message import Message

from dapi.chain.store import ACTIVE_PARTICIPANTS_PREFIX
from dapi.devnet.ledger import Ledger, valid_address
from dapi.devnet.ledger.context import live_grantees
from dapi.devnet.ledger.executors import ExecutorUnavailable, draw, executor_candidates
from dapi.devnet.wire.convert import (
    active_participants_to_proto,
    inference_to_proto,
    participant_to_proto,
    validation_details_to_proto,
    validation_params_to_proto,
)
from dapi.gen.cosmos.base.query.v1beta1 import pagination_pb2
from dapi.gen.inference.inference import participant_pb2
from dapi.gen.inference.inference import query_pb2 as q

__all__ = ["InferenceQueries"]
DEFAULT_PAGE_LIMIT = 100  # the Cosmos SDK's default page size

Handler = Callable[[Message, int | None], Message]


def draw_seed(chain_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{chain_id}/executor-draw".encode()).digest()[:8], "big")


class InferenceQueries:
    """Query handlers of the inference path; `error` builds the router's QueryError (status, message)."""

    def __init__(self, ledger: Ledger, error: Callable[[grpc.StatusCode, str], Exception], *,
                 executor_seed: int | None = None) -> None:
        self.ledger = ledger
        self._error = error
        self.rng = random.Random(draw_seed(ledger.chain_id) if executor_seed is None else executor_seed)

    def routes(self, prefix: str) -> dict[str, tuple[type[Message], Handler]]:
        return {
            prefix + "Inference": (q.QueryGetInferenceRequest, self._inference),
            prefix + "Participant": (q.QueryGetParticipantRequest, self._participant),
            prefix + "ParticipantAll": (q.QueryAllParticipantRequest, self._participant_all),
            prefix + "InferenceParticipant": (q.QueryInferenceParticipantRequest, self._inference_participant),
            prefix + "GranteesByMessageType": (q.QueryGranteesByMessageTypeRequest, self._grantees),
            prefix + "GetRandomExecutor": (q.QueryGetRandomExecutorRequest, self._random_executor),
            prefix + "GetInferenceValidationParameters": (
                q.QueryGetInferenceValidationParametersRequest, self._validation_parameters,
            ),
            prefix + "GetCurrentEpoch": (q.QueryGetCurrentEpochRequest, self._current_epoch),
            prefix + "GetModelPerTokenPrice": (q.QueryGetModelPerTokenPriceRequest, self._model_price),
        }

    def _height(self, height: int | None) -> int:
        return self.ledger.height if height is None else height

    def participant(self, address: str, height: int | None = None) -> participant_pb2.Participant:
        state = self.ledger.state
        record = state.participants[address]
        effective = state.effective_epoch(height)
        parent = state.groups.get((effective.index, ""), height)
        member = parent.weight_of(address) if parent is not None else None
        return participant_to_proto(record, state.work_of(address), member.weight if member is not None else 0)

    # --- handlers ---

    def _inference(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetInferenceRequest)
        inference = self.ledger.state.inferences.get(request.index)
        if inference is None:
            raise self._error(grpc.StatusCode.NOT_FOUND, f"inference {request.index!r} not found")
        return q.QueryGetInferenceResponse(inference=inference_to_proto(inference))

    def _participant(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetParticipantRequest)
        if request.index not in self.ledger.state.participants:
            raise self._error(grpc.StatusCode.NOT_FOUND, f"participant {request.index!r} not found")
        return q.QueryGetParticipantResponse(participant=self.participant(request.index, height))

    def _participant_all(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryAllParticipantRequest)
        page = request.pagination
        addresses = sorted(self.ledger.state.participants)
        if page.reverse:
            addresses.reverse()
        start = page.offset
        if page.key:
            key = page.key.decode(errors="replace")
            start = next((i for i, a in enumerate(addresses) if (a <= key if page.reverse else a >= key)),
                         len(addresses))
        limit = page.limit or DEFAULT_PAGE_LIMIT
        chosen = addresses[start:start + limit]
        rest = addresses[start + limit:]
        return q.QueryAllParticipantResponse(
            participant=[self.participant(a, height) for a in chosen],
            pagination=pagination_pb2.PageResponse(
                next_key=rest[0].encode() if rest else b"",
                total=len(addresses) if page.count_total else 0,
            ),
            block_height=self._height(height),
        )

    def _inference_participant(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryInferenceParticipantRequest)
        if not valid_address(request.address):
            raise self._error(grpc.StatusCode.INVALID_ARGUMENT, "invalid address")
        account = self.ledger.account(request.address)
        if account is None:
            raise self._error(grpc.StatusCode.NOT_FOUND, "account not found")
        return q.QueryInferenceParticipantResponse(
            pubkey=base64.b64encode(account.public_key).decode(),
            balance=self.ledger.state.balance(request.address),
        )

    def _grantees(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGranteesByMessageTypeRequest)
        if not valid_address(request.granter_address):
            raise self._error(grpc.StatusCode.INVALID_ARGUMENT, "invalid granter address")
        grantees = []
        for grantee in live_grantees(self.ledger.grants, request.granter_address, request.message_type_url,
                                     self.ledger.now_ns()):
            account = self.ledger.account(grantee)
            pub_key = base64.b64encode(account.public_key).decode() if account is not None else ""
            grantees.append(q.Grantee(address=grantee, pub_key=pub_key))
        return q.QueryGranteesByMessageTypeResponse(grantees=grantees)

    def _random_executor(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetRandomExecutorRequest)
        at = self._height(height)
        try:
            address = draw(executor_candidates(self.ledger.state, request.model, at), self.rng)
        except ExecutorUnavailable as exc:
            status = grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.INTERNAL
            raise self._error(status, exc.message) from None
        if address not in self.ledger.state.participants:
            raise self._error(grpc.StatusCode.INTERNAL, f"participant {address} not found")
        return q.QueryGetRandomExecutorResponse(executor=self.participant(address, height))

    def _validation_parameters(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetInferenceValidationParametersRequest)
        state = self.ledger.state
        effective = state.effective_epoch(height)
        details = []
        for inference_id in request.ids:
            # The effective epoch first, then the previous one; ids found in neither are dropped.
            for epoch in (effective.index, effective.index - 1):
                found = state.validation_details.get((epoch, inference_id))
                if found is not None:
                    details.append(validation_details_to_proto(found))
                    break
        parent = state.groups.get((effective.index, ""), height)
        member = parent.weight_of(request.requester) if parent is not None else None
        return q.QueryGetInferenceValidationParametersResponse(
            validator_power=max(member.weight, 0) if member is not None else 0,
            current_height=self._height(height),
            details=details,
            parameters=validation_params_to_proto(self.ledger.genesis),
        )

    def _current_epoch(self, request: Message, height: int | None) -> Message:
        return q.QueryGetCurrentEpochResponse(epoch=self.ledger.effective_epoch(height).index)

    def _model_price(self, request: Message, height: int | None) -> Message:
        assert isinstance(request, q.QueryGetModelPerTokenPriceRequest)
        price = self.ledger.state.model_prices.get(request.model_id)
        return q.QueryGetModelPerTokenPriceResponse(price=price or 0, found=price is not None)

    # --- raw store ---

    def active_participants_value(self, key: bytes, height: int | None) -> bytes:
        """The stored ActiveParticipants of an epoch (empty when the key names none, as a store answers)."""
        if not key.startswith(ACTIVE_PARTICIPANTS_PREFIX) or len(key) != len(ACTIVE_PARTICIPANTS_PREFIX) + 9:
            return b""
        if key[-1:] != b"/":
            return b""
        epoch_index = int.from_bytes(key[len(ACTIVE_PARTICIPANTS_PREFIX):-1], "big")
        state = self.ledger.state
        report = state.reports.get(epoch_index)
        epoch = state.epochs.get(epoch_index)
        if report is None or epoch is None or (height is not None and height < report.formed_at_height):
            return b""
        parent = state.groups.get((epoch_index, ""))
        switched = report.effective_at_height or 0
        if height is not None and height < switched:
            switched = 0
        return active_participants_to_proto(
            state.active.get(epoch_index, ()),
            epoch_id=epoch_index,
            epoch_group_id=parent.epoch_group_id if parent is not None else 0,
            poc_start_block_height=epoch.poc_start_block_height,
            effective_block_height=switched,
            created_at_block_height=report.formed_at_height,
        ).SerializeToString()
