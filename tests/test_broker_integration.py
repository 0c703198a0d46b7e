"""Whole epochs through the broker: the reference's integration scenarios (reference/broker.md §7.5) and the
POC_SLOT schedule, with a fake chain, a chain driver feeding the real block dispatcher, and simulated ML nodes.

Heights (tests/broker_fakes.PARAMS): epoch 1's PoC starts at 40, generation ends at 46 (InitValidate),
validation ends at 51 (the epoch is formed, InferenceUpAll), set-new-validators at 53; epoch 2 at 80.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker_fakes import (
    DEFAULT_CADENCE,
    FAST,
    INIT_GENERATE,
    INIT_VALIDATE,
    MODEL_A,
    MODEL_B,
    PUBKEY_HEX,
    ChainDriver,
    FakeChain,
    block_hash,
    gov_model,
    make_broker,
    ml_calls,
    ml_node,
    paths,
    settle,
    sim_node_config,
    status_of,
    wait_for,
)
from log_capture import LogLines

from dapi.broker import Broker, NodeStatus, NoNodeAvailable, PocStatus
from dapi.chain.epochs import Phase
from dapi.config import BrokerConfig
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo

Allocation = Mapping[str, Sequence[MLNodeInfo]]

EPOCH1_POC = 40
EPOCH1_END_OF_GENERATION = 46
EPOCH1_END_OF_VALIDATION = 51
EPOCH2_POC = 80
EPOCH2_END_OF_GENERATION = 86
EPOCH2_END_OF_VALIDATION = 91


@dataclass
class Env:
    broker: Broker
    chain: FakeChain
    sim: SimMLNodeServer
    formations: dict[int, Allocation]

    def driver(self, *, settle_each_block: bool = True) -> ChainDriver:
        return ChainDriver(self.broker, self.chain, self._formation, settle_each_block=settle_each_block)

    def _formation(self, epoch_index: int) -> Allocation:
        if epoch_index in self.formations:
            return self.formations[epoch_index]
        # Default: every registered node serves its first configured model, no POC_SLOT.
        allocation: dict[str, list[MLNodeInfo]] = {}
        for view in self.broker.nodes():
            model = next(iter(view.node.config.models))
            allocation.setdefault(model, []).append(ml_node(view.node.id))
        return allocation

    async def register(self, *names: str, models: Mapping[str, Sequence[str]] | None = None) -> None:
        results = await self.broker.register_many([sim_node_config(self.sim, n, models) for n in names])
        assert all(not isinstance(r, Exception) for r in results), results

    def calls(self, name: str) -> dict[str, int]:
        return ml_calls(self.sim, name)

    def clear_calls(self) -> None:
        for node in self.sim.nodes:
            self.sim.clear_calls(node.name)

    def state(self, name: str) -> tuple[NodeStatus, NodeStatus, PocStatus]:
        view = self.broker.node(name)
        assert view is not None
        return view.state.intended_status, view.state.current_status, view.state.poc_current_status


@contextlib.asynccontextmanager
async def open_env(data_dir: Path, settings: BrokerConfig = FAST) -> AsyncIterator[Env]:
    chain = FakeChain([gov_model(MODEL_A, ["--quantization", "fp8"]), gov_model(MODEL_B, ["--max-model-len", "4096"])])
    async with SimMLNodeServer(batch_interval=0.05) as sim:
        broker = make_broker(chain, data_dir, settings=settings)
        async with broker:
            yield Env(broker, chain, sim, {})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


async def wait_polled(env: Env, *names: str) -> None:
    await wait_for(
        lambda: all(status_of(env.broker, n)[1] is NodeStatus.STOPPED for n in names), what="first status poll"
    )


# --- reference/broker.md §7.5 ----------------------------------------------------------------------


async def test_inference_reconciliation(env: Env) -> None:
    """TestInferenceReconciliation: registered nodes are STOPPED/UNKNOWN; Inference blocks bring them up."""
    await env.register("node-1", "node-2")
    await wait_polled(env, "node-1", "node-2")
    assert status_of(env.broker, "node-1") == (NodeStatus.UNKNOWN, NodeStatus.STOPPED)
    await env.driver().run_to(5)
    for name in ("node-1", "node-2"):
        assert status_of(env.broker, name) == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
        assert env.calls(name) == {"stop": 1, "init_generate": 0, "init_validate": 0, "inference_up": 1}
        # Epoch 0 has no allocation: the configured governance model is served (fix 2's fallback).
        assert (env.sim.node(name).model, env.sim.node(name).args) == (MODEL_A, ["--quantization", "fp8"])


async def test_regular_poc_cycle(env: Env) -> None:
    """TestRegularPocScenario: Stop 2 / InitGenerate 1 at PoC start; InitValidate 1 without a Stop;
    Stop 3 / InferenceUp 2 after validation; both nodes got the same height and hash."""
    await env.register("node-1", "node-2")
    driver = env.driver()
    await driver.run_to(EPOCH1_POC - 1)
    await driver.run_to(EPOCH1_POC)
    for name in ("node-1", "node-2"):
        assert env.state(name) == (NodeStatus.POC, NodeStatus.POC, PocStatus.GENERATING)
        assert env.calls(name) == {"stop": 2, "init_generate": 1, "init_validate": 0, "inference_up": 1}
    await driver.run_to(EPOCH1_END_OF_GENERATION)
    for name in ("node-1", "node-2"):
        assert env.state(name) == (NodeStatus.POC, NodeStatus.POC, PocStatus.VALIDATING)
        assert env.calls(name) == {"stop": 2, "init_generate": 1, "init_validate": 1, "inference_up": 1}
    assert [h.node.id for h in env.broker.validating_nodes()] == ["node-1", "node-2"]
    await driver.run_to(EPOCH1_END_OF_VALIDATION)
    for name in ("node-1", "node-2"):
        assert env.state(name) == (NodeStatus.INFERENCE, NodeStatus.INFERENCE, PocStatus.IDLE)
        assert env.calls(name) == {"stop": 3, "init_generate": 1, "init_validate": 1, "inference_up": 2}
    dtos = [
        c.json for name in ("node-1", "node-2") for c in env.sim.calls(name) if c.path in (INIT_GENERATE, INIT_VALIDATE)
    ]
    assert {(d["block_height"], d["block_hash"], d["public_key"]) for d in dtos} == {
        (EPOCH1_POC, block_hash(EPOCH1_POC), PUBKEY_HEX.lower())
    }
    assert sorted((d["node_id"], d["node_count"]) for d in dtos) == [(1, 3), (1, 3), (2, 3), (2, 3)]
    # The next epoch runs the same way with the new epoch's data.
    await driver.run_to(EPOCH2_END_OF_VALIDATION)
    for name in ("node-1", "node-2"):
        assert env.calls(name) == {"stop": 5, "init_generate": 2, "init_validate": 2, "inference_up": 3}
    assert driver.epoch_data_errors == 0
    assert env.broker.metrics().nodes_by_status["INFERENCE"] == 2


async def test_node_disable_scenario(env: Env) -> None:
    """TestNodeDisableScenario: a node disabled in epoch 0 serves to the end of epoch 0, then is stopped
    and sits out epoch 1's PoC entirely; the other node does the full cycle."""
    await env.register("node-1", "node-2")
    driver = env.driver()
    await driver.run_to(10)
    env.broker.set_admin_state("node-2", False)
    await driver.run_to(EPOCH1_POC - 1)
    assert env.state("node-2")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)  # not yet
    env.clear_calls()
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 3)
    assert env.calls("node-2") == {"stop": 1, "init_generate": 0, "init_validate": 0, "inference_up": 0}
    assert env.state("node-2")[:2] == (NodeStatus.STOPPED, NodeStatus.STOPPED)
    assert env.calls("node-1") == {"stop": 2, "init_generate": 1, "init_validate": 1, "inference_up": 1}
    assert env.state("node-1")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)


async def test_node_enable_scenario(env: Env) -> None:
    """TestNodeEnableScenario: re-enabled during Inference it serves from the next InferenceUpAll (the
    dispatcher sends one every few blocks in Inference) and joins the next PoC."""
    await env.register("node-1", "node-2")
    driver = env.driver()
    await driver.run_to(5)
    env.broker.set_admin_state("node-2", False)
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 1)
    assert env.state("node-2")[:2] == (NodeStatus.STOPPED, NodeStatus.STOPPED)
    env.broker.set_admin_state("node-2", True)  # epoch 1, Inference phase
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 1 + DEFAULT_CADENCE.inference_blocks)
    assert env.state("node-2")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    env.clear_calls()
    await driver.run_to(EPOCH2_POC)
    assert env.state("node-2") == (NodeStatus.POC, NodeStatus.POC, PocStatus.GENERATING)
    assert env.calls("node-2")["init_generate"] == 1


async def test_poc_retry(env: Env) -> None:
    """TestPoCRetry: init/generate fails → FAILED, retried until the fault clears, then POC/GENERATING;
    no Stop since the node stays STOPPED."""
    await env.register("node-1")
    await wait_polled(env, "node-1")
    env.sim.set_fault("node-1", status=500, path_prefix=INIT_GENERATE, count=3)
    driver = env.driver()
    driver.height = EPOCH1_POC - 1  # start right before the PoC, the node idle
    await driver.run_to(EPOCH1_POC)
    await wait_for(lambda: env.state("node-1")[1] is NodeStatus.POC, what="a successful retry")
    assert env.state("node-1") == (NodeStatus.POC, NodeStatus.POC, PocStatus.GENERATING)
    assert env.calls("node-1") == {"stop": 0, "init_generate": 4, "init_validate": 0, "inference_up": 0}
    view = env.broker.node("node-1")
    assert view is not None and view.state.failure_reason == ""
    assert env.broker.metrics().jobs_failed == 3


# --- POC_SLOT ---------------------------------------------------------------------------------------


async def test_poc_slot_node_keeps_serving_while_its_sibling_mines(env: Env) -> None:
    await env.register("slot", "miner")
    env.formations[1] = {MODEL_A: [ml_node("slot", True, True), ml_node("miner", True, False)]}
    driver = env.driver()
    await driver.run_to(EPOCH2_POC - 1)
    env.clear_calls()
    await driver.run_to(EPOCH2_POC)
    assert env.state("slot")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert env.state("miner") == (NodeStatus.POC, NodeStatus.POC, PocStatus.GENERATING)
    # Still taking requests during PoC.
    assert env.broker.lock_node(MODEL_A).id == "slot"
    with pytest.raises(NoNodeAvailable):  # max_concurrent 10, but the miner is not serving
        for _ in range(11):
            env.broker.lock_node(MODEL_A)
    await driver.run_to(EPOCH2_END_OF_GENERATION + 2)  # into validation
    assert driver.phase() is Phase.POC_VALIDATE
    assert env.state("slot")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert [h.node.id for h in env.broker.validating_nodes()] == ["miner"]
    assert env.calls("slot") == {"stop": 0, "init_generate": 0, "init_validate": 0, "inference_up": 0}
    assert env.calls("miner") == {"stop": 1, "init_generate": 1, "init_validate": 1, "inference_up": 0}
    await driver.run_to(EPOCH2_END_OF_VALIDATION)
    assert env.state("miner")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert env.calls("slot") == {"stop": 0, "init_generate": 0, "init_validate": 0, "inference_up": 0}


async def test_poc_slot_in_one_model_of_several_keeps_the_node_serving(env: Env) -> None:
    await env.register("multi", models={MODEL_A: [], MODEL_B: []})
    await env.register("plain")
    env.formations[1] = {
        MODEL_A: [ml_node("multi", True, False), ml_node("plain", True, False)],
        MODEL_B: [ml_node("multi", False, True)],
    }
    driver = env.driver()
    await driver.run_to(EPOCH2_POC - 1)
    assert env.sim.node("multi").model == MODEL_A  # its PRE_POC_SLOT model
    env.clear_calls()
    await driver.run_to(EPOCH2_END_OF_GENERATION + 2)
    assert env.state("multi")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert env.calls("multi") == {"stop": 0, "init_generate": 0, "init_validate": 0, "inference_up": 0}
    assert env.state("plain") == (NodeStatus.POC, NodeStatus.POC, PocStatus.VALIDATING)
    assert env.broker.lock_node(MODEL_A).id == "multi"


async def test_admin_disabled_beats_poc_slot(env: Env) -> None:
    await env.register("slot", "other")
    env.formations[1] = {MODEL_A: [ml_node("slot", True, True), ml_node("other", True, False)]}
    driver = env.driver()
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 5)
    env.broker.set_admin_state("slot", False)  # in epoch 1: applies from epoch 2's PoC
    env.clear_calls()
    await driver.run_to(EPOCH2_POC)
    assert env.state("slot")[:2] == (NodeStatus.STOPPED, NodeStatus.STOPPED)
    assert env.calls("slot") == {"stop": 1, "init_generate": 0, "init_validate": 0, "inference_up": 0}
    assert env.sim.node("slot").inference_ready is False


async def test_after_validation_every_node_loads_its_pre_poc_slot_model_with_merged_args(env: Env) -> None:
    await env.register("n1", models={MODEL_A: ["--tp", "4"], MODEL_B: ["--max-model-len", "8192", "--tp", "2"]})
    await env.register("n2", models={MODEL_A: ["--quantization", "awq", "--kv-cache-dtype", "fp8"]})
    env.formations[1] = {
        MODEL_A: [ml_node("n1", False, True), ml_node("n2", True, False)],
        MODEL_B: [ml_node("n1", True, False)],
    }
    driver = env.driver()
    await driver.run_to(EPOCH1_END_OF_VALIDATION)
    n1, n2 = env.sim.node("n1"), env.sim.node("n2")
    # Governance/epoch args win per flag; local flags the epoch lacks are appended.
    assert (n1.model, n1.args) == (MODEL_B, ["--max-model-len", "4096", "--tp", "2"])
    assert (n2.model, n2.args) == (MODEL_A, ["--quantization", "fp8", "--kv-cache-dtype", "fp8"])
    assert env.broker.lock_node(MODEL_B).id == "n1"
    assert env.broker.lock_node(MODEL_A).id == "n2"


async def test_a_node_registered_mid_epoch_without_epoch_models_serves_its_configured_model(env: Env) -> None:
    await env.register("n1")
    driver = env.driver()
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 3)
    await env.register("late", models={MODEL_B: ["--enforce-eager"]})
    view = env.broker.node("late")
    assert view is not None and view.state.epoch_models == {}
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 3 + DEFAULT_CADENCE.inference_blocks)  # the next InferenceUpAll
    assert env.state("late")[:2] == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    late = env.sim.node("late")
    assert (late.model, late.args) == (MODEL_B, ["--max-model-len", "4096", "--enforce-eager"])
    assert env.broker.lock_node(MODEL_B).id == "late"
    await settle(env.broker)


async def test_each_phase_command_logs_one_decision_per_node_with_its_reason(env: Env, log_lines: LogLines) -> None:
    """Plan 6.2.3: the POC_SLOT decisions are logged; once per node and command, though PoC commands repeat
    every block."""
    await env.register("slot", "miner", "off", "broken")
    env.formations[1] = {MODEL_A: [ml_node("slot", True, True), ml_node("miner", True, False),
                                   ml_node("off", True, True), ml_node("broken", True, False)]}
    driver = env.driver()
    await driver.run_to(EPOCH1_END_OF_VALIDATION + 5)
    env.broker.set_admin_state("off", False)  # in epoch 1: applies from epoch 2's PoC, POC_SLOT or not
    env.sim.set_fault("broken", status=500, path_prefix=INIT_GENERATE)  # every init/generate fails
    await driver.run_to(EPOCH2_END_OF_VALIDATION + 2 * DEFAULT_CADENCE.inference_blocks)

    def decisions(command: str) -> dict[str, dict[str, Any]]:
        lines = log_lines.find("phase command decision", command=command, epoch=2)
        by_node = {line["node_id"]: line for line in lines}
        assert len(by_node) == len(lines) == 4, lines  # one line per node
        assert all(line["level"] == "info" for line in lines)
        return by_node

    start = decisions("StartPoc")
    assert (start["slot"]["decision"], start["slot"]["reason"]) == ("keep serving", f"POC_SLOT of model {MODEL_A}")
    assert start["slot"]["model"] == MODEL_A
    assert (start["miner"]["decision"], start["miner"]["reason"]) == ("mine", f"no POC_SLOT in model {MODEL_A}")
    assert (start["off"]["decision"], start["off"]["reason"]) == ("stop", "admin-disabled (in epoch 1)")
    assert start["broken"]["decision"] == "mine"

    validate = decisions("InitValidate")
    assert [validate[n]["decision"] for n in ("slot", "miner", "off", "broken")] == [
        "keep serving", "validate", "stop", "validate"]
    # A node that failed its PoC start is still sent to validation, and the line says why it failed.
    assert "init_generate" in validate["broken"]["failure_reason"]
    assert "HTTP 500" in validate["broken"]["failure_reason"]
    assert "failure_reason" not in validate["miner"]

    up = decisions("InferenceUpAll")
    assert [up[n]["decision"] for n in ("slot", "miner", "off", "broken")] == ["serve", "serve", "stop", "serve"]
    assert up["off"]["reason"] == "admin-disabled (in epoch 1)"


# --- a hung ML node --------------------------------------------------------------------------------


def failure_reason(env: Env, name: str) -> str:
    view = env.broker.node(name)
    assert view is not None
    return view.state.failure_reason


async def start_poc_with_a_hung_init(env: Env, name: str) -> ChainDriver:
    """`name` holds every init/generate and init/validate request without answering; PoC starts."""
    await env.register(name)
    await wait_polled(env, name)
    env.sim.set_fault(name, timeout=True, path_prefix="/api/v1/pow/init")
    driver = env.driver(settle_each_block=False)  # the job never finishes: nothing to settle
    driver.height = EPOCH1_POC - 1
    await driver.run_to(EPOCH1_POC)
    await wait_for(lambda: paths(env.sim, name, INIT_GENERATE) >= 1, what="init/generate sent and held")
    return driver


async def test_a_hung_init_fails_at_the_job_deadline_naming_the_call_then_backs_off(
    tmp_path: Path, log_lines: LogLines
) -> None:
    async with open_env(tmp_path, FAST.model_copy(update={"job_timeout": 0.3})) as env:
        await start_poc_with_a_hung_init(env, "hung")
        await wait_for(lambda: "deadline" in failure_reason(env, "hung"), what="the job deadline")
        reason = failure_reason(env, "hung")
        assert reason.startswith("StartPocJob timed out after 0.3 s (the job deadline): init_generate ")
        assert "/nodes/hung/api/v1/pow/init/generate had not answered after " in reason
        deadline = log_lines.find("node job hit its deadline; the node is marked FAILED", node_id="hung")[0]
        assert (deadline["level"], deadline["call"], deadline["deadline"]) == ("warning", "init_generate", 0.3)
        assert deadline["url"].endswith("/nodes/hung/api/v1/pow/init/generate")
        failed = log_lines.find("node job failed", node_id="hung")[0]
        assert failed["level"] == "warning" and failed["error"] == reason and "retry_in" in failed
        # The reconciler's backoff applies: the node is tried again, and fails the same way.
        await wait_for(lambda: paths(env.sim, "hung", INIT_GENERATE) >= 2, what="a retry after the backoff")
        assert env.broker.metrics().jobs_failed >= 1


async def test_a_hung_init_superseded_by_the_next_phase_keeps_its_diagnosis(
    tmp_path: Path, log_lines: LogLines
) -> None:
    """With the default deadline (minutes) the phase moves on first: the job is cancelled, and what it was
    stuck in must not vanish into a bare UNKNOWN."""
    async with open_env(tmp_path, FAST.model_copy(update={"job_timeout": 600.0})) as env:
        driver = await start_poc_with_a_hung_init(env, "hung")
        await driver.run_to(EPOCH1_END_OF_GENERATION)  # InitValidate: the StartPoc job is outdated
        await wait_for(lambda: "superseded" in failure_reason(env, "hung"), what="the superseded job's diagnosis")
        reason = failure_reason(env, "hung")
        assert reason.startswith("StartPocJob superseded by a new target: init_generate ")
        assert "/nodes/hung/api/v1/pow/init/generate had not answered after " in reason
        (line,) = log_lines.find("node job superseded while its ML call was unanswered", node_id="hung")
        assert (line["level"], line["job"], line["call"]) == ("warning", "StartPocJob", "init_generate")
        assert (line["new_target"], line["new_poc_target"]) == ("POC", "VALIDATING")
