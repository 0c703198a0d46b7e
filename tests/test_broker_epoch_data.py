"""UpdateNodeWithEpochData (reference/broker.md §3.2, fix 5) and the epoch cache of the public API (plan 11.1).

No ML node is called here (the broker is not started), so nodes point at an unused address.
"""

from __future__ import annotations

import dataclasses

import pytest
from broker_fakes import (
    MODEL_A,
    MODEL_B,
    OTHER_PARTICIPANT,
    PARAMS,
    FakeChain,
    gov_model,
    ml_node,
)

from dapi.broker import Broker, EpochState, QueryChainReader
from dapi.chain.epochs import Epoch, EpochContext
from dapi.chain.errors import ChainUnavailable
from dapi.chain.rpc import BlockInfo
from dapi.config import NodeConfig
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model

MODEL_C = "meta/Llama-3-8B"
E1 = Epoch(1, 40)
E2 = Epoch(2, 80)
CTX1 = EpochContext.for_epoch(E1, PARAMS)
CTX2 = EpochContext.for_epoch(E2, PARAMS)


def node(node_id: str, *models: str) -> NodeConfig:
    return NodeConfig(id=node_id, host="127.0.0.1", poc_port=9, inference_port=9, models={m: {} for m in models})


@pytest.fixture
def governance_models() -> list[Model]:
    return [gov_model(MODEL_A, ["--a"]), gov_model(MODEL_B), gov_model(MODEL_C)]


@pytest.fixture
def chain(chain: FakeChain) -> FakeChain:
    chain.empty_epoch(0)
    return chain


@pytest.fixture
async def broker(broker: Broker) -> Broker:
    await broker.register_many([node("n1", MODEL_A), node("n2", MODEL_B), node("n3", MODEL_A)])
    return broker


def at(epoch: Epoch, height: int, *, synced: bool = True) -> EpochState:
    return EpochState.at_height(epoch, PARAMS, height, synced=synced)


def entries(broker: Broker, node_id: str) -> tuple[list[str], dict[str, list[bool]]]:
    view = broker.node(node_id)
    assert view is not None
    return sorted(view.state.epoch_models), {
        m: list(i.timeslot_allocation) for m, i in view.state.epoch_ml_nodes.items()
    }


def form_epoch1(chain: FakeChain) -> None:
    chain.form_epoch(
        1,
        {MODEL_A: [ml_node("n1", True, True), ml_node("n3")], MODEL_B: [ml_node("n2")]},
        # Another member lists node ids equal to ours, with other allocations: they must not count.
        others={OTHER_PARTICIPANT: {MODEL_A: [ml_node("n2", False, True)], MODEL_C: [ml_node("n1", False, True)]}},
        price=1234,
    )


async def sync_at(broker: Broker, state: EpochState) -> bool:
    broker.set_epoch_state(state)
    return await broker.update_epoch_data()


async def test_only_the_own_participants_entries_count(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    assert await sync_at(broker, at(E1, CTX1.set_new_validators + 1))
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})
    assert entries(broker, "n2") == ([MODEL_B], {MODEL_B: [True, False]})
    assert entries(broker, "n3") == ([MODEL_A], {MODEL_A: [True, False]})
    view = broker.node("n1")
    assert view is not None and list(view.state.epoch_models[MODEL_A].model_args) == ["--a"]  # the snapshot


async def test_nodes_the_chain_did_not_place_end_up_without_epoch_data(broker: Broker, chain: FakeChain) -> None:
    chain.form_epoch(1, {MODEL_A: [ml_node("n1")]})
    chain.current_epoch = 1
    await sync_at(broker, at(E1, CTX1.set_new_validators))
    assert entries(broker, "n2") == ([], {})


async def test_new_epoch_without_sub_groups_keeps_the_previous_allocation(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, CTX1.end_of_poc_validation))
    chain.empty_epoch(2)
    for height in range(CTX2.start_of_poc, CTX2.end_of_poc_validation):  # the whole PoC of epoch 2
        assert await sync_at(broker, at(E2, height)) is False
        assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})
    chain.form_epoch(2, {MODEL_B: [ml_node("n1")]})
    assert await sync_at(broker, at(E2, CTX2.end_of_poc_validation)) is True
    assert entries(broker, "n1") == ([MODEL_B], {MODEL_B: [True, False]})
    assert entries(broker, "n2") == ([], {})


async def test_sync_runs_only_when_epoch_or_phase_changes(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, 60))
    before = chain.total_calls
    for height in range(61, 70):  # same epoch, same phase (Inference)
        await sync_at(broker, at(E1, height))
    assert chain.total_calls == before


async def test_unsynced_state_is_not_synced(broker: Broker, chain: FakeChain) -> None:
    before = chain.total_calls
    assert await sync_at(broker, at(E1, 60, synced=False)) is False
    assert chain.total_calls == before


async def test_an_epoch_sync_of_n_models_costs_one_plus_n_queries(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)  # 3 models (two from the other member)
    chain.current_epoch = 1
    before = chain.total_calls
    await sync_at(broker, at(E1, CTX1.set_new_validators + 1))
    assert chain.total_calls - before == 1 + 3
    # Next epoch: its PoC (parent only, plus one governance refresh when the epoch index changes) ...
    chain.empty_epoch(2)
    before = chain.total_calls
    await sync_at(broker, at(E2, CTX2.start_of_poc))
    assert chain.calls["epoch_group_data"] and chain.total_calls - before == 1 + 1
    # ... and its formation with 2 models: 1 + 2; the effective epoch (still 1) is cached.
    chain.form_epoch(2, {MODEL_A: [ml_node("n1")], MODEL_B: [ml_node("n2")]})
    before = chain.total_calls
    await sync_at(broker, at(E2, CTX2.end_of_poc_validation))
    assert chain.total_calls - before == 1 + 2


async def test_a_failed_sync_is_retried_on_the_next_block(broker: Broker, chain: FakeChain) -> None:
    """Fix 5: the reference recorded the epoch/phase before querying and never retried."""
    form_epoch1(chain)
    chain.current_epoch = 1
    chain.fail_next("epoch_group_data", ChainUnavailable("parent unavailable"))
    with pytest.raises(ChainUnavailable):
        await sync_at(broker, at(E1, CTX1.set_new_validators))
    assert entries(broker, "n1") == ([], {})
    assert await sync_at(broker, at(E1, CTX1.set_new_validators + 1)) is True  # same epoch and phase
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})


async def test_a_transient_sub_group_failure_changes_nothing_and_is_retried(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, CTX1.set_new_validators))
    chain.empty_epoch(2)
    await sync_at(broker, at(E2, CTX2.start_of_poc))
    chain.form_epoch(2, {MODEL_B: [ml_node("n1")], MODEL_A: [ml_node("n2")]})
    # Parent answers, the second sub-group query fails: no half-applied data.
    chain.failures["epoch_group_data"] = []
    original = chain.epoch_group_data
    seen = 0

    async def flaky(epoch_index: int, model_id: str = "") -> object:
        nonlocal seen
        seen += 1
        if seen == 3:
            raise ChainUnavailable("sub-group unavailable")
        return await original(epoch_index, model_id)

    chain.epoch_group_data = flaky  # type: ignore[method-assign,assignment]
    with pytest.raises(ChainUnavailable):
        await sync_at(broker, at(E2, CTX2.end_of_poc_validation))
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})  # epoch 1's, untouched
    assert await sync_at(broker, at(E2, CTX2.end_of_poc_validation + 1)) is True
    assert entries(broker, "n1") == ([MODEL_B], {MODEL_B: [True, False]})
    assert entries(broker, "n2") == ([MODEL_A], {MODEL_A: [True, False]})


async def test_a_listed_sub_group_that_does_not_exist_is_skipped(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    del chain.groups[(1, MODEL_B)]
    chain.current_epoch = 1
    assert await sync_at(broker, at(E1, CTX1.set_new_validators))
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})
    assert entries(broker, "n2") == ([], {})


async def test_a_daemon_started_during_poc_loads_the_effective_epochs_allocation(
    broker: Broker, chain: FakeChain
) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    chain.empty_epoch(2)
    assert await sync_at(broker, at(E2, CTX2.start_of_poc + 1)) is True
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})  # POC_SLOT governs this PoC
    assert broker.epoch_cache.epoch_index == 1
    assert chain.calls["current_epoch_group_data"] == 1


async def test_the_cache_describes_the_effective_epoch_and_reads_its_price_at_set_new_validators(
    broker: Broker, chain: FakeChain
) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, CTX1.set_new_validators))
    cache = broker.epoch_cache
    assert (cache.epoch_index, cache.unit_of_compute_price) == (1, 1234)
    assert [m.id for m in cache.models()] == [MODEL_A, MODEL_B, MODEL_C]
    chain.empty_epoch(2)
    await sync_at(broker, at(E2, CTX2.start_of_poc))
    assert cache.epoch_index == 1  # during PoC the latest epoch's group is still empty
    # As the real chain: the epoch is formed at end of validation with no price in its parent group.
    chain.form_epoch(2, {MODEL_B: [ml_node("n1")]}, price=0)
    await sync_at(broker, at(E2, CTX2.end_of_poc_validation))
    # Formed, and the nodes load it, but the chain's effective epoch is still 1 until set-new-validators.
    assert entries(broker, "n1") == ([MODEL_B], {MODEL_B: [True, False]})
    assert (cache.epoch_index, cache.unit_of_compute_price) == (1, 1234)
    for height in range(CTX2.end_of_poc_validation + 1, CTX2.set_new_validators):
        await sync_at(broker, at(E2, height))
    assert cache.epoch_index == 1
    # At set-new-validators the chain writes the price, and the switch reads it: one query, the parent group.
    chain.set_price(2, 999)
    before = chain.total_calls
    await sync_at(broker, at(E2, CTX2.set_new_validators))
    assert (cache.epoch_index, cache.unit_of_compute_price, [m.id for m in cache.models()]) == (2, 999, [MODEL_B])
    assert chain.total_calls == before + 1
    before = chain.total_calls
    await sync_at(broker, at(E2, CTX2.set_new_validators + 1))
    assert chain.total_calls == before  # and only once


async def test_reading_the_cache_makes_no_chain_queries(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, 60))
    before = chain.total_calls
    for _ in range(1000):
        broker.epoch_cache.models()
        _ = broker.epoch_cache.unit_of_compute_price
        broker.epoch_cache.governance_models()
    assert chain.total_calls == before


async def test_governance_models_come_from_registration_and_refresh_per_epoch(broker: Broker, chain: FakeChain) -> None:
    assert [m.id for m in broker.epoch_cache.governance_models()] == [MODEL_A, MODEL_B, MODEL_C]
    chain.governance.append(gov_model("new/model"))
    form_epoch1(chain)
    chain.current_epoch = 1
    await sync_at(broker, at(E1, 60))
    assert len(broker.epoch_cache.governance_models()) == 3  # first sync: no extra query
    chain.empty_epoch(2)
    await sync_at(broker, at(E2, CTX2.start_of_poc))
    assert [m.id for m in broker.epoch_cache.governance_models()][-1] == "new/model"


async def test_a_node_registered_after_the_sync_gets_its_epoch_entries(broker: Broker, chain: FakeChain) -> None:
    chain.form_epoch(1, {MODEL_A: [ml_node("late", True, True)]})
    chain.current_epoch = 1
    await sync_at(broker, at(E1, CTX1.set_new_validators))
    await broker.register(node("late", MODEL_A))
    assert entries(broker, "late") == ([MODEL_A], {MODEL_A: [True, True]})


async def test_chain_adapter_maps_the_daemons_clients() -> None:
    class Query:
        async def models_all(self) -> list[object]:
            return [gov_model(MODEL_A)]

        async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData:
            return EpochGroupData(epoch_index=epoch_index, model_id=model_id)

        async def current_epoch_group_data(self) -> EpochGroupData:
            return EpochGroupData(epoch_index=7)

        async def hardware_nodes(self, participant: str) -> HardwareNodes:
            return HardwareNodes(participant=participant)

    class Rpc:
        async def block(self, height: int) -> BlockInfo:
            return BlockInfo(height, "ABC" + str(height))

    adapter = QueryChainReader(Query(), Rpc())  # type: ignore[arg-type]
    assert [m.id for m in await adapter.models_all()] == [MODEL_A]
    assert (await adapter.epoch_group_data(3, MODEL_B)).model_id == MODEL_B
    assert (await adapter.current_epoch_group_data()).epoch_index == 7
    assert (await adapter.hardware_nodes("me")).participant == "me"
    assert await adapter.block_hash(12) == "ABC12"


# --- the pre-PoC selection (DESIGN.md §6.1; a chain param that is not upstream) ----------------------------

SELECTING = dataclasses.replace(PARAMS, pre_poc_selection_offset=2)
SEL1 = EpochContext.for_epoch(E1, SELECTING)


def reselect_epoch1(chain: FakeChain) -> None:
    """The chain's pre-PoC block rewrote the flags: n1 now mines, n3 serves."""
    form_epoch1(chain)
    chain.form_epoch(
        1,
        {MODEL_A: [ml_node("n1"), ml_node("n3", True, True)], MODEL_B: [ml_node("n2")]},
        others={OTHER_PARTICIPANT: {MODEL_A: [ml_node("n2", False, True)], MODEL_C: [ml_node("n1", False, True)]}},
        price=1234,
    )


async def test_allocations_are_read_again_at_the_pre_poc_selection_height_and_only_then(
    broker: Broker, chain: FakeChain
) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    selection = SEL1.pre_poc_selection
    assert selection == SEL1.next_poc_start - 2
    await sync_at(broker, EpochState.at_height(E1, SELECTING, SEL1.set_new_validators + 1))
    before = chain.total_calls
    for height in range(SEL1.set_new_validators + 2, selection):
        assert await sync_at(broker, EpochState.at_height(E1, SELECTING, height)) is False
    assert chain.total_calls == before  # no query per block on the way there
    reselect_epoch1(chain)
    assert await sync_at(broker, EpochState.at_height(E1, SELECTING, selection)) is True
    assert chain.total_calls == before + 1 + 3  # the parent, then its three sub-groups
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, False]})
    assert entries(broker, "n3") == ([MODEL_A], {MODEL_A: [True, True]})
    for height in range(selection + 1, SEL1.next_poc_start):
        assert await sync_at(broker, EpochState.at_height(E1, SELECTING, height)) is False
    assert chain.total_calls == before + 4


async def test_a_failed_read_at_the_selection_height_is_retried_before_the_poc(
    broker: Broker, chain: FakeChain
) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    selection = SEL1.pre_poc_selection
    assert selection is not None
    await sync_at(broker, EpochState.at_height(E1, SELECTING, selection - 1))
    reselect_epoch1(chain)
    chain.fail_next("epoch_group_data", ChainUnavailable("down"))
    with pytest.raises(ChainUnavailable):
        await sync_at(broker, EpochState.at_height(E1, SELECTING, selection))
    assert entries(broker, "n1") == ([MODEL_A], {MODEL_A: [True, True]})  # nothing half-applied
    assert await sync_at(broker, EpochState.at_height(E1, SELECTING, selection + 1)) is True
    assert entries(broker, "n3") == ([MODEL_A], {MODEL_A: [True, True]})


async def test_a_chain_without_pre_poc_selection_is_not_read_there(broker: Broker, chain: FakeChain) -> None:
    form_epoch1(chain)
    chain.current_epoch = 1
    assert CTX1.pre_poc_selection is None
    await sync_at(broker, at(E1, CTX1.set_new_validators + 1))
    before = chain.total_calls
    for height in range(CTX1.set_new_validators + 2, CTX1.next_poc_start):
        assert await sync_at(broker, at(E1, height)) is False
    assert chain.total_calls == before
