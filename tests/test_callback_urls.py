"""Only the daemon's own ML nodes submit PoC batches in their own name (DESIGN.md §4.5, §7).

The real callback server on loopback, over the real broker and the real outbox: simulated ML nodes get
their InitDto from the broker and post their batches to the URL it gave them, exactly as in production.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_fakes import (
    INIT_GENERATE,
    PARAMS,
    PARTICIPANT,
    PUBKEY_HEX,
    FakeChain,
    block_hash,
    make_broker,
    settle,
    sim_node_config,
    wait_for,
)
from log_capture import LogLines
from outbox_rows import stored

from dapi.broker import Broker, EpochState
from dapi.broker.nodenums import FILE_NAME as NODE_FILE
from dapi.broker.pocstages import FILE_NAME as STAGE_FILE
from dapi.broker.pocstages import KEPT_STAGES
from dapi.chain.epochs import Epoch, EpochContext, Phase
from dapi.chain.outbox import Outbox
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitPocValidation
from dapi.metrics import Metrics
from dapi.runtime.serving import EmbeddedServer, bind_socket
from dapi.server.mlnode.app import BrokerNodes, create_mlnode_app

E1 = Epoch(1, 40)
STAGE = E1.poc_start_block_height
OTHER_KEY = "035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda"  # another participant's


def poc_state(epoch: Epoch) -> EpochState:
    state = EpochState.at_height(epoch, PARAMS, EpochContext.for_epoch(epoch, PARAMS).start_of_poc + 1)
    assert state.phase is Phase.POC_GENERATE
    return state


def generated(height: int = STAGE, **change: Any) -> dict[str, Any]:
    """A generated batch as the own node 1 would post it for the stage at ``height``."""
    return {"public_key": PUBKEY_HEX.lower(), "block_hash": block_hash(height), "block_height": height,
            "nonces": [10**12], "dist": [0.5], "node_id": 1, **change}


def validated(height: int = STAGE, **change: Any) -> dict[str, Any]:
    """A validated batch: the verdict of an own node on another participant's batch of the stage at ``height``."""
    return {**generated(height), "public_key": OTHER_KEY, "node_id": 0, "received_dist": [0.5], "r_target": 1.4,
            "fraud_threshold": 1e-7, "n_invalid": 1, "probability_honest": 0.0, "fraud_detected": True, **change}


@dataclass
class Callbacks:
    """The callback server under test: its URL, the broker it asks, its metrics, a client."""

    url: str
    nodes: BrokerNodes
    metrics: Metrics
    http: httpx.AsyncClient


@pytest.fixture
def ml_socket() -> Iterator[socket.socket]:
    """The callback server's socket, bound first so the broker can be told its URL (as the daemon does)."""
    sock = bind_socket("127.0.0.1", 0)
    yield sock
    sock.close()


@pytest.fixture
def broker_options(ml_socket: socket.socket) -> dict[str, Any]:
    return {"poc_callback_url": f"http://127.0.0.1:{ml_socket.getsockname()[1]}"}


@pytest.fixture
def legacy_callbacks() -> bool:
    return False


@pytest.fixture
async def ml(broker: Broker, outbox: Outbox, ml_socket: socket.socket,
             legacy_callbacks: bool) -> AsyncIterator[Callbacks]:
    nodes, metrics = BrokerNodes(broker), Metrics()
    app = create_mlnode_app(nodes=nodes, outbox=outbox, account_address=PARTICIPANT,
                            participant_pubkey_hex=PUBKEY_HEX, legacy_callbacks=legacy_callbacks, metrics=metrics)
    server = EmbeddedServer(app, host="127.0.0.1", sock=ml_socket)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            yield Callbacks(server.url, nodes, metrics, http)
    finally:
        await server.stop()


def init_url(sim: SimMLNodeServer, name: str) -> str:
    """The callback URL the node's last InitDto gave it."""
    calls = [c for c in sim.calls(name) if c.path == INIT_GENERATE]
    assert calls, f"{name} was never initialised"
    return str(calls[-1].json["url"])


async def mining(broker: Broker, sim: SimMLNodeServer, *names: str, epoch: Epoch = E1) -> dict[str, str]:
    """Register the nodes (if new), start PoC generation of ``epoch``; each node's callback path."""
    new = [n for n in names if broker.node(n) is None]
    if new:
        await broker.register_many([sim_node_config(sim, n) for n in new])
    broker.set_epoch_state(poc_state(epoch))
    assert broker.start_poc()
    await settle(broker)
    return {n: httpx.URL(init_url(sim, n)).path for n in names}


def own_batches(outbox: Outbox) -> list[MsgSubmitPocBatch]:
    return [m for m in stored(outbox.path) if isinstance(m, MsgSubmitPocBatch)]


def posted_here(outbox: Outbox) -> list[MsgSubmitPocBatch | MsgSubmitPocValidation]:
    """The messages of the batches the test posted itself (the simulated nodes never mine nonce 10**12)."""
    return [m for m in stored(outbox.path) if isinstance(m, MsgSubmitPocValidation) or list(m.nonces) == [10**12]]


async def stop_mining(broker: Broker, sim: SimMLNodeServer, name: str) -> None:
    """Stop the simulated node, so that only the test posts on its URL, and let the broker see it stopped."""
    async with httpx.AsyncClient(timeout=10) as http:
        (await http.post(sim.node_url(name) + "/api/v1/stop")).raise_for_status()
    await broker.poll_now(force=True)


# --- each node's own URL ---------------------------------------------------------------------------


async def test_each_node_posts_to_its_own_url_and_its_batches_are_its_own(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox) -> None:
    paths = await mining(broker, sim, "n1", "n2")
    assert paths["n1"] != paths["n2"]
    for path in paths.values():
        assert re.fullmatch(r"/n/[A-Za-z0-9_-]{32}/v1/poc-batches", path), path
    await wait_for(lambda: {b.node_id for b in own_batches(outbox)} == {"n1", "n2"}, what="batches of both nodes")
    for batch in own_batches(outbox):
        node_num = 1 if batch.node_id == "n1" else 2
        # Each node mines its own nonce space (node_num + k·node_count): the batch is the node's indeed.
        assert all(n % 3 == node_num for n in batch.nonces)
        assert batch.poc_stage_start_block_height == STAGE and batch.creator == PARTICIPANT
    assert ml.metrics.batches_refused_count() == 0
    assert all(sim.node(n).last_post_error is None for n in ("n1", "n2"))


async def test_a_batch_on_node_a_url_claiming_node_b_number_is_attributed_to_a(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox, log_lines: LogLines) -> None:
    paths = await mining(broker, sim, "n1", "n2")
    await stop_mining(broker, sim, "n1")  # only the forged batch below comes from n1's URL
    response = await ml.http.post(paths["n1"] + "/generated", json=generated(node_id=2))
    assert (response.status_code, response.content) == (200, b"")
    assert [b.node_id for b in posted_here(outbox)] == ["n1"]
    assert log_lines.find("PoC batch claims another node's number; attributed to the node whose URL it came on",
                          node_id="n1", claimed_node_num=2)


async def test_an_unknown_or_removed_nodes_url_is_refused(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox) -> None:
    paths = await mining(broker, sim, "n1", "n2")
    await stop_mining(broker, sim, "n2")
    for kind, body in (("generated", generated()), ("validated", validated())):
        response = await ml.http.post(f"/n/{'A' * 32}/v1/poc-batches/{kind}", json=body)
        assert response.status_code == 404, response.text
        assert "unknown callback URL" in response.json()["error"]
    assert (await ml.http.post("/n//v1/poc-batches/generated", json=generated())).status_code == 404
    assert await broker.remove("n2")
    gone = await ml.http.post(paths["n2"] + "/generated", json=generated(node_id=2))
    assert gone.status_code == 404 and "unknown callback URL" in gone.json()["error"]
    # Re-added, the id keeps its number but gets a new URL (from the next epoch on, as any added node);
    # the old one stays dead.
    again = await mining(broker, sim, "n2", epoch=Epoch(2, 80))
    assert again["n2"] != paths["n2"]
    assert (await ml.http.post(paths["n2"] + "/generated", json=generated(80, node_id=2))).status_code == 404
    assert (await ml.http.post(again["n2"] + "/generated", json=generated(80, node_id=2))).status_code == 200
    assert [b.node_id for b in posted_here(outbox)] == ["n2"]
    # (n1, still mining for stage 40, has its batches refused as late once the state is past that window.)
    assert ml.metrics.batches_refused_count(late=False) == 4


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("generated", generated(public_key=OTHER_KEY), "public_key"),
        ("generated", generated(block_height=STAGE + 40), "block_height"),
        ("generated", generated(block_hash=block_hash(STAGE + 1)), "block_hash"),
        ("generated", generated(block_height=STAGE + 40, block_hash=block_hash(STAGE + 40)), "block_height"),
        ("validated", validated(block_height=STAGE + 40), "block_height"),
        ("validated", validated(block_hash=block_hash(STAGE + 1)), "block_hash"),
    ],
)
async def test_another_participants_key_or_another_stage_is_400_naming_the_field(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox, kind: str, body: dict[str, Any],
        field: str) -> None:
    paths = await mining(broker, sim, "n1")
    await stop_mining(broker, sim, "n1")
    response = await ml.http.post(f"{paths['n1']}/{kind}", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(field + ": ")
    assert posted_here(outbox) == []
    # Keys and hashes are hex: their case does not matter.
    right = generated(public_key=PUBKEY_HEX.upper(), block_hash=block_hash(STAGE).lower()) \
        if kind == "generated" else validated(block_hash=block_hash(STAGE).lower())
    assert (await ml.http.post(f"{paths['n1']}/{kind}", json=right)).status_code == 200


async def test_validated_batches_on_a_nodes_url_are_queued_as_validations(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox) -> None:
    paths = await mining(broker, sim, "n1")
    await stop_mining(broker, sim, "n1")
    assert (await ml.http.post(paths["n1"] + "/validated", json=validated())).status_code == 200
    [validation] = [m for m in stored(outbox.path) if isinstance(m, MsgSubmitPocValidation)]
    assert validation.poc_stage_start_block_height == STAGE and validation.fraud_detected


async def test_a_recent_stage_is_late_once_its_window_closed_and_a_forgotten_one_unknown(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox) -> None:
    # A batch of a stage our nodes had is accepted while the chain can still take it; once the daemon has
    # processed the last block of its exchange window the chain would refuse it (1108), so it is 410 —
    # never answered 200 to become a dead letter. A stage the nodes never had (or long forgotten) is 400.
    epochs = [Epoch(i, 40 * i) for i in range(1, KEPT_STAGES + 2)]
    paths = await mining(broker, sim, "n1", epoch=epochs[0])
    await stop_mining(broker, sim, "n1")
    in_window = await ml.http.post(paths["n1"] + "/generated", json=generated(STAGE))
    assert in_window.status_code == 200, in_window.text
    window_end = EpochContext.for_epoch(epochs[0], PARAMS).poc_exchange_window.end
    broker.set_epoch_state(EpochState.at_height(epochs[0], PARAMS, window_end - 1))
    assert (await ml.http.post(paths["n1"] + "/generated", json=generated(STAGE))).status_code == 200
    broker.set_epoch_state(EpochState.at_height(epochs[0], PARAMS, window_end))
    late = await ml.http.post(paths["n1"] + "/generated", json=generated(STAGE))
    assert late.status_code == 410, late.text
    assert f"closed at block {window_end}" in late.json()["error"]
    await mining(broker, sim, "n1", epoch=epochs[1])
    await stop_mining(broker, sim, "n1")
    assert (await ml.http.post(paths["n1"] + "/generated", json=generated(STAGE))).status_code == 410
    for epoch in epochs[2:]:
        await mining(broker, sim, "n1", epoch=epoch)
        await stop_mining(broker, sim, "n1")
    forgotten = await ml.http.post(paths["n1"] + "/generated", json=generated(STAGE))
    assert forgotten.status_code == 400 and forgotten.json()["error"].startswith("block_height: ")
    current = epochs[-1].poc_start_block_height
    assert (await ml.http.post(paths["n1"] + "/generated", json=generated(current))).status_code == 200
    assert (ml.metrics.batches_refused_count(late=True), ml.metrics.batches_refused_count(late=False)) == (2, 1)


async def test_secret_and_stage_survive_a_restart_and_a_node_generating_across_it_is_heard(
        broker: Broker, chain: FakeChain, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox, tmp_path: Path,
        broker_options: dict[str, Any]) -> None:
    paths = await mining(broker, sim, "n1", "n2")
    await wait_for(lambda: {b.node_id for b in own_batches(outbox)} == {"n1", "n2"}, what="batches of both nodes")
    await broker.stop()
    # A new broker from the same data_dir, which has sent no InitDto: the nodes keep generating for the
    # stage the old one started them for, on the URLs it gave them. They are heard even before the
    # restarted daemon could register them (that waits for the chain's governance models).
    restarted = make_broker(chain, tmp_path, **broker_options)
    try:
        await restarted.start()
        ml.nodes.broker = restarted
        inits = {n: [c for c in sim.calls(n) if c.path == INIT_GENERATE] for n in ("n1", "n2")}
        before = len(own_batches(outbox))
        await wait_for(lambda: {b.node_id for b in own_batches(outbox)[before:]} == {"n1", "n2"},
                       what="batches of both nodes after the restart")
        await restarted.register_many([sim_node_config(sim, "n1")])  # n2 is no longer in the config
        before = len(own_batches(outbox))
        await wait_for(lambda: {b.node_id for b in own_batches(outbox)[before:]} == {"n1", "n2"},
                       what="batches of both nodes after the registration")
        assert ml.metrics.batches_refused_count() == 0
        assert {n: [c for c in sim.calls(n) if c.path == INIT_GENERATE] for n in ("n1", "n2")} == inits
        assert restarted.poc_stage_hash(STAGE) == block_hash(STAGE)
        # Registration done: a node that is not registered any more loses its URL.
        assert await restarted.forget_unregistered_secrets() == ["n2"]
        assert restarted.callback_owner(paths["n1"].split("/")[2]) == "n1"
        assert restarted.callback_owner(paths["n2"].split("/")[2]) is None
        refused = await ml.http.post(paths["n2"] + "/generated", json=generated(node_id=2))
        assert refused.status_code == 404
    finally:
        await restarted.stop()
    # The secrets are in data_dir beside the node numbers, in files only the daemon's user can read.
    saved = json.loads((tmp_path / NODE_FILE).read_text())
    assert saved["nodes"] == {"n1": 1, "n2": 2} and list(saved["secrets"]) == ["n1"]
    assert f"/n/{saved['secrets']['n1']}/v1/poc-batches" == paths["n1"]
    for name in (NODE_FILE, STAGE_FILE):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600, name


async def test_node_numbers_of_an_older_file_are_kept_and_get_secrets(
        chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path) -> None:
    # The file as the previous release wrote it: numbers only.
    (tmp_path / NODE_FILE).write_text(json.dumps({"version": 1, "highest": 2, "nodes": {"n1": 2, "n0": 1}}))
    broker = make_broker(chain, tmp_path)
    try:
        await broker.start()
        assert (await broker.register(sim_node_config(sim, "n1"))).node_num == 2
    finally:
        await broker.stop()
    saved = json.loads((tmp_path / NODE_FILE).read_text())
    assert saved["nodes"] == {"n0": 1, "n1": 2} and list(saved["secrets"]) == ["n1"]


# --- the shared reference routes -------------------------------------------------------------------

SHARED = ["/v1/poc-batches", "/mlnode/v1/poc-batches"]


@pytest.mark.parametrize("route", SHARED)
async def test_a_forged_batch_on_the_shared_routes_is_refused_by_default(
        broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox, route: str) -> None:
    await mining(broker, sim, "n1")
    await stop_mining(broker, sim, "n1")
    # A fraud verdict against a participant, and nonces in an own node's name: both would be signed.
    for kind, body in (("validated", validated()), ("generated", generated(node_id=1))):
        response = await ml.http.post(f"{route}/{kind}", json=body)
        assert response.status_code == 404
        assert "api.ml_legacy_callbacks: true" in response.json()["error"]
    assert posted_here(outbox) == []


class TestWithTheSharedRoutesOn:
    """``api.ml_legacy_callbacks: true``: the shared routes behave as the reference's (and as before)."""

    @pytest.fixture
    def legacy_callbacks(self) -> bool:
        return True

    @pytest.mark.parametrize("route", SHARED)
    async def test_a_batch_is_attributed_by_its_node_number(
            self, broker: Broker, sim: SimMLNodeServer, ml: Callbacks, outbox: Outbox, route: str) -> None:
        await broker.register_many([sim_node_config(sim, n) for n in ("n1", "n2")])
        # No checks of key or stage there: the node number decides, as in the reference.
        body = {**generated(node_id=2), "public_key": "02ab", "block_height": 7, "block_hash": "H"}
        assert (await ml.http.post(f"{route}/generated", json=body)).status_code == 200
        assert (await ml.http.post(f"{route}/validated", json=validated(block_height=7))).status_code == 200
        batch, validation = stored(outbox.path)
        assert batch.node_id == "n2" and batch.poc_stage_start_block_height == 7
        assert isinstance(validation, MsgSubmitPocValidation) and validation.fraud_detected

    async def test_the_nodes_own_urls_keep_their_checks(
            self, broker: Broker, sim: SimMLNodeServer, ml: Callbacks) -> None:
        paths = await mining(broker, sim, "n1")
        await stop_mining(broker, sim, "n1")
        response = await ml.http.post(paths["n1"] + "/generated", json=generated(public_key=OTHER_KEY))
        assert response.status_code == 400
        assert (await ml.http.post("/n/nobody/v1/poc-batches/generated", json=generated())).status_code == 404


async def test_an_unreadable_stage_file_only_costs_the_stages(chain: FakeChain, tmp_path: Path,
                                                              log_lines: LogLines) -> None:
    (tmp_path / STAGE_FILE).write_text("{not json")
    broker = make_broker(chain, tmp_path)
    try:
        await broker.start()  # the stages are learnt again at the next PoC init
        assert broker.poc_stage_hash(STAGE) is None
    finally:
        await broker.stop()
    assert log_lines.find("PoC stage file not read; stages are learnt again at the next PoC init")
