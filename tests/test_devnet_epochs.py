"""Whole epochs on a running devnet: formation over three epochs against the schedule logic recomputed
from what the wire serves, the chain's rules against a misbehaving peer, an own participant that joins
through its simulated ML nodes, and governance changes that leave formed snapshots alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dapi.chain.broadcast import GrpcBroadcaster
from dapi.chain.query import ChainQuery, GrpcTransport
from dapi.chain.rpc import CometRPC
from dapi.chain.tx import TxSigner
from dapi.devnet import SimulatedNetwork
from dapi.devnet.schedule.formation import FormationInput, form_epoch
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    EpochGroupData,
    HardwareNodes,
    MLNodeInfo,
    ModelMLNodes,
    ParticipantRecord,
    PoCBatch,
)
from dapi.devnet.schedule.settlement import fixed_epoch_reward
from dapi.devnet.wire.convert import hardware_node_from_proto
from dapi.gen.inference.inference import epoch_group_data_pb2, hardware_node_pb2
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.mlnodeclient.models import ProofBatch
from dapi.runtime.serving import start_server

BLOCK_TIME = 0.02


@pytest.fixture
async def devnet() -> AsyncIterator[SimulatedNetwork]:
    async with SimulatedNetwork(block_time=BLOCK_TIME) as running:
        yield running


def _ml_nodes(nodes: object) -> tuple[MLNodeInfo, ...]:
    return tuple(
        MLNodeInfo(node_id=n.node_id, throughput=n.throughput, poc_weight=n.poc_weight,
                   timeslot_allocation=tuple(n.timeslot_allocation))
        for n in nodes  # type: ignore[attr-defined]
    )


async def _members_from_wire(query: ChainQuery, epoch: int) -> tuple[ActiveParticipant, ...]:
    """An epoch's active participants as the groups on the wire describe them (models ↔ node lists)."""
    parent = await query.epoch_group_data(epoch, "")
    subs = [await query.epoch_group_data(epoch, m) for m in parent.sub_group_models]
    members = []
    for vw in parent.validation_weights:
        models, lists = [], []
        for sub in subs:
            mine = [w for w in sub.validation_weights if w.member_address == vw.member_address]
            if mine:
                models.append(sub.model_id)
                lists.append(ModelMLNodes(ml_nodes=_ml_nodes(mine[0].ml_nodes)))
        members.append(ActiveParticipant(index=vw.member_address, weight=vw.weight, models=tuple(models),
                                         ml_nodes=tuple(lists)))
    return tuple(members)


def _shape(parent: EpochGroupData | epoch_group_data_pb2.EpochGroupData,
           subs: list[EpochGroupData] | list[epoch_group_data_pb2.EpochGroupData]) -> object:
    """What formation decides, comparable between records and protobuf messages."""
    return (
        sorted((vw.member_address, vw.weight) for vw in parent.validation_weights),
        parent.total_weight,
        sorted(parent.sub_group_models),
        sorted(
            (
                sub.model_id,
                sub.model_snapshot.id,
                sub.total_weight,
                sub.total_throughput,
                sorted(
                    (vw.member_address, vw.weight,
                     tuple((n.node_id, n.poc_weight, n.throughput, tuple(n.timeslot_allocation)) for n in vw.ml_nodes))
                    for vw in sub.validation_weights
                ),
            )
            for sub in subs
        ),
    )


async def test_three_epochs_form_as_the_schedule_logic_computes_from_the_same_inputs(devnet: SimulatedNetwork) -> None:
    # Claim-money of epoch 3 is 134: by then epochs 1 and 2 are settled and claimed.
    await devnet.wait_for_height(135, timeout=60)
    devnet.pause_blocks()
    genesis = devnet.genesis
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    try:
        registry = ModelRegistry.of(genesis.models)
        assert [m.id for m in await query.models_all()] == list(registry.ids)
        records = {p.address: ParticipantRecord(address=p.address, validator_key=p.validator_key,
                                                inference_url=p.inference_url) for p in genesis.participants}
        hardware = {}
        for p in genesis.participants:
            wire = await query.hardware_nodes(p.address)
            if wire.hardware_nodes:
                hardware[p.address] = _hardware_record(wire)
        params = (await query.params()).epoch_params
        previous: tuple[ActiveParticipant, ...] = ()
        for epoch in (1, 2, 3):
            parent = await query.epoch_group_data(epoch, "")
            subs = [await query.epoch_group_data(epoch, m) for m in parent.sub_group_models]
            stage = parent.poc_start_block_height
            before = await query.epoch_group_data(epoch - 1, "")
            batches = [
                PoCBatch(participant_address=b.participant_address, poc_stage_start_block_height=b.poc_stage_start_block_height,
                         received_at_block_height=b.received_at_block_height, nonces=tuple(b.nonces), dist=tuple(b.dist),
                         batch_id=b.batch_id, node_id=b.node_id)
                for group in await query.poc_batches_for_stage(stage) for b in group.poc_batch
            ]
            expected = form_epoch(FormationInput(
                epoch_index=epoch,
                poc_start_block_height=stage,
                registry=registry,
                participants=records,
                hardware=hardware,
                batches=batches,
                validations=devnet.ledger.validations(stage),
                validator_weights={vw.member_address: vw.weight for vw in before.validation_weights},
                seeds={s.participant: s for s in devnet.ledger.seeds(epoch)},
                previous=previous,
                default_unit_of_compute_price=(before.unit_of_compute_price if epoch > 1
                                               else params.default_unit_of_compute_price),
            ))
            assert _shape(parent, subs) == _shape(expected.parent, list(expected.sub_groups))
            assert parent.unit_of_compute_price == expected.parent.unit_of_compute_price
            # Several members, both models served, and the POC_SLOT rule acting on real weights.
            assert len(parent.validation_weights) >= 2 and len(subs) == 2
            slots = [n.timeslot_allocation[1] for sub in subs for vw in sub.validation_weights for n in vw.ml_nodes]
            assert any(slots) and not all(slots)
            assert devnet.own.address not in {vw.member_address for vw in parent.validation_weights}  # no daemon
            previous = await _members_from_wire(query, epoch)

        # Settlement and claims: each epoch pays exactly its fixed reward; the peers claimed what they were owed.
        for epoch in (1, 2):
            report = devnet.report(epoch)
            assert report is not None
            reward = fixed_epoch_reward(genesis.rewards.initial_epoch_reward, genesis.rewards.decay_rate,
                                        epoch - genesis.rewards.genesis_epoch)
            assert report.epoch_reward == reward
            assert sum(m.reward or 0 for m in report.members) == reward
            assert all(m.full_coverage for m in report.members)  # every peer serves both models
            claimed = {c.participant: c.amount for c in devnet.ledger.claims() if c.epoch_index == epoch}
            assert claimed == {m.address: m.reward for m in report.members}
        assert devnet.peers.rejected() == [] and devnet.peers.failed() == []
    finally:
        await query.aclose()
        devnet.resume_blocks()


def _hardware_record(wire: hardware_node_pb2.HardwareNodes) -> HardwareNodes:
    return HardwareNodes(participant=wire.participant,
                         hardware_nodes=tuple(hardware_node_from_proto(n) for n in wire.hardware_nodes))


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
