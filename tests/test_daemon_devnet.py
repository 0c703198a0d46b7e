"""The daemon against the devnet chain over the real wire: catch-up, transitions, seeds, validation.

Every test runs the real daemon in-process against a devnet with 50 ms blocks (epochs of 40 blocks:
PoC at 40, end of generation 46, validation 47-50, end of validation 51, set new validators 53, claim 54).
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from waiting import wait_for

from dapi.chain.epochs import EpochContext, Phase
from dapi.daemon import Daemon
from dapi.devnet.daemon_config import DaemonPorts
from dapi.poc.validation import sample_indices, sample_seed
from dapi.testbed.session import DevnetSession

BLOCK = 0.05


@pytest.fixture
async def session() -> AsyncIterator[DevnetSession]:
    async with DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK) as s:
        yield s


def context(s: DevnetSession, epoch: int) -> EpochContext:
    params = s.devnet.genesis.epoch_params
    return EpochContext(epoch, epoch * params.epoch_length, params)


async def daemon_at(s: DevnetSession, height: int, timeout: float = 30.0) -> None:
    await s.devnet.wait_until(lambda: bool(s.daemon.follower and (s.daemon.follower.last_height or 0) >= height),
                              timeout=timeout, what=f"daemon at height {height}")


async def test_missed_boundaries_are_replayed_in_order_after_an_outage(session: DevnetSession) -> None:
    s = session
    ctx = context(s, 1)
    daemon = s.daemon
    assert daemon.subscription is not None and daemon.dispatcher is not None and daemon.follower is not None
    await daemon_at(s, ctx.start_of_poc + 1)
    # The websocket goes away during PoC generation and stays away past the end of validation.
    await daemon.subscription.stop()
    await s.devnet.wait_for_height(ctx.set_new_validators + 1)
    daemon.subscription.start()
    await daemon_at(s, ctx.set_new_validators + 3)
    # A plain drop as well: the subscription reconnects by itself.
    subscription = daemon.subscription
    connects = subscription.connects
    await s.devnet.drop_websockets()
    await s.devnet.wait_until(lambda: subscription.connects > connects, timeout=30, what="reconnect")
    await daemon_at(s, ctx.set_new_validators + 10)

    heights = [h for h, _, _ in daemon.dispatcher.recent]
    assert heights == list(range(heights[0], heights[-1] + 1))  # each once, in order, no gap
    replayed = [h for h, _, r in daemon.dispatcher.recent if r]
    assert ctx.end_of_poc_generation in replayed and ctx.end_of_poc_validation in replayed
    # The phase of every height is the chain's phase of that height.
    for height, phase, _ in daemon.dispatcher.recent:
        latest = s.devnet.ledger.latest_epoch(height)
        chain_phase = EpochContext(latest.index, latest.poc_start_block_height, s.devnet.genesis.epoch_params).phase_at(height)
        assert phase == chain_phase, height
    transitions = dict((h, what) for h, what in daemon.dispatcher.transitions)
    assert transitions[ctx.end_of_poc_generation] == "end of PoC generation"
    assert transitions[ctx.end_of_poc_validation] == "end of PoC validation"
    # The replayed boundaries still issued their broker commands, in the phase of their own height.
    commands = {(h, name): ok for h, name, ok in daemon.dispatcher.commands}
    assert commands[(ctx.end_of_poc_generation, "InitValidate")] is True
    assert commands[(ctx.end_of_poc_validation, "InferenceUpAll")] is True
    # The start of validation was replayed after its window had closed at the tip: no sample was sent
    # (the validations would only be rejected). Batches the ML nodes generated during the outage, when
    # no one could tell them PoC was over, were rejected as late and are dead-lettered with the code.
    for node in s.devnet.own.nodes:
        assert not [c for c in s.devnet.mlnodes.calls(node.local_id) if c.path.endswith("/pow/validate")]
    assert daemon.outbox is not None
    dead = await daemon.outbox.dead_letters()
    assert all(d.type_url == "/inference.inference.MsgSubmitPocBatch" and d.stage == "deliver" for d in dead)
    await s.devnet.wait_until(
        lambda: all(s.devnet.mlnodes.node(n.local_id).state.value == "INFERENCE" for n in s.devnet.own.nodes),
        timeout=30, what="every own node serving inference")


async def test_seeds_are_submitted_rotated_and_each_epoch_claimed_once(session: DevnetSession) -> None:
    s = session
    await s.devnet.wait_for_height(context(s, 3).claim_money + 1, timeout=60)
    await daemon_at(s, context(s, 3).claim_money + 1)
    own = s.devnet.own.address
    for epoch in (1, 2, 3):
        seeds = [seed for seed in s.devnet.ledger.seeds(epoch) if seed.participant == own]
        assert len(seeds) == 1, epoch
    assert s.daemon.seeds is not None and s.daemon.seeds.current is not None
    assert s.daemon.seeds.current.epoch_index == 3 and s.daemon.seeds.previous.epoch_index == 2  # type: ignore[union-attr]
    await s.devnet.wait_until(lambda: len([c for c in s.devnet.ledger.claims() if c.participant == own]) >= 2,
                              timeout=30, what="claims landed")
    claims = [c.epoch_index for c in s.devnet.ledger.claims() if c.participant == own]
    assert sorted(claims) == sorted(set(claims)) and {1, 2} <= set(claims)


async def test_batch_validation_reaches_only_validating_nodes_with_a_deterministic_sample(session: DevnetSession) -> None:
    s = session
    ctx = context(s, 2)  # epoch 2: the first PoC with POC_SLOT allocations from epoch 1
    await s.devnet.wait_for_height(ctx.end_of_poc_validation + 1, timeout=60)
    await daemon_at(s, ctx.end_of_poc_validation + 1)
    report = s.devnet.report(1)
    assert report is not None
    member = report.member(s.devnet.own.address)
    assert member is not None
    poc_slot = {n.node_id: n.poc_slot for n in member.nodes}
    sent: dict[str, list[dict]] = {}
    for node in s.devnet.own.nodes:
        calls = [c for c in s.devnet.mlnodes.calls(node.local_id)
                 if c.path.endswith("/pow/validate") and c.json["block_height"] == ctx.start_of_poc]
        sent[node.local_id] = [c.json for c in calls]
        if poc_slot.get(node.local_id):
            assert calls == [], f"{node.local_id} serves inference during PoC and must not validate"
    bodies = [b for bs in sent.values() for b in bs]
    assert bodies, "no samples were validated"
    block_hash = s.devnet.ledger.block(ctx.start_of_poc).hash  # type: ignore[union-attr]
    seed = sample_seed(s.daemon.identity.pubkey_hex, block_hash, ctx.start_of_poc)
    groups = {g.hex_pub_key: g for g in await s.daemon.chain.query.poc_batches_for_stage(ctx.start_of_poc)}  # type: ignore[union-attr]
    for body in bodies:
        group = groups[body["public_key"]]
        nonces = [n for b in group.poc_batch for n in b.nonces]
        expected = [nonces[i] for i in sample_indices(len(nonces), 200, seed)]
        assert body["nonces"] == expected and body["block_hash"] == block_hash


async def test_governance_change_shows_in_governance_models_not_in_models_until_formation(session: DevnetSession) -> None:
    s = session
    ctx = context(s, 1)
    await daemon_at(s, ctx.set_new_validators + 1)
    async with httpx.AsyncClient(base_url=s.public_url, timeout=10) as client:
        before = (await client.get("/v1/models")).json()["models"]
        assert before
        changed = s.devnet.genesis.models[0]
        import dataclasses

        bumped = dataclasses.replace(changed, units_of_compute_per_token=changed.units_of_compute_per_token + 7)
        s.devnet.set_governance_model(bumped)
        # The governance view follows within a hardware-sync tick; the epoch's snapshot does not move.
        async def governance_has_it() -> bool:
            models = (await client.get("/v1/governance/models")).json()["models"]
            return any(m["id"] == bumped.id and m["units_of_compute_per_token"] == bumped.units_of_compute_per_token
                       for m in models)

        for _ in range(300):
            if await governance_has_it():
                break
            await s.devnet.wait_for_height(s.devnet.ledger.height + 1)
        assert await governance_has_it()
        assert (await client.get("/v1/models")).json()["models"] == before
        # The next formation snapshots the new value; it is served from that epoch's switch on.
        ctx2 = context(s, 2)
        await s.devnet.wait_for_height(ctx2.set_new_validators + 1, timeout=60)
        await daemon_at(s, ctx2.set_new_validators + 1)
        after = (await client.get("/v1/models")).json()["models"]
        served = {m["id"]: m["units_of_compute_per_token"] for m in after}
        assert served[bumped.id] == bumped.units_of_compute_per_token


async def test_phase_of_status_and_epoch_endpoint_follow_the_chain(session: DevnetSession) -> None:
    s = session
    ctx = context(s, 1)
    await daemon_at(s, ctx.start_of_poc + 1)
    async with httpx.AsyncClient(base_url=s.public_url, timeout=10) as client:
        epoch = (await client.get("/v1/epochs/latest")).json()
        status = (await client.get("/v1/status")).json()
    assert epoch["latest_epoch"]["index"] >= 1 and epoch["epoch_stages"]["poc_start"] >= ctx.start_of_poc
    assert epoch["phase"] in {p.value for p in Phase}
    assert status["chain"]["synced"] is True and status["chain"]["last_height"] >= ctx.start_of_poc + 1
    assert status["read_only"] is False and status["components"]["broker"]["registration"] == "done"


async def test_status_shows_the_height_retried_while_the_chain_cannot_be_queried() -> None:
    """The chain's gRPC goes away while its websocket keeps announcing blocks: the daemon retries the same
    height until queries work again, /v1/status says which height and why, and no height is skipped."""
    grpc_port = free_port()
    async with DevnetSession(participants=3, nodes_per_participant=2, block_time=BLOCK,
                             devnet_ports=(0, grpc_port, 0)) as s:
        follower = s.daemon.follower
        assert follower is not None
        await daemon_at(s, 5)
        await s.devnet.grpc.stop()
        async with httpx.AsyncClient(base_url=s.public_url, timeout=10) as client:
            await s.devnet.wait_until(lambda: follower.retrying is not None and follower.retrying.attempts >= 3,
                                      timeout=30, what="the follower retrying a height")
            status = (await client.get("/v1/status")).json()
            retrying = status["components"]["follower"]["retrying"]
            assert retrying["height"] == status["chain"]["last_height"] + 1
            assert retrying["attempts"] >= 3 and "UNAVAILABLE" in retrying["last_error"]
            metrics = (await client.get("/metrics")).text
            assert f"dapi_block_retrying_height {float(retrying['height'])}" in metrics
            stuck_at = retrying["height"]
            await s.devnet.grpc.start()
            await daemon_at(s, stuck_at + 5)
            status = (await client.get("/v1/status")).json()
        follower_status = status["components"]["follower"]
        assert follower_status["retrying"] is None
        assert (follower_status["skipped_heights"], follower_status["skipped"]) == (0, [])
        assert s.daemon.dispatcher is not None
        heights = [h for h, _, _ in s.daemon.dispatcher.recent]
        assert heights == list(range(heights[0], heights[-1] + 1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_pricing_shows_the_price_the_chain_writes_when_the_epoch_becomes_effective(
    session: DevnetSession,
) -> None:
    # The devnet, as the real chain, forms epoch 1 without a price and writes it (the default, 100) at
    # set-new-validators (53); the daemon must read the parent group again at that switch.
    s = session
    ctx = context(s, 1)
    await daemon_at(s, ctx.set_new_validators + 1)
    async with httpx.AsyncClient(base_url=s.public_url, timeout=10) as client:
        pricing = (await client.get("/v1/pricing")).json()
        epoch = (await client.get("/v1/epochs/latest")).json()
    assert pricing["unit_of_compute_price"] == 100
    assert pricing["models"] and all(
        m["price_per_token"] == m["units_of_compute_per_token"] * 100 for m in pricing["models"]
    )
    assert epoch["latest_epoch"]["index"] == 1


INIT_GENERATE = "/api/v1/pow/init/generate"


def init_calls(s: DevnetSession, node: str) -> list[dict[str, Any]]:
    return [c.json for c in s.devnet.mlnodes.calls(node) if c.path == INIT_GENERATE]


async def test_own_nodes_post_on_their_own_urls_and_forged_batches_are_refused(session: DevnetSession) -> None:
    s = session
    ctx = context(s, 1)
    own, peer = s.devnet.genesis.own, s.devnet.genesis.peers[0]
    await daemon_at(s, ctx.start_of_poc_validation)
    urls = {n.local_id: init_calls(s, n.local_id)[-1]["url"] for n in own.nodes}
    assert all(re.fullmatch(re.escape(s.ml_url) + r"/n/[A-Za-z0-9_-]{32}/v1/poc-batches", u) for u in urls.values())
    assert len(set(urls.values())) == len(urls)
    block_hash = s.devnet.ledger.block(ctx.start_of_poc).hash  # type: ignore[union-attr]
    forged = {"public_key": peer.hex_pub_key, "block_hash": block_hash, "block_height": ctx.start_of_poc,
              "nonces": [1], "dist": [0.1], "node_id": 1, "received_dist": [0.9], "r_target": 1.4,
              "fraud_threshold": 1e-7, "n_invalid": 1, "probability_honest": 0.0, "fraud_detected": True}
    async with httpx.AsyncClient(timeout=10) as http:
        for route in ("/v1/poc-batches/validated", "/mlnode/v1/poc-batches/validated"):
            response = await http.post(s.ml_url + route, json=forged)
            assert response.status_code == 404 and "ml_legacy_callbacks" in response.json()["error"]
        guessed = await http.post(f"{s.ml_url}/n/{'x' * 32}/v1/poc-batches/validated", json=forged)
        assert guessed.status_code == 404 and "unknown callback URL" in guessed.json()["error"]
    await s.devnet.wait_for_height(ctx.end_of_poc_validation + 1)
    # Every own node's batches landed in its name; the forged verdict never reached the chain.
    landed = s.devnet.ledger.batches(ctx.start_of_poc, participant=own.address)
    assert {b.node_id for b in landed} == set(urls)
    verdicts = [v for v in s.devnet.ledger.validations(ctx.start_of_poc, participant=peer.address)
                if v.validator_participant_address == own.address]
    assert verdicts and not any(v.fraud_detected for v in verdicts)
    assert s.daemon.metrics.batches_refused_count() == 3


async def test_a_node_generating_across_a_daemon_restart_is_still_heard() -> None:
    """The daemon restarts in the middle of PoC generation (the chain paused meanwhile); the nodes never
    stop mining, and the batches they post after the restart, on the URLs the old process gave them,
    are accepted by the new one and land in their names."""
    ports = DaemonPorts(free_port(), free_port(), free_port())
    async with DevnetSession(participants=2, nodes_per_participant=2, block_time=BLOCK, ports=ports) as s:
        ctx = context(s, 1)
        own = [n.local_id for n in s.devnet.genesis.own.nodes]
        await wait_for(lambda: all(s.devnet.mlnodes.node(n).generated_posted for n in own), timeout=30,
                       what="every own node posted a batch")
        s.devnet.pause_at(s.devnet.ledger.height + 1)
        await wait_for(lambda: s.devnet.paused, what="the chain to pause", timeout=30)
        assert s.devnet.ledger.height < ctx.poc_exchange_window.end - 2
        urls = {n: init_calls(s, n)[-1]["url"] for n in own}
        await s.daemon.stop()
        before = {n: len(s.devnet.mlnodes.node(n).generated_posted) for n in own}
        s.daemon = Daemon(s.daemon.config, s.daemon.identity)
        await s.daemon.start()
        # Heard by the new process on the old URLs, whatever it learnt of the chain yet.
        await wait_for(lambda: all(len(s.devnet.mlnodes.node(n).generated_posted) > before[n] for n in own),
                       timeout=30, what="batches accepted by the restarted daemon")
        assert s.daemon.metrics.batches_refused_count() == 0
        assert {n: init_calls(s, n)[-1]["url"] for n in own} == urls
        s.devnet.resume_blocks()
        await s.devnet.wait_for_height(ctx.poc_exchange_window.end + 1)
        # Every batch posted after the restart landed, in the name of the node that posted it.
        after = {n: list(s.devnet.mlnodes.node(n).generated_posted)[before[n]:] for n in own}
        assert all(after.values())

        def landed_all() -> bool:
            on_chain = {(b.node_id, tuple(b.nonces))
                        for b in s.devnet.ledger.batches(ctx.start_of_poc, participant=s.devnet.genesis.own.address)}
            return all((n, tuple(p.nonces)) in on_chain for n in own for p in after[n])

        await wait_for(landed_all, timeout=30, what="the batches posted after the restart on chain")
