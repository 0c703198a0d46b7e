"""Serving capacity from the chain (DESIGN.md §6.1): a simulated ML node serves its epoch's MLNodeInfo.throughput."""

from __future__ import annotations

import pytest

from dapi.devnet.capacity_wiring import apply_epoch_throughput, epoch_throughput
from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.ledger import Ledger
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.devnet.peers import PeerSimulator

BLOCK_TIME = 0.5


@pytest.fixture
def ledger(genesis: DevnetGenesis) -> Ledger:
    """The default devnet at height 55: epoch 1 (the two peers, mined) is effective."""
    ledger = Ledger(genesis)
    peers = PeerSimulator(ledger, genesis)
    while ledger.height < 55:
        peers.on_block(ledger.make_block())
    assert ledger.effective_epoch().index == 1
    return ledger


def test_the_default_genesis_gives_a_node_a_few_hundred_tokens_per_block(
    ledger: Ledger, genesis: DevnetGenesis
) -> None:
    for peer in genesis.peers:
        figures = epoch_throughput(ledger, 1, peer.address)
        assert sorted(figures) == ["node1", "node2", "node3", "node4"]
        assert all(100 <= t <= 1000 for t in figures.values()), figures
    assert epoch_throughput(ledger, 1, genesis.own.address) == {}  # no daemon mined: not a member


def test_each_sim_node_serves_its_chain_throughput(ledger: Ledger, genesis: DevnetGenesis) -> None:
    peer = genesis.peers[0]
    server = SimMLNodeServer(tokens_per_second=1.0)
    for node in peer.nodes:
        server.add_node(node.local_id)
    server.add_node("spare")  # not on the chain: keeps its rate
    applied = apply_epoch_throughput(ledger, 1, peer.address, server, BLOCK_TIME)
    assert applied == epoch_throughput(ledger, 1, peer.address)
    for node_id, tokens_per_block in applied.items():
        assert server.node(node_id).capacity.tokens_per_second == tokens_per_block / BLOCK_TIME
    assert server.node("spare").capacity.tokens_per_second == 1.0
    # Another participant's figures do not apply to nodes it does not list.
    assert apply_epoch_throughput(ledger, 1, genesis.own.address, server, BLOCK_TIME) == {}
