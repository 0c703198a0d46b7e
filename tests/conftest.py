"""Fixtures shared by the test modules.

A module changes what a fixture builds by overriding the small option fixture it reads, not by copying
the fixture: ``sim_options`` (simulated ML node server settings and the nodes to add), ``governance_models``
(what the fake chain serves), ``broker_tx_sink`` (where the broker's hardware diffs go) and
``broker_options`` (more keyword arguments of ``make_broker``, e.g. the callback URL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_fakes import MODEL_A, FakeChain, ListTxSink, gov_model, make_broker
from log_capture import LogLines, capture_logs

from dapi.broker import Broker
from dapi.chain.outbox import Outbox
from dapi.devnet.genesis import DevnetGenesis, load_genesis
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.devnet.network import SimulatedNetwork
from dapi.gen.inference.inference.model_pb2 import Model


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """SimMLNodeServer keyword arguments, plus ``nodes``: names of nodes added before the test starts."""
    return {"batch_interval": 0.05, "nodes": ()}


@pytest.fixture
async def sim(sim_options: dict[str, Any]) -> AsyncIterator[SimMLNodeServer]:
    """A simulated ML node server on a loopback port chosen by the OS."""
    options = dict(sim_options)
    nodes = options.pop("nodes", ())
    async with SimMLNodeServer(**options) as server:
        for name in nodes:
            server.add_node(name)
        yield server


@pytest.fixture
def governance_models() -> list[Model]:
    return [gov_model(MODEL_A)]


@pytest.fixture
def chain(governance_models: list[Model]) -> FakeChain:
    """An in-memory chain serving ``governance_models`` (broker tests)."""
    return FakeChain(governance_models)


@pytest.fixture
def broker_tx_sink() -> ListTxSink | None:
    return None


@pytest.fixture
def broker_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def broker(chain: FakeChain, tmp_path: Path, broker_tx_sink: ListTxSink | None,
                 broker_options: dict[str, Any]) -> AsyncIterator[Broker]:
    """A broker over ``chain``, not started: the tests run reconcile passes themselves."""
    b = make_broker(chain, tmp_path, tx_sink=broker_tx_sink, **broker_options)
    yield b
    await b.stop()


class _NeverSends:
    async def broadcast(self, raw: bytes) -> Any:
        raise AssertionError("the callback server must not broadcast")


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    """An outbox that accepts messages (it has a signer) but is never started, so nothing is broadcast."""

    async def no_signer() -> Any:
        raise AssertionError("not started")

    box = Outbox(tmp_path / "outbox.sqlite", broadcaster=_NeverSends(), signer_factory=no_signer)  # type: ignore[arg-type]
    await box.open()
    yield box
    await box.stop()


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every log line of the test, parsed (see log_capture)."""
    with capture_logs() as lines:
        yield lines


@pytest.fixture
def genesis() -> DevnetGenesis:
    """The devnet's default genesis (config/devnet.yaml's values)."""
    return load_genesis(None)


@pytest.fixture
async def devnet() -> AsyncIterator[SimulatedNetwork]:
    """The whole simulated network on loopback (ports chosen by the OS), with 20 ms blocks."""
    async with SimulatedNetwork(block_time=0.02) as running:
        yield running
