"""Whole epochs on a running devnet: formation over three epochs checked against the spec's rules (applied by
the test to the chain's stored batches), the chain's rules against a misbehaving peer, an own participant
that joins through its simulated ML nodes, and governance changes that leave formed snapshots alone."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dapi.chain.broadcast import GrpcBroadcaster
from dapi.chain.query import ChainQuery, GrpcTransport
from dapi.chain.rpc import CometRPC
from dapi.chain.tx import TxSigner
from dapi.devnet import SimulatedNetwork
from dapi.gen.inference.inference import hardware_node_pb2
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.mlnodeclient.models import ProofBatch
from dapi.runtime.serving import start_server

# The devnet's default genesis (config/devnet.yaml), by hand: participants own, peer1, peer2; node k of each
# declares node_models[(k-1) mod 2], so node1 and node3 serve Qwen2.5-7B, node2 and node4 QwQ-32B; the models'
# throughput_per_nonce (config/devnet.yaml; mainnet: 10000 and 1000) are 10 and 5. A peer tries 48 + 16·((k-1) mod 3) nonces with
# node k (48, 64, 80, 48) and keeps those below r_target, so a node's weight is at most that.
QWQ, QWEN7 = "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"
DECLARED = {"node1": QWEN7, "node2": QWQ, "node3": QWEN7, "node4": QWQ}
THROUGHPUT_PER_NONCE = {QWQ: 5, QWEN7: 10}
ATTEMPTS = {"node1": 48, "node2": 64, "node3": 80, "node4": 48}
# Settlement (chain-logic.md §13 golden values for initial 323e12, decay -0.000475): n = epoch - genesis_epoch 1.
EPOCH_REWARD = {1: 323_000_000_000_000, 2: 322_846_611_432_668}


@dataclass(frozen=True)
class Node:
    """One ML node of a member, as the epoch's model sub-group on the wire lists it."""

    model: str
    weight: int
    throughput: int
    poc_slot: bool
    allocation: tuple[bool, ...]


def weight_rule(order: Sequence[str], nodes: Mapping[str, Sequence[tuple[str, int]]]) -> dict[str, bool]:
    """DESIGN.md §6's 50% rule, from its text: node id → POC_SLOT, visiting the models in `order`.

    Carry starts at 0. In a model with nodes (in array order) of total positive weight T, nodes are switched
    to mining one by one until switched + carry > T/2; zero-weight nodes always mine and are not in T; the
    overshoot switched + carry - T/2 is carried to the next model.
    """
    carry = Fraction(0)
    slots: dict[str, bool] = {}
    for model in order:
        half = Fraction(sum(w for _, w in nodes[model] if w > 0), 2)
        switched = 0
        for node_id, weight in nodes[model]:
            if weight <= 0:
                slots[node_id] = False
            elif switched + carry > half:
                slots[node_id] = True
            else:
                switched += weight
                slots[node_id] = False
        carry = switched + carry - half
    return slots


async def test_three_epochs_form_from_the_stored_batches_as_the_spec_says(devnet: SimulatedNetwork) -> None:
    genesis = devnet.genesis
    assert [p.name for p in genesis.participants] == ["own", "peer1", "peer2"]
    assert all({n.local_id: n.models[0] for n in p.nodes} == DECLARED for p in genesis.participants)
    # Claim-money of epoch 3 is 134: by then epochs 1 and 2 are settled and claimed.
    await devnet.wait_for_height(135, timeout=60)
    devnet.pause_blocks()
    peers = {p.address: p.name for p in genesis.peers}
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    try:
        previous: dict[str, dict[str, Node]] = {address: {} for address in peers}  # genesis: no allocations
        for epoch in (1, 2, 3):
            stage = 40 * epoch
            parent = await query.epoch_group_data(epoch, "")
            assert parent.poc_start_block_height == stage
            # Both models are served, in id order; no price was proposed, so the params default holds.
            assert list(parent.sub_group_models) == [QWQ, QWEN7]
            assert parent.unit_of_compute_price == 100
            subs = {m: await query.epoch_group_data(epoch, m) for m in parent.sub_group_models}
            # Only the peers are members: no daemon runs for the own participant here.
            assert sorted(vw.member_address for vw in parent.validation_weights) == sorted(peers)

            current: dict[str, dict[str, Node]] = {}
            for address, name in peers.items():
                nodes: dict[str, Node] = {}
                for model, sub in subs.items():
                    mine = [vw for vw in sub.validation_weights if vw.member_address == address]
                    assert len(mine) == 1, (epoch, name, model)
                    for n in mine[0].ml_nodes:
                        assert n.node_id not in nodes, f"{name}: {n.node_id} in two models"
                        nodes[n.node_id] = Node(model, n.poc_weight, n.throughput, tuple(n.timeslot_allocation)[1],
                                                tuple(n.timeslot_allocation))
                    # A member's weight in a sub-group is the weight of its nodes there.
                    assert mine[0].weight == sum(n.poc_weight for n in mine[0].ml_nodes), (epoch, name, model)
                # Every declared node, in the model it declared, with PRE_POC_SLOT set.
                assert {node_id: n.model for node_id, n in nodes.items()} == DECLARED, (epoch, name)
                assert all(n.allocation[0] and len(n.allocation) == 2 for n in nodes.values())

                # Node weight: a node that had POC_SLOT in the previous epoch served instead of mining, mined
                # nothing, and keeps its weight; any other node weighs the nonces of its batches stored for
                # this PoC (one batch per mining node).
                served = {node_id for node_id, n in previous[address].items() if n.poc_slot}
                batches = devnet.ledger.batches(stage, address)
                landed: dict[str, int] = {}
                for b in batches:
                    landed[b.node_id] = landed.get(b.node_id, 0) + len(b.nonces)
                assert len({b.node_id for b in batches}) == len(batches), (epoch, name)
                assert served.isdisjoint(landed), f"{name} mined with a node that served during PoC"
                if epoch == 1:
                    assert set(landed) == set(DECLARED), "every node mines at the first PoC"
                for node_id, n in nodes.items():
                    if node_id in served:
                        assert n.weight == previous[address][node_id].weight, (epoch, name, node_id)
                    else:
                        assert n.weight == landed.get(node_id, 0), (epoch, name, node_id)
                        assert 0 < n.weight <= ATTEMPTS[node_id], (epoch, name, node_id)
                    assert n.throughput == n.weight * THROUGHPUT_PER_NONCE[n.model]
                total = sum(n.weight for n in nodes.values())
                assert next(vw.weight for vw in parent.validation_weights if vw.member_address == address) == total

                # The 50% rule: serving weight strictly below half, and at least half minus the largest node.
                serving = sum(n.weight for n in nodes.values() if n.poc_slot)
                assert 2 * serving < total, (epoch, name)
                assert 2 * serving >= total - 2 * max(n.weight for n in nodes.values()), (epoch, name)
                assert not any(n.poc_slot for n in nodes.values() if n.weight == 0)
                # ... and exactly the rule's choice for one of the two orders in which it may visit the models.
                in_array_order = {
                    model: [(n.node_id, n.poc_weight) for vw in sub.validation_weights
                            if vw.member_address == address for n in vw.ml_nodes]
                    for model, sub in subs.items()
                }
                choices = [weight_rule(order, in_array_order) for order in itertools.permutations(subs)]
                assert {node_id: n.poc_slot for node_id, n in nodes.items()} in choices, (epoch, name)

                # The stored epoch: models[i] ↔ ml_nodes[i] (no overflow list: every node has a governance
                # model), the same nodes and allocations as the wire's sub-groups.
                [stored] = [p for p in devnet.ledger.active_participants(epoch) if p.index == address]
                assert len(stored.models) == len(stored.ml_nodes) == 2
                assert stored.weight == total
                for model, group in zip(stored.models, stored.ml_nodes, strict=True):
                    assert {n.node_id: (n.poc_weight, n.is_active_during_poc) for n in group.ml_nodes} == {
                        node_id: (n.weight, n.poc_slot) for node_id, n in nodes.items() if n.model == model}
                current[address] = nodes

            for model, sub in subs.items():
                assert sub.model_snapshot.id == model
                assert sub.total_weight == sum(vw.weight for vw in sub.validation_weights)
                assert sub.total_throughput == sum(n.throughput for vw in sub.validation_weights for n in vw.ml_nodes)
            assert parent.total_weight == sum(vw.weight for vw in parent.validation_weights)
            # The rule acted: some nodes keep serving during the next PoC, not all.
            slots = [n.poc_slot for nodes in current.values() for n in nodes.values()]
            assert any(slots) and not all(slots)
            previous = current

        # Settlement and claims: each epoch pays exactly its fixed reward; the peers claimed what they were owed.
        for epoch in (1, 2):
            report = devnet.report(epoch)
            assert report is not None
            assert report.epoch_reward == EPOCH_REWARD[epoch]
            assert sum(m.reward or 0 for m in report.members) == EPOCH_REWARD[epoch]
            assert all(m.full_coverage for m in report.members)  # every peer serves both models
            claimed = {c.participant: c.amount for c in devnet.ledger.claims() if c.epoch_index == epoch}
            assert claimed == {m.address: m.reward for m in report.members}
        assert devnet.peers.rejected() == [] and devnet.peers.failed() == []
    finally:
        await query.aclose()
        devnet.resume_blocks()


async def test_the_chain_rules_bite_a_misbehaving_peer(devnet: SimulatedNetwork) -> None:
    genesis = devnet.genesis
    peer1, peer2 = genesis.participant("peer1"), genesis.participant("peer2")
    devnet.set_misbehaving("peer1", mine_with_poc_slot_nodes=True, skip_seed=False)
    devnet.pause_at(95)  # after epoch 2's formation, before epoch 3's PoC
    await devnet.wait_for_height(95, timeout=60)
    devnet.set_misbehaving("peer2", mine_with_poc_slot_nodes=False, skip_seed=True)
    devnet.resume_blocks()
    await devnet.wait_for_formed(3, timeout=60)

    # peer1 mined at epoch 2's PoC (80) with the nodes that had POC_SLOT in epoch 1 ...
    serving = {n.node_id: n.poc_weight for p in devnet.ledger.active_participants(1) if p.index == peer1.address
               for n in p.all_nodes if n.is_active_during_poc}
    mined = {b.node_id: len(b.nonces) for b in devnet.ledger.batches(80, peer1.address)}
    assert serving and set(serving) <= set(mined)
    assert all(mined[node] != weight for node, weight in serving.items())  # the batches would change the weight
    # ... and formation ignored those batches: the nodes kept their preserved weight.
    report2 = devnet.report(2)
    assert report2 is not None
    member = report2.member("peer1")
    assert member is not None
    weights = {n.node_id: n.poc_weight for n in member.nodes}
    assert {node: weights[node] for node in serving} == serving
    # The correct peer2 never mined with its POC_SLOT nodes.
    peer2_serving = {n.node_id for p in devnet.ledger.active_participants(1) if p.index == peer2.address
                     for n in p.all_nodes if n.is_active_during_poc}
    assert peer2_serving.isdisjoint(b.node_id for b in devnet.ledger.batches(80, peer2.address))

    # peer2 skipped its seed for epoch 3: it mined, was validated, and is still not a member.
    report3 = devnet.report(3)
    assert report3 is not None
    assert [m.name for m in report3.members] == ["peer1"]
    assert devnet.ledger.batches(120, peer2.address)
    assert peer2.address not in {s.participant for s in devnet.ledger.seeds(3)}


async def test_own_participant_joins_through_its_sim_ml_nodes() -> None:
    """A minimal daemon: declare hardware, run PoC on the sim ML nodes, submit their batches and a seed."""
    received: asyncio.Queue[ProofBatch] = asyncio.Queue()

    async def generated(request: Request) -> Response:
        received.put_nowait(ProofBatch.model_validate(await request.json()))
        return Response(status_code=200)

    receiver = await start_server(Starlette(routes=[Route("/v1/poc-batches/generated", generated, methods=["POST"])]))
    try:
        async with SimulatedNetwork(block_time=0.05, mlnode_batch_interval=0.05) as devnet:
            own = devnet.own
            query = ChainQuery(GrpcTransport(devnet.grpc_target))
            broadcaster = GrpcBroadcaster(devnet.grpc_target)
            rpc = CometRPC(devnet.rpc_url)
            try:
                account = await query.account(own.signer_address)
                signer = TxSigner(own.signer_key, chain_id=devnet.genesis.chain_id,
                                  account_number=account.account_number, account_address=own.address)
                declared = [
                    hardware_node_pb2.HardwareNode(local_id=n.local_id, status=hardware_node_pb2.INFERENCE,
                                                   models=sorted(n.models), host="127.0.0.1",
                                                   port=str(devnet.mlnodes.port),
                                                   hardware=[hardware_node_pb2.Hardware(type=h.type, count=h.count)
                                                             for h in n.hardware])
                    for n in own.nodes
                ]
                diff = await broadcaster.broadcast(signer.sign([itx.MsgSubmitHardwareDiff(creator=own.address,
                                                                                          newOrModified=declared)]).raw)
                assert diff.code == 0

                devnet.pause_at(40)
                await devnet.wait_for_height(40, timeout=30)
                start = await rpc.block(40)
                seed = 424242
                sent_seed = await broadcaster.broadcast(signer.sign([itx.MsgSubmitSeed(
                    creator=own.address, epoch_index=1,
                    signature=own.signer_key.sign(seed.to_bytes(8, "big", signed=True)).hex())]).raw)
                assert sent_seed.code == 0

                async with httpx.AsyncClient(timeout=10) as http:
                    for number, node in enumerate(own.nodes, start=1):
                        url = devnet.mlnodes.node_url(node.local_id)
                        init = await http.post(url + "/api/v1/pow/init/generate", json={
                            "node_id": number, "node_count": len(own.nodes) + 1, "block_hash": start.hash,
                            "block_height": 40, "public_key": own.hex_pub_key, "batch_size": 100,
                            "r_target": devnet.genesis.peer_behaviour.r_target,
                            "fraud_threshold": devnet.genesis.peer_behaviour.fraud_threshold, "params": {},
                            "url": receiver.url + "/v1/poc-batches",
                        })
                        assert init.status_code == 200
                        assert (await http.get(url + "/api/v1/state")).json()["state"] == "POW"
                        assert (await http.get(url + "/api/v1/pow/status")).json()["status"] == "GENERATING"
                    first: dict[int, ProofBatch] = {}
                    async with asyncio.timeout(20):
                        while len(first) < len(own.nodes):
                            batch = await received.get()
                            first.setdefault(batch.node_id, batch)
                    for node in own.nodes:
                        await http.post(devnet.mlnodes.node_url(node.local_id) + "/api/v1/stop")
                        assert (await http.get(devnet.mlnodes.node_url(node.local_id) + "/api/v1/state")).json()[
                            "state"] == "STOPPED"

                for number, batch in sorted(first.items()):
                    assert batch.block_hash == start.hash and batch.public_key == own.hex_pub_key
                    sent = await broadcaster.broadcast(signer.sign([itx.MsgSubmitPocBatch(
                        creator=own.address, poc_stage_start_block_height=40, batch_id=f"own-{number}",
                        nonces=batch.nonces, dist=batch.dist, node_id=own.nodes[number - 1].local_id)]).raw)
                    assert sent.code == 0
                devnet.resume_blocks()
                report = await devnet.wait_for_formed(1, timeout=30)
            finally:
                await rpc.aclose()
                await broadcaster.aclose()
                await query.aclose()

            member = report.member("own")
            assert member is not None
            assert {n.node_id: n.poc_weight for n in member.nodes} == {
                own.nodes[number - 1].local_id: len(batch.nonces) for number, batch in first.items()
            }
            # Every peer checked the own batches with the same simulated PoW and found them honest.
            votes = devnet.ledger.validations(40, own.address)
            assert {v.validator_participant_address for v in votes} == {p.address for p in devnet.genesis.peers}
            assert not any(v.fraud_detected for v in votes)
            groups = devnet.ledger.epoch_groups(1)
            assert groups is not None
            for sub in groups[1]:
                mine = sub.weight_of(own.address)
                assert mine is not None and {n.node_id for n in mine.ml_nodes} == {
                    n.local_id for n in own.nodes if sub.model_id in n.models}
    finally:
        await receiver.stop()


async def test_a_governance_change_mid_epoch_leaves_the_formed_snapshot_alone(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_epoch(1, timeout=60)
    original = devnet.genesis.models[0]
    changed = dataclasses.replace(original, model_args=("--tensor-parallel-size", "2"), v_ram=96)
    devnet.set_governance_model(changed)
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    try:
        governance = {m.id: m for m in await query.models_all()}
        assert list(governance[original.id].model_args) == ["--tensor-parallel-size", "2"]
        epoch1 = await query.epoch_group_data(1, original.id)
        assert list(epoch1.model_snapshot.model_args) == list(original.model_args)
        assert epoch1.model_snapshot.v_ram == original.v_ram
        await devnet.wait_for_formed(2, timeout=60)
        epoch2 = await query.epoch_group_data(2, original.id)
        assert list(epoch2.model_snapshot.model_args) == ["--tensor-parallel-size", "2"]
        assert (await query.epoch_group_data(1, original.id)).model_snapshot == epoch1.model_snapshot
    finally:
        await query.aclose()
