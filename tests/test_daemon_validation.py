"""The daemon validates the inferences the sampling rule gives it, and claims only once they landed.

The real daemon runs against the devnet (50 ms blocks, epochs of 40: PoC at 40/80/120, epoch 1 effective
at 53, its claim at 94, epoch 2's at 134). Traffic: the test acts as client and a peer as Transfer Agent,
another peer executes (tests/validation_traffic.py), so the daemon is one of the executor's validators.
The chain's own claim-time check (`missed_validations`, inference.md §4.5) is the judge of "every required
validation landed".
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from validation_traffic import execute
from waiting import wait_for

from dapi.broker.errors import NoNodeAvailable
from dapi.broker.state import Node
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.devnet.ledger.validations import missed_validations
from dapi.devnet.peers import Misbehaviour
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec
from dapi.gen.cosmos.tx.v1beta1.tx_pb2 import TxBody, TxRaw
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.validation_service import ValidationService
from dapi.testbed.session import DevnetSession

BLOCK = 0.05
EPOCH1_INFERENCE = 56  # epoch 1 effective (53), its models loaded
EPOCH1_CLAIM = 94
EPOCH2_CLAIM = 134


@pytest.fixture
async def session() -> AsyncIterator[DevnetSession]:
    async with DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK) as s:
        yield s


def service(s: DevnetSession) -> ValidationService:
    assert s.daemon.validation is not None
    return s.daemon.validation


async def traffic(s: DevnetSession, requests: int, *, executors: tuple[int, ...] = (0, 1)) -> list[str]:
    peers = s.devnet.genesis.peers
    ids = []
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(requests):
            executor = peers[executors[i % len(executors)]]
            ta = next(p for p in peers if p is not executor)
            ids.append(await execute(s.devnet, http, executor=executor, ta=ta))
    return ids


def own_seed(s: DevnetSession, epoch: int) -> int:
    seed = s.devnet.ledger.state.seeds[(epoch, s.devnet.own.address)]
    assert s.daemon.seeds is not None
    held = s.daemon.seeds.seed_for(epoch)
    assert held is not None and held.signature == seed.signature
    return held.seed


def own_claim(s: DevnetSession, epoch: int) -> list[int]:
    return [c.amount for c in s.devnet.ledger.claims() if c.participant == s.devnet.own.address
            and c.epoch_index == epoch]


async def landed_everything(s: DevnetSession) -> None:
    v = service(s)

    def done() -> bool:
        c = v.counts
        return c["selected"] > 0 and c["pending"] == 0 and c["landed"] == c["selected"]
    await wait_for(done, timeout=60, what=f"every selected validation landed ({v.counts})")


async def test_with_load_over_two_epochs_every_required_validation_lands_and_the_claims_pay(
        session: DevnetSession) -> None:
    s = session
    own = s.devnet.own.address
    await s.devnet.wait_for_height(EPOCH1_INFERENCE)
    first = await traffic(s, 8)
    seeds = {1: own_seed(s, 1)}  # the daemon holds a seed for three epochs; keep it for the chain's check
    await s.devnet.wait_for_height(EPOCH1_CLAIM + 4, timeout=60)  # epoch 2 effective, in Inference
    second = await traffic(s, 8)
    seeds[2] = own_seed(s, 2)
    await landed_everything(s)
    await s.devnet.wait_for_height(EPOCH2_CLAIM + 2, timeout=60)
    await wait_for(lambda: own_claim(s, 2), timeout=30, what="the claim of epoch 2")
    state = s.devnet.ledger.state
    for epoch, ids in ((1, first), (2, second)):
        assert {state.inferences[i].epoch_id for i in ids} == {epoch}
        # The chain's own claim check finds nothing missing, and the chain asked for something.
        assert missed_validations(state, own, epoch, seeds[epoch]) == []
        validated = set(state.epoch_validations.get((epoch, own), ()))
        assert validated and validated <= set(ids)
        assert own_claim(s, epoch) and own_claim(s, epoch)[0] > 0
        report = service(s).epoch_report(epoch) if epoch in service(s).by_epoch else None
        if report is not None:
            assert report["landed"] >= report["required"] > 0 and report["failed"] == 0
    # The daemon reads the claim's answer from its tx result once the tx has landed: wait for that read.
    await wait_for(lambda: (service(s).last_claim or {}).get("epoch") == 2 and service(s).last_claim["code"] == 0,
                   timeout=30, what="the daemon's reading of the claim of epoch 2")
    async with httpx.AsyncClient() as http:
        status = (await http.get(s.public_url + "/v1/status")).json()["components"]["validation"]
        metrics = (await http.get(s.public_url + "/metrics")).text
    assert {k: type(status[k]) for k in ("selected", "pending", "sent", "landed", "failed", "required")} == \
        dict.fromkeys(("selected", "pending", "sent", "landed", "failed", "required"), int)
    assert status["landed"] == status["selected"] == status["sent"] and status["failed"] == 0
    assert status["claim"]["code"] == 0 and status["claim"]["amount"] > 0
    assert status["claim"]["result"] == "Rewards claimed successfully" and status["healthy"] is True
    assert f'dapi_inference_validations{{kind="landed"}} {float(status["landed"])}' in metrics
    assert "dapi_last_claim_paid 1.0" in metrics


def hold_every_node(s: DevnetSession) -> list[Node]:
    """Take every inference slot of every own node, as a flood of requests would."""
    broker = s.daemon.broker
    assert broker is not None
    held = []
    for model in {m for n in s.devnet.own.nodes for m in n.models}:
        while True:
            try:
                held.append(broker.lock_node(model))
            except NoNodeAvailable:
                break
            assert len(held) < 100_000
    assert held
    return held


async def test_validations_wait_for_a_free_node_and_the_claim_waits_for_them(session: DevnetSession) -> None:
    s = session
    own = s.devnet.own.address
    v = service(s)
    await s.devnet.wait_for_height(EPOCH1_INFERENCE)
    held = hold_every_node(s)
    ids = await traffic(s, 8)
    await wait_for(lambda: v.counts["selected"] > 0 and v.counts["waiting_for_node"] > 0, timeout=30,
                   what="validations waiting for a node")
    assert v.validator.no_node_waits > 0
    # Still held through the PoC (only POC_SLOT nodes serve then) and past claim money: nothing was sent,
    # nothing dropped, and the claim of epoch 1 waits instead of going out to be paid nothing.
    # The chain stops right after claim money + 3: with 50 ms blocks the claim's deadline (next PoC start
    # minus a few blocks) is about a second away, less than a busy machine may take to get through the
    # checks below.
    s.devnet.pause_at(EPOCH1_CLAIM + 3)
    await s.devnet.wait_for_height(EPOCH1_CLAIM + 3, timeout=60)
    await wait_for(lambda: v.gate.waiting is not None, timeout=30, what="the claim waiting")
    assert own_claim(s, 1) == []
    assert (1, own) not in s.devnet.ledger.state.epoch_validations
    assert v.counts["sent"] == 0 and v.counts["pending"] == v.counts["selected"] > 0
    status = s.daemon.status()["components"]["validation"]
    assert status["claim_waiting"]["epoch"] == 1 and status["claim_waiting"]["required_pending"] > 0
    broker = s.daemon.broker
    assert broker is not None
    for node in held:
        broker.release_node(node.id)
    # A freed node is used without waiting for a block: the validations are re-run and queued as txs.
    await wait_for(lambda: v.counts["sent"] + v.counts["landed"] == v.counts["selected"], timeout=30,
                   what="the validations sent once a node is free")
    s.devnet.resume_blocks()
    await landed_everything(s)
    await wait_for(lambda: own_claim(s, 1), timeout=30, what="the claim of epoch 1")
    assert own_claim(s, 1)[0] > 0
    assert missed_validations(s.devnet.ledger.state, own, 1, own_seed(s, 1)) == []
    assert set(s.devnet.ledger.state.epoch_validations[(1, own)]) <= set(ids)
    await wait_for(lambda: (v.last_claim or {}).get("amount"), timeout=30, what="the claim's response read")
    assert v.last_claim is not None and v.last_claim["epoch"] == 1 and v.last_claim["forced"] is False
    assert v.claims_forced == 0


async def test_a_wrong_output_peer_is_invalidated_by_the_daemons_validations() -> None:
    wrong = {"peer1": Misbehaviour.of_kinds(["wrong-inference-output"])}
    async with DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK, misbehaviour=wrong) as s:
        peer1 = s.devnet.genesis.peers[0]
        client = s.devnet.genesis.clients[0]
        await s.devnet.wait_for_height(EPOCH1_INFERENCE)
        before = s.devnet.ledger.state.balance(client.address)
        ids = await traffic(s, 6, executors=(0,))
        v = service(s)
        await wait_for(lambda: v.counts["failed"] > 0 and v.counts["pending"] == 0, timeout=60,
                       what="the daemon's validations of the wrong outputs")
        values = {}
        for height in range(1, s.devnet.ledger.height + 1):
            block = s.devnet.ledger.block(height)
            assert block is not None
            for record in block.txs:
                if record.code == 0 and record.signer == s.devnet.own.signer_address:
                    for message in _validations(record.raw):
                        values[message.inference_id] = message.value
        assert values and set(values) <= set(ids)
        assert all(value < 0.98 for value in values.values())  # below the model's threshold
        for inference_id in values:
            assert s.devnet.ledger.state.inferences[inference_id].status is InferenceStatus.INVALIDATED
        assert v.counts["failed"] == len(values)
        assert all(s.devnet.ledger.state.inferences[i].executed_by == peer1.address for i in ids)
        # Every inference was invalidated (by the daemon or the honest peer), so the client paid nothing.
        await wait_for(lambda: all(s.devnet.ledger.state.inferences[i].status is InferenceStatus.INVALIDATED
                                   for i in ids), timeout=30, what="all invalidated")
        assert s.devnet.ledger.state.balance(client.address) == before


def _validations(raw: bytes) -> list[itx.MsgValidation]:
    """The MsgValidations of a tx (inside its MsgExec when the signer acts for the account)."""
    body = TxBody.FromString(TxRaw.FromString(raw).body_bytes)
    found = []
    for packed in body.messages:
        inner = MsgExec.FromString(packed.value).msgs if packed.type_url.endswith("MsgExec") else [packed]
        for any_msg in inner:
            if any_msg.type_url == "/inference.inference.MsgValidation":
                found.append(itx.MsgValidation.FromString(any_msg.value))
    return found
