"""The daemon against the devnet chain over the real wire: catch-up, transitions, seeds, validation.

Every test runs the real daemon in-process against a devnet with 50 ms blocks (epochs of 40 blocks:
PoC at 40, end of generation 46, validation 47-50, end of validation 51, set new validators 53, claim 54).
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from waiting import wait_for

from dapi.chain.epochs import EpochContext
from dapi.daemon import Daemon
from dapi.devnet.daemon_config import DaemonPorts
from dapi.devnet.genesis import DEFAULT_GENESIS_PATH, load_genesis
from dapi.devnet.mlnode import RecordedCall
from dapi.devnet.network import SimulatedNetwork
from dapi.devnet.schedule.records import PoCBatch
from dapi.testbed.health import HealthWatch
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
    # Polled, not checked per block: it must also work while the devnet's block timer is paused.
    await wait_for(lambda: bool(s.daemon.follower and (s.daemon.follower.last_height or 0) >= height),
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


def expected_sample(validator_hex_pubkey: str, block_hash: str, height: int, nonces: list[int], dist: list[float],
                    size: int) -> tuple[list[int], list[float]]:
    """The sampling rule of reference/chain-io.md §2.11 step 4, written out here rather than imported.

    seed = the first 8 bytes, big-endian and signed, of sha256("<own hex pubkey>:<block hash>:<height>"); the
    positions are `size` distinct ones drawn with that seed. DESIGN.md leaves the generator open (no other
    party recomputes the choice); dapi draws with Python's `random.Random(seed).sample`, so that is what a
    sample is checked against. A participant with no more nonces than `size` is sent whole.
    """
    if size >= len(nonces):
        return nonces, dist
    digest = hashlib.sha256(f"{validator_hex_pubkey}:{block_hash}:{height}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big", signed=True)
    positions = random.Random(seed).sample(range(len(nonces)), size)
    return [nonces[i] for i in positions], [dist[i] for i in positions]


SAMPLE_SIZE = 8  # the chain's validation_sample_size here: below every participant's nonce count


async def test_batch_validation_reaches_only_validating_nodes_with_a_deterministic_sample() -> None:
    # A sample size below every participant's nonce count, so the sample is a real choice, not "all of them".
    genesis = load_genesis(DEFAULT_GENESIS_PATH, participants=3, nodes_per_participant=3, block_time=BLOCK,
                           overrides={"poc_params": {"validation_sample_size": SAMPLE_SIZE}})
    session = DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK)
    session.devnet = SimulatedNetwork(genesis)  # not started yet: the session starts this one instead
    async with session as s:
        # Epoch 2's PoC is the first with POC_SLOT allocations (from epoch 1); a later one if the chain is past it.
        epoch = 2
        while context(s, epoch).start_of_poc_validation <= s.devnet.ledger.height:
            epoch += 1
        ctx = context(s, epoch)
        # The chain stops right after the block that starts validation: the batches the daemon reads at
        # that block are exactly the ones stored now (the exchange window would otherwise add more).
        s.devnet.pause_at(ctx.start_of_poc_validation)
        await s.devnet.wait_for_height(ctx.start_of_poc_validation, timeout=60)
        stored: dict[str, list[PoCBatch]] = {}
        for b in s.devnet.ledger.batches(ctx.start_of_poc):
            stored.setdefault(b.participant_address, []).append(b)
        hex_keys = {p.address: p.hex_pub_key for p in s.devnet.genesis.participants}
        assert set(stored) == set(hex_keys), "every participant mined at this PoC"

        def validate_calls() -> list[RecordedCall]:
            return [c for n in s.devnet.own.nodes for c in s.devnet.mlnodes.calls(n.local_id)
                    if c.path.endswith("/pow/validate") and c.json["block_height"] == ctx.start_of_poc]

        await wait_for(lambda: len(validate_calls()) >= len(stored), timeout=30, what="one sample per participant")
        report = s.devnet.report(epoch - 1)
        assert report is not None
        member = report.member(s.devnet.own.address)
        assert member is not None
        poc_slot = {n.node_id: n.poc_slot for n in member.nodes}
        assert set(poc_slot.values()) == {True, False}, "some own nodes serve, some mine"
        for node in s.devnet.own.nodes:
            calls = [c for c in s.devnet.mlnodes.calls(node.local_id)
                     if c.path.endswith("/pow/validate") and c.json["block_height"] == ctx.start_of_poc]
            if poc_slot[node.local_id]:
                assert calls == [], f"{node.local_id} serves inference during PoC and must not validate"

        block_hash = s.devnet.ledger.block(ctx.start_of_poc).hash  # type: ignore[union-attr]
        own_key = s.devnet.own.hex_pub_key
        bodies = {c.json["public_key"]: c.json for c in validate_calls()}
        assert len(bodies) == len(validate_calls()) == len(stored), "each participant sampled exactly once"
        for address, batches in stored.items():
            body = bodies[hex_keys[address]]
            # The chain answers with a participant's batches in batch_id order; the sample is over their concatenation.
            batches = sorted(batches, key=lambda b: b.batch_id)
            nonces = [n for b in batches for n in b.nonces]
            dist = [d for b in batches for d in b.dist]
            assert len(nonces) > SAMPLE_SIZE, address
            want_nonces, want_dist = expected_sample(own_key, block_hash, ctx.start_of_poc, nonces, dist, SAMPLE_SIZE)
            assert (body["block_hash"], body["block_height"]) == (block_hash, ctx.start_of_poc)
            assert body["nonces"] == want_nonces and body["dist"] == want_dist, address
            assert len(set(body["nonces"])) == SAMPLE_SIZE
        s.devnet.resume_blocks()


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


# The phase of a height by the stage table of reference/chain-logic.md §2.3, worked out by hand for the devnet's
# epoch params (epoch_length 40, shift 0, P=6, D=1, V=4; generation wind-down trunc(6*0.8)=4, validation
# wind-down trunc(4*0.8)=3), as offsets from an epoch's PoC start A=40k: [A,A+4) PoCGenerate, [A+4,A+7)
# PoCGenerateWindDown, [A+7,A+10) PoCValidate, [A+10,A+11) PoCValidateWindDown, Inference from the end of
# validation A+11 on; at A-1 the latest epoch is still k-1, in its Inference phase.
PHASE_AT_OFFSET = [
    (-1, "Inference"),
    (0, "PoCGenerate"),
    (3, "PoCGenerate"),
    (4, "PoCGenerateWindDown"),
    (6, "PoCGenerateWindDown"),
    (7, "PoCValidate"),
    (9, "PoCValidate"),
    (10, "PoCValidateWindDown"),
    (11, "Inference"),
    (13, "Inference"),
]
# An epoch's stages as /v1/epochs/latest reports them, as offsets from its PoC start (the same table).
STAGE_OFFSETS = {
    "poc_start": 0, "poc_generation_wind_down": 4, "poc_generation_end": 6, "poc_validation_start": 7,
    "poc_validation_wind_down": 10, "poc_validation_end": 11, "set_new_validators": 13, "claim_money": 14,
    "next_poc_start": 40,
}


async def test_phase_of_status_and_epoch_endpoint_follow_the_chain(session: DevnetSession) -> None:
    s = session
    # The first epoch whose PoC start is still ahead (epoch 1 unless starting the daemon took long).
    k = (s.devnet.ledger.height + 1) // 40 + 1
    poc_start = 40 * k
    s.devnet.pause_at(poc_start - 1)
    await s.devnet.wait_for_height(poc_start - 1)
    async with httpx.AsyncClient(base_url=s.public_url, timeout=10) as client:
        for offset, phase in PHASE_AT_OFFSET:
            height, epoch_index = poc_start + offset, k if offset >= 0 else k - 1
            # The chain stands still at `height`: whatever the daemon reports is about this very block.
            if s.devnet.ledger.height < height:
                await s.devnet.step(height - s.devnet.ledger.height)
            assert s.devnet.ledger.height == height
            await daemon_at(s, height)
            epoch = (await client.get("/v1/epochs/latest")).json()
            status = (await client.get("/v1/status")).json()
            assert (epoch["block_height"], epoch["latest_epoch"]["index"], epoch["phase"]) == (height, epoch_index, phase)
            assert (status["chain"]["last_height"], status["chain"]["epoch"], status["chain"]["phase"]) == (
                height, epoch_index, phase)
            if epoch_index == k:
                assert epoch["latest_epoch"]["poc_start_block_height"] == poc_start
                stages = epoch["epoch_stages"]
                assert stages["epoch_index"] == k
                assert {key: stages[key] - poc_start for key in STAGE_OFFSETS} == STAGE_OFFSETS
            assert status["chain"]["synced"] is True
        assert status["read_only"] is False and status["components"]["broker"]["registration"] == "done"
    s.devnet.resume_blocks()


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


async def test_under_demand_the_own_nodes_follow_the_flags_re_selected_before_the_poc() -> None:
    # No inference load and no minimum: the chain's pre-PoC block (78) takes every POC_SLOT flag that the
    # weight rule gave at formation (51) away, so in the PoC at 80 every own node must mine. A daemon that
    # kept formation's flags would leave its POC_SLOT nodes serving.
    genesis = load_genesis(DEFAULT_GENESIS_PATH, participants=3, nodes_per_participant=3, block_time=BLOCK,
                           overrides={"poc_slot_policy": "demand",
                                      "pre_poc_selection": {"min_serving_nodes_per_model": 0}})
    session = DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK)
    session.devnet = SimulatedNetwork(genesis)  # not started yet: the session starts this one instead
    async with session as s:
        watch = HealthWatch(s)
        await watch.run(2)
        own = s.devnet.own.address
        formed: dict[str, bool] = {}
        for model in ("Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"):
            sub = s.devnet.ledger.epoch_group(1, model, height=77)
            assert sub is not None
            formed.update({n.node_id: n.is_active_during_poc for vw in sub.validation_weights
                           if vw.member_address == own for n in vw.ml_nodes})
        assert any(formed.values()), f"the weight rule gave the own participant no serving node: {formed}"
        report = s.devnet.report(1)
        assert report is not None and report.pre_poc_selection_height == 78
        checks = [c for c in watch.poc if c.epoch == 2]
        assert sorted(c.node_id for c in checks) == sorted(formed)
        assert all(not c.poc_slot and c.ok for c in checks), [c.as_json() for c in checks]
        assert watch.problems == []
