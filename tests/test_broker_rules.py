"""The broker's pure rules, as tables (reference/broker.md §1.11, §1.12, §3.3, §5.6, §5.7b, §6.1; DESIGN.md §5)."""

from __future__ import annotations

import pytest

from dapi.broker.rules import (
    ModelChoice,
    choose_inference_model,
    hardware_diff,
    hardware_nodes_equal,
    inference_up_target,
    merge_model_args,
    needs_reconcile,
    poc_phase_target,
    should_be_operational,
    should_continue_inference,
    to_chain_hardware_node,
    unavailability_reason,
)
from dapi.broker.state import AdminState, NodeState, NodeStatus, PocStatus, ReconcileInfo
from dapi.chain.epochs import Phase
from dapi.config import ModelArgs, NodeConfig
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.hardware_node_pb2 import Hardware, HardwareNode
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.runtime.backoff import capped_delay

ALL_PHASES = list(Phase)
POC_PHASES = [p for p in Phase if p is not Phase.INFERENCE]


# --- ShouldBeOperational (TestNodeShouldBeOperationalTest) -----------------------------------------


@pytest.mark.parametrize("phase", POC_PHASES)
def test_enabled_in_latest_epoch_is_not_operational_during_poc(phase: Phase) -> None:
    assert should_be_operational(AdminState(enabled=True, epoch=10), 10, phase) is False


def test_enabled_in_latest_epoch_is_operational_in_inference() -> None:
    assert should_be_operational(AdminState(enabled=True, epoch=10), 10, Phase.INFERENCE) is True


@pytest.mark.parametrize("phase", ALL_PHASES)
def test_disabled_stays_operational_until_the_epoch_advances(phase: Phase) -> None:
    assert should_be_operational(AdminState(enabled=False, epoch=11), 11, phase) is True
    assert should_be_operational(AdminState(enabled=False, epoch=11), 12, phase) is False


@pytest.mark.parametrize("phase", ALL_PHASES)
def test_enabled_in_an_earlier_epoch_is_operational_in_every_phase(phase: Phase) -> None:
    assert should_be_operational(AdminState(enabled=True, epoch=3), 4, phase) is True


# --- ShouldContinueInference (POC_SLOT) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("allocations", "expected"),
    [
        ({}, False),
        ({"m": []}, False),
        ({"m": [True]}, False),  # too short: no POC_SLOT entry
        ({"m": [True, False]}, False),
        ({"m": [False, True]}, True),
        ({"a": [True, False], "b": [True, True]}, True),  # any model with POC_SLOT counts
    ],
)
def test_poc_slot_is_timeslot_one_of_any_model(allocations: dict[str, list[bool]], expected: bool) -> None:
    infos = {m: MLNodeInfo(node_id="n", timeslot_allocation=a) for m, a in allocations.items()}
    assert should_continue_inference(infos) is expected


# --- phase command targets (reference/broker.md §5.7b) ---------------------------------------------


def _state(
    *,
    enabled: bool = True,
    admin_epoch: int = 0,
    poc_slot: bool = False,
    intended: NodeStatus = NodeStatus.UNKNOWN,
    poc_intended: PocStatus = PocStatus.IDLE,
) -> NodeState:
    st = NodeState(admin_state=AdminState(enabled, admin_epoch), intended_status=intended)
    st.poc_intended_status = poc_intended
    if poc_slot:
        st.epoch_ml_nodes = {"m": MLNodeInfo(node_id="n", timeslot_allocation=[True, True])}
    return st


@pytest.mark.parametrize(
    ("poc", "phase"), [(PocStatus.GENERATING, Phase.POC_GENERATE), (PocStatus.VALIDATING, Phase.POC_VALIDATE)]
)
def test_poc_commands_put_plain_nodes_into_poc(poc: PocStatus, phase: Phase) -> None:
    target = poc_phase_target(_state(), 1, phase, poc)
    assert (target.status, target.poc_status) == (NodeStatus.POC, poc)


@pytest.mark.parametrize("poc", [PocStatus.GENERATING, PocStatus.VALIDATING])
def test_poc_commands_keep_poc_slot_nodes_serving(poc: PocStatus) -> None:
    target = poc_phase_target(_state(poc_slot=True), 1, Phase.POC_GENERATE, poc)
    assert (target.status, target.poc_status) == (NodeStatus.INFERENCE, PocStatus.IDLE)


@pytest.mark.parametrize("poc", [PocStatus.GENERATING, PocStatus.VALIDATING])
def test_admin_disabled_beats_poc_slot(poc: PocStatus) -> None:
    target = poc_phase_target(_state(enabled=False, admin_epoch=0, poc_slot=True), 1, Phase.POC_GENERATE, poc)
    assert (target.status, target.poc_status) == (NodeStatus.STOPPED, PocStatus.IDLE)


def test_node_enabled_during_this_poc_is_stopped_unless_it_holds_poc_slot() -> None:
    # Enabled (or registered) in the latest epoch: not operational until Inference (reference §1.11) ...
    assert poc_phase_target(_state(admin_epoch=1), 1, Phase.POC_GENERATE, PocStatus.GENERATING).status is (
        NodeStatus.STOPPED
    )
    # ... but a POC_SLOT node is never stopped during PoC (DESIGN.md §4.6).
    assert poc_phase_target(
        _state(admin_epoch=1, poc_slot=True), 1, Phase.POC_GENERATE, PocStatus.GENERATING
    ).status is (NodeStatus.INFERENCE)


def test_inference_up_all_targets() -> None:
    assert inference_up_target(_state(), 1, Phase.INFERENCE).status is NodeStatus.INFERENCE
    # POC_SLOT plays no role after PoC: every operational node serves.
    assert inference_up_target(_state(poc_slot=True), 1, Phase.INFERENCE).status is NodeStatus.INFERENCE
    assert inference_up_target(_state(enabled=False, admin_epoch=0), 1, Phase.INFERENCE).status is NodeStatus.STOPPED
    assert inference_up_target(_state(intended=NodeStatus.TRAINING), 1, Phase.INFERENCE).status is NodeStatus.TRAINING


def test_poc_intent_is_reset_whenever_the_target_is_not_poc() -> None:
    # Fix 8: the reference left e.g. VALIDATING as the PoC intent of an INFERENCE/STOPPED node.
    stale = dict(intended=NodeStatus.POC, poc_intended=PocStatus.VALIDATING)
    assert inference_up_target(_state(**stale), 1, Phase.INFERENCE).poc_status is PocStatus.IDLE
    assert inference_up_target(_state(enabled=False, **stale), 1, Phase.INFERENCE).poc_status is PocStatus.IDLE
    assert poc_phase_target(_state(poc_slot=True, **stale), 1, Phase.POC_GENERATE, PocStatus.GENERATING).poc_status is (
        PocStatus.IDLE
    )


# --- MergeModelArgs: every row of reference/broker.md §3.3 ------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "local", "expected"),
    [
        (
            ["--quantization", "fp8"],
            ["--quantization", "awq", "--kv-cache-dtype", "fp8"],
            ["--quantization", "fp8", "--kv-cache-dtype", "fp8"],
        ),
        ([], ["--a", "1", "--b"], ["--a", "1", "--b"]),
        (["--a", "1"], [], ["--a", "1"]),
        (["--enforce-eager"], ["--enforce-eager", "--tp", "2"], ["--enforce-eager", "--tp", "2"]),
        (["--arg1", "--arg2"], ["--arg1", "--arg2"], ["--arg1", "--arg2"]),
        (["--max-model-len=4096"], ["--max-model-len", "8192"], ["--max-model-len=4096", "--max-model-len", "8192"]),
        (["--offset", "-1"], [], ["--offset", "-1"]),
        (["x", "--a"], [], ["x", "--a"]),
        ([], ["x", "--a", "1", "2"], ["--a", "1"]),
        ([], ["-q", "awq"], []),
        (["--a", "1"], ["--a"], ["--a", "1"]),
        (["--a"], ["--a", "5"], ["--a"]),
        (["--a", "1", "--a", "2"], [], ["--a", "1", "--a", "2"]),
    ],
)
def test_merge_model_args_reference_table(epoch: list[str], local: list[str], expected: list[str]) -> None:
    assert merge_model_args(epoch, local) == expected


def test_merge_model_args_of_nothing_is_an_empty_list() -> None:
    assert merge_model_args([], []) == []


def test_merge_model_args_appends_every_duplicate_local_flag() -> None:
    # Local keys are not recorded, so a repeated local flag is appended each time.
    assert merge_model_args([], ["--x", "1", "--x", "2"]) == ["--x", "1", "--x", "2"]


# --- InferenceUp model choice (fix 2) -------------------------------------------------------------


def _epoch(*entries: tuple[str, list[bool], list[str]]) -> tuple[dict[str, Model], dict[str, MLNodeInfo]]:
    models = {m: Model(id=m, model_args=args) for m, _, args in entries}
    infos = {m: MLNodeInfo(node_id="n", timeslot_allocation=alloc) for m, alloc, _ in entries}
    return models, infos


def test_choice_is_the_pre_poc_slot_epoch_model() -> None:
    models, infos = _epoch(("a", [False, True], []), ("b", [True, False], ["--b", "1"]))
    choice = choose_inference_model({"b": ModelArgs(args=["--local"])}, models, infos)
    assert choice == ModelChoice("b", ("--b", "1", "--local"), "epoch")


def test_choice_among_several_pre_poc_slot_models_is_the_lowest_id() -> None:
    models, infos = _epoch(("z", [True, False], []), ("m", [True, True], []), ("q", [True, False], []))
    for _ in range(5):  # not random: the same answer every time
        choice = choose_inference_model({}, models, infos)
        assert choice is not None and choice.model_id == "m"


def test_choice_without_pre_poc_slot_marks_takes_the_lowest_epoch_model() -> None:
    models, infos = _epoch(("y", [False, True], []), ("x", [False, False], []))
    choice = choose_inference_model({}, models, infos)
    assert choice is not None and (choice.model_id, choice.source) == ("x", "epoch")


def test_without_epoch_models_the_configured_governance_model_is_served() -> None:
    governance = {"gov-b": Model(id="gov-b", model_args=["--quantization", "fp8"])}
    config = {"gov-b": ModelArgs(args=["--quantization", "awq", "--tp", "2"]), "not-gov": ModelArgs()}
    choice = choose_inference_model(config, {}, {}, governance)
    assert choice == ModelChoice("gov-b", ("--quantization", "fp8", "--tp", "2"), "config")


def test_without_any_model_there_is_no_choice() -> None:
    assert choose_inference_model({}, {}, {}) is None
    assert choose_inference_model({"x": ModelArgs()}, {}, {}, {"y": Model(id="y")}) is None


# --- reconcile need and backoff -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("intended", "poc_intended", "current", "poc_current", "expected"),
    [
        (NodeStatus.UNKNOWN, PocStatus.IDLE, NodeStatus.STOPPED, PocStatus.IDLE, False),  # no job for UNKNOWN
        (NodeStatus.TRAINING, PocStatus.IDLE, NodeStatus.STOPPED, PocStatus.IDLE, False),
        (NodeStatus.POC, PocStatus.IDLE, NodeStatus.STOPPED, PocStatus.IDLE, False),  # POC without a sub-target
        (NodeStatus.STOPPED, PocStatus.IDLE, NodeStatus.STOPPED, PocStatus.IDLE, False),
        (NodeStatus.STOPPED, PocStatus.IDLE, NodeStatus.INFERENCE, PocStatus.IDLE, True),
        (NodeStatus.POC, PocStatus.VALIDATING, NodeStatus.POC, PocStatus.GENERATING, True),
        (NodeStatus.POC, PocStatus.GENERATING, NodeStatus.POC, PocStatus.GENERATING, False),
        (NodeStatus.INFERENCE, PocStatus.IDLE, NodeStatus.FAILED, PocStatus.IDLE, True),
    ],
)
def test_needs_reconcile(
    intended: NodeStatus, poc_intended: PocStatus, current: NodeStatus, poc_current: PocStatus, expected: bool
) -> None:
    st = NodeState(intended_status=intended, poc_intended_status=poc_intended)
    st.set_current(current, poc_current)
    assert needs_reconcile(st) is expected


def test_a_node_serving_the_wrong_model_needs_reconcile() -> None:
    st = NodeState(intended_status=NodeStatus.INFERENCE)
    st.set_current(NodeStatus.INFERENCE, PocStatus.IDLE)
    st.served_model = "old"
    assert needs_reconcile(st, "new") is True
    assert needs_reconcile(st, "old") is False
    st.served_model = None  # unknown: trusted, as the reference
    assert needs_reconcile(st, "new") is False


def test_backoff_doubles_and_is_capped() -> None:
    assert [capped_delay(n, 1.0, 60.0) for n in range(0, 9)] == [0.0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert capped_delay(10_000, 1.0, 60.0) == 60.0


# --- availability for inference (reference §6.1 with fix 3) ---------------------------------------


def _serving(**overrides: object) -> NodeState:
    st = NodeState(intended_status=NodeStatus.INFERENCE, admin_state=AdminState(True, 0))
    st.set_current(NodeStatus.INFERENCE, PocStatus.IDLE)
    for key, value in overrides.items():
        setattr(st, key, value)
    return st


CONFIG = NodeConfig(id="n1", host="h", poc_port=1, inference_port=2, max_concurrent=2, models={"m": {}}, version="v1")


@pytest.mark.parametrize(
    ("state", "kwargs", "reason_part"),
    [
        (_serving(intended_status=NodeStatus.POC), {}, "intended"),
        (_serving(current_status=NodeStatus.STOPPED), {}, "current"),
        (_serving(reconcile_info=ReconcileInfo(NodeStatus.INFERENCE, PocStatus.IDLE, 1)), {}, "in flight"),
        (_serving(lock_count=2), {}, "capacity"),
        (_serving(admin_state=AdminState(False, 0)), {}, "disabled"),
        (_serving(), {"version": "v2"}, "version"),
        (_serving(), {"model": "other"}, "serves"),
    ],
)
def test_unavailability_reasons_in_order(state: NodeState, kwargs: dict[str, str], reason_part: str) -> None:
    args: dict[str, object] = {
        "model": "m",
        "version": "",
        "latest_epoch": 1,
        "phase": Phase.INFERENCE,
        "served_model": "m",
    }
    args.update(kwargs)
    reason = unavailability_reason(CONFIG, state, **args)  # type: ignore[arg-type]
    assert reason is not None and reason_part in reason


def test_available_node_has_no_reason() -> None:
    assert (
        unavailability_reason(
            CONFIG, _serving(), model="m", version="v1", latest_epoch=1, phase=Phase.INFERENCE, served_model="m"
        )
        is None
    )


def test_routing_uses_the_served_model_not_the_config_list() -> None:
    # Fix 3: "m" is configured, but this epoch the node serves "e".
    reason = unavailability_reason(
        CONFIG, _serving(), model="m", version="", latest_epoch=1, phase=Phase.INFERENCE, served_model="e"
    )
    assert reason is not None


# --- hardware diff (reference §5.6 with fix 9) ----------------------------------------------------


def _hw(local_id: str, **overrides: object) -> HardwareNode:
    node = HardwareNode(
        local_id=local_id,
        status=int(NodeStatus.INFERENCE),
        models=["a", "b"],
        hardware=[Hardware(type="H100", count=8), Hardware(type="A100", count=2)],
        host="10.0.0.1",
        port="8080",
    )
    for key, value in overrides.items():
        if key in ("models", "hardware"):
            node.ClearField(key)  # type: ignore[arg-type]
            getattr(node, key).extend(value)  # type: ignore[arg-type]
        else:
            setattr(node, key, value)
    return node


def test_local_node_as_chain_hardware_node() -> None:
    config = NodeConfig(
        id="n1",
        host="10.0.0.1",
        poc_port=8080,
        inference_port=5000,
        models={"b": {}, "a": {"args": ["--x"]}},
        hardware=[{"type": "H100", "count": 8}, {"type": "A100", "count": 2}],
    )
    node = to_chain_hardware_node(config, NodeStatus.POC)
    assert node.local_id == "n1" and node.status == int(NodeStatus.POC)
    assert list(node.models) == ["a", "b"]  # sorted
    assert [(h.type, h.count) for h in node.hardware] == [("H100", 8), ("A100", 2)]  # config order
    assert (node.host, node.port) == ("10.0.0.1", "8080")  # the PoC port


def test_equality_ignores_list_order_but_not_host_port_or_status() -> None:
    base = _hw("n1")
    assert hardware_nodes_equal(
        base, _hw("n1", models=["b", "a"], hardware=[Hardware(type="A100", count=2), Hardware(type="H100", count=8)])
    )
    assert not hardware_nodes_equal(base, _hw("n1", host="10.0.0.2"))  # fix 9
    assert not hardware_nodes_equal(base, _hw("n1", port="9090"))  # fix 9
    assert not hardware_nodes_equal(base, _hw("n1", status=int(NodeStatus.POC)))
    assert not hardware_nodes_equal(base, _hw("n1", models=["a"]))
    assert not hardware_nodes_equal(base, _hw("n1", hardware=[Hardware(type="H100", count=4)]))


def test_diff_lists_new_changed_and_removed_nodes() -> None:
    local = [_hw("same"), _hw("moved", host="10.9.9.9"), _hw("new")]
    chain = [_hw("same"), _hw("moved"), _hw("gone")]
    diff = hardware_diff("me", local, chain)
    assert diff is not None and diff.creator == "me"
    assert [n.local_id for n in diff.newOrModified] == ["moved", "new"]
    assert [n.local_id for n in diff.removed] == ["gone"]


def test_no_diff_when_in_sync() -> None:
    assert hardware_diff("me", [_hw("a")], [_hw("a")]) is None
    assert hardware_diff("me", [], []) is None
