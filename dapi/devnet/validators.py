"""Simulated peers as validators of each other's inferences (reference/inference.md §4.1-§4.3).

After every block, each `inference_finished` event of the block is considered by every peer:

1. sampling (§4.1): a peer never validates its own inference, only while it is a member of the effective
   epoch's parent group, and only when `ShouldValidate` says so under its seed of the effective epoch.
   The node's view (`validator_power` from the parent group, total and executor power from the
   inference's validation details) is what §4.1 prescribes; the chain's claim-time view (§4.5: the
   model sub-group's weights) is checked as well, and either one selecting the inference is enough, so
   a claim never misses a validation the chain requires (extra validations are harmless);
2. re-run (§4.2): the stored prompt payload forced along the executor's text (`enforced_str`) on one of
   the peer's own sim ML nodes serving the model; no node serving it means no MsgValidation, as the
   reference's `ModelNotSupported` bug;
3. compare the logprobs (`dapi.inference.comparison.compare_logits`) and submit MsgValidation (§4.3).

A peer whose executor serves a wrong model (`Misbehaviour.wrong_inference_output`) validates with the
same wrong nodes: like a real participant running the wrong weights, it would fail honest inferences too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx

from dapi.devnet.genesis import DevnetGenesis, ParticipantSpec
from dapi.devnet.ledger import Block, Ledger
from dapi.devnet.ledger.inferences import Inference, InferenceStatus, ValidationDetails
from dapi.devnet.ledger.validations import sampling_params
from dapi.devnet.mlnode import SimMLNodeServer, SimNode
from dapi.devnet.peers import PeerSimulator
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.comparison import (
    ComparisonError,
    compare_logits,
    executor_text,
    logprob_list,
    response_bodies,
    response_hash,
    validation_request,
)
from dapi.inference.request_body import decode_go, go_marshal
from dapi.inference.sampling import should_validate
from dapi.logs import get_logger
from dapi.runtime.tasks import TaskOwner

__all__ = ["PeerValidators", "SentValidation", "least_busy"]

log = get_logger(__name__)


def least_busy(nodes: Iterable[SimNode], model: object) -> SimNode | None:
    """The least busy of `nodes` serving `model`, or None when none serves it."""
    serving = [n for n in nodes if n.inference_ready and n.model == model]
    return min(serving, key=lambda n: n.capacity.in_flight, default=None)


@dataclass(frozen=True, slots=True)
class SentValidation:
    """A MsgValidation a peer submitted: for which inference, with which value, and CheckTx's code."""

    peer: str
    inference_id: str
    value: float
    code: int


class PeerValidators:
    """The simulated peers' validator side: sampling, the enforced re-run on their sim ML nodes, MsgValidation.

    `PeerExecutors` owns it: it starts and stops it and calls `on_block` after every block.
    """

    def __init__(self, ledger: Ledger, genesis: DevnetGenesis, peers: PeerSimulator, mlnodes: SimMLNodeServer,
                 *, nodes: Callable[[str], Mapping[str, SimNode]]) -> None:
        self.ledger = ledger
        self.genesis = genesis
        self.peers = peers
        self.mlnodes = mlnodes
        self._nodes = nodes  # peer -> its sim ML nodes by local id
        self._specs = {spec.name: spec for spec in genesis.peers}
        self.sent: list[SentValidation] = []
        self._http: httpx.AsyncClient | None = None
        self._tasks = TaskOwner("devnet-validators")

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()

    # --- sampling ---

    def on_block(self, block: Block) -> None:
        finished = [dict(event.attributes).get("inference_id", "")
                    for tx in block.txs if tx.ok for event in tx.events if event.type == "inference_finished"]
        for inference_id in filter(None, finished):
            for name, spec in self._specs.items():
                if self.must_validate(spec, inference_id):
                    self._tasks.spawn(self._validate(spec, inference_id), f"validate-{name}-{inference_id[:8]}")

    def _details(self, inference_id: str) -> ValidationDetails | None:
        state = self.ledger.state
        effective = state.effective_epoch().index
        for epoch in (effective, effective - 1):  # as GetInferenceValidationParameters looks them up
            found = state.validation_details.get((epoch, inference_id))
            if found is not None:
                return found
        return None

    def must_validate(self, spec: ParticipantSpec, inference_id: str) -> bool:
        """Whether the peer validates the inference now (§4.1, and the claim-time view of §4.5)."""
        details = self._details(inference_id)
        if details is None or details.executor_id == spec.address:
            return False
        state = self.ledger.state
        effective = state.effective_epoch().index
        parent = state.groups.get((effective, ""))
        member = parent.weight_of(spec.address) if parent is not None else None
        seed = self.peers.seed(spec.name, effective)
        if member is None or seed is None:
            return False
        params = sampling_params(state)
        views = []
        if details.total_power > details.executor_power:
            views.append((details.total_power, max(member.weight, 0), details.executor_power))
        groups = state.epoch_groups(details.epoch_id)
        sub = next((g for g in groups[1] if g.model_id == details.model), None) if groups is not None else None
        if sub is not None:
            validator, executor = sub.weight_of(spec.address), sub.weight_of(details.executor_id)
            if validator is not None and executor is not None:
                total = sum(w.weight for w in sub.validation_weights)
                views.append((total, validator.weight, executor.weight))
        return any(
            should_validate(seed=seed, inference_id=inference_id, traffic_basis=details.traffic_basis,
                            executor_reputation=details.executor_reputation, total_power=total,
                            validator_power=validator_power, executor_power=executor_power, params=params)
            for total, validator_power, executor_power in views
        )

    # --- re-run and MsgValidation ---

    async def _validate(self, spec: ParticipantSpec, inference_id: str) -> None:
        inference = self.ledger.state.inferences.get(inference_id)
        if inference is None or inference.status is InferenceStatus.STARTED:
            return
        node = least_busy(self._nodes(spec.name).values(), inference.model)
        if node is None:  # ModelNotSupported: the reference sends nothing (§4.3)
            log.warning("devnet validator has no node for the model", peer=spec.name, model=inference.model)
            return
        try:
            value, raw = await self._rerun(node, inference)
        except (ComparisonError, httpx.HTTPError) as exc:
            log.warning("devnet validator sends no validation", peer=spec.name, inference_id=inference_id,
                        error=str(exc))
            return
        message = itx.MsgValidation(
            creator=spec.address, id=str(uuid.uuid4()), inference_id=inference_id,
            response_payload=raw.decode("utf-8", errors="replace"), response_hash=response_hash(decode_go(raw)),
            value=value, revalidation=False,
        )
        result = self.peers.submit(spec.name, "validation", message)
        self.sent.append(SentValidation(spec.name, inference_id, value, result.code))

    async def _rerun(self, node: SimNode, inference: Inference) -> tuple[float, bytes]:
        """The enforced re-run's similarity to the original, and its raw HTTP body (§4.2)."""
        assert self._http is not None
        text = executor_text(inference.response_payload)
        request = validation_request(inference.prompt_payload, text)
        reply = await self._http.post(self.mlnodes.node_url(node.name) + "/v1/chat/completions",
                                      content=go_marshal(request), headers={"Content-Type": "application/json"})
        raw = reply.content  # the status is not checked (§4.2 step 3)
        try:
            body = decode_go(raw)
        except ValueError as exc:
            raise ComparisonError(f"validation answer is not JSON: {exc}") from None
        original = logprob_list(response_bodies(inference.response_payload))
        validation = logprob_list([body])
        if not original or not validation:
            raise ComparisonError("no logprobs to compare")
        return compare_logits(original, validation), raw
